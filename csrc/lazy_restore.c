/* lazy_restore.c: serving an epoch into an arena on first touch (see
 * lazy_restore.h and docs/restore.md).
 *
 * One handler thread reads the userfaultfd and maps each faulting page from
 * the plan: its record read from the pack, decoded, checked against its
 * digest, then UFFDIO_COPY (UFFDIO_ZEROPAGE for a zero page). Drain threads
 * take the plan's units in the drain order (the prefetch list's first) and
 * map their pages the same way; either may find a page mapped by the other
 * (EEXIST: the faulting thread was woken by whoever mapped it).
 *
 * The program may drop pages (madvise(MADV_DONTNEED)) while this runs: the
 * kernel then queues a remove event and refuses copies (EAGAIN) until it is
 * read, and zaps the range only after. Drain threads copy under the read
 * side of `maplock` and the handler reads messages under its write side,
 * so no copy lands between the event being read and the pages being marked
 * dropped: a dropped page is never filled from the epoch again (it reads
 * as zero, as it would without us).
 *
 * A page that fails its check is poisoned (UFFDIO_POISON): the thread that
 * touches it gets SIGBUS, never the wrong bytes and never a hang; the
 * first damage is reported at the next Python boundary (wait, stats). A
 * handler that dies with pages left aborts the process with the reason:
 * with nobody reading the userfaultfd, a touch would hang, and with the
 * userfaultfd closed it would read zeros. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "lazy_restore.h"
#include "page_codec.h"
#include "read_plan.h"

#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFDIO_POISON
struct uffdio_poison {
	struct uffdio_range range;
	__u64 mode;
	__s64 updated;
};
#define _UFFDIO_POISON (0x08)
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

#define MAX_WORKERS 16
#define MSG_BATCH 64
/* The drain claims this many pages' worth of units at a time: fewer when
 * faults arrive (the program is running: give way, keep the order fine),
 * more when none do (fewer claims). */
#define CHUNK_MIN_PAGES 64u
#define CHUNK_MAX_PAGES 4096u
#define DRAIN_NICE 5
/* A fault maps at most this many pages: the faulting one and the pending
 * ones after it in its unit (64 KiB: the latency of one page plus ~15 us) */
#define FAULT_AROUND 16u
/* A fault at the front of the prefetch order (in a unit of the prefetch list
 * no drain thread took yet) right after the last one there: the program is
 * reading the recorded order faster than the drain. The handler then serves
 * the units that follow in the order in one batch (one copy a run of
 * consecutive pages), doubling from BATCH_MIN to BATCH_MAX pages while such
 * faults go on, and the drain's cursor jumps past the batch: the program
 * faults once a batch, not once a unit or once FAULT_AROUND pages. */
#define BATCH_MIN_PAGES 256u
#define BATCH_MAX_PAGES 4096u
#define FRONT_SLACK 8u                  /* "right after": within so many units */
/* Before the plan (the first tens of ms at 4 GiB, while the indexes are
 * checked), the same by lookup: a fault at the page right after the last
 * run served, on a page of the prefetch list, serves a run growing from
 * 4 * FAULT_AROUND to AROUND_MAX pages (contiguous records of one source). */
#define AROUND_MAX 1024u

enum { PENDING = 0, MAPPED, DROPPED, BAD };

struct scratch {
	uint8_t *buf;           /* a unit's stored bytes */
	uint8_t *pages;         /* its pages, decoded */
	uint8_t *digests;
	struct mck_codec *codec;
};

struct mck_lazy {
	const struct mck_read_source *sources; /* faults are resolved in these */
	uint32_t nsources;
	uint32_t unit_pages;
	struct mck_read_plan *plan;         /* the drain's: set once, before `planned` */
	atomic_int planned, abandoned;
	uint8_t *base;
	size_t ps;
	uint64_t npages;
	int fd, keep_fd, efd;
	int verify, poison, hold;
	pid_t pid;

	uint32_t *unit_of;                  /* page -> unit */
	uint32_t *pos_of;                   /* unit -> its place in order */
	_Atomic uint8_t *claimed;           /* unit -> taken by a drain thread or the handler */
	uint64_t nprefetch;                 /* order[0, nprefetch): the prefetch list's units */
	uint8_t *batch_buf;                 /* the handler's, for batches at the front */
	uint64_t *pref_bits;                /* page -> in the prefetch list (NULL: none) */
	struct mck_read_entry *run;         /* the handler's: AROUND_MAX entries */
	uint64_t run_end, around;           /* the handler's: after its last run, its size */
	uint64_t batch, front_next;         /* the handler's: its batch size, where it ended */
	_Atomic uint8_t *state;             /* page -> PENDING.. */
	uint64_t *order;                    /* units, in drain order */
	atomic_uint_fast64_t next;          /* into order */
	atomic_uint_fast64_t units_left;
	atomic_uint_fast64_t fault_gen;
	atomic_int closing, kill;
	pthread_rwlock_t maplock;

	pthread_mutex_t lock;               /* what follows, and the condition */
	pthread_cond_t cond;
	int run_state, err;
	struct mck_read_fault fault;
	uint8_t *touched_bits;
	uint64_t *touched, ntouched, touched_cap;
	uint64_t *lat, nlat, lat_cap;
	uint64_t drained_ns;
	atomic_uint_fast64_t planned_ns;

	atomic_uint_fast64_t n_fault_msgs, n_drained, n_served, n_eexist, n_eagain, n_removed,
		n_bad, n_bytes, chunk_min, chunk_max;
	uint64_t start_ns;

	struct scratch hs;                  /* the handler's */
	pthread_t handler, workers[MAX_WORKERS], preparer;
	unsigned nworkers;
	int handler_started, preparer_started;

	/* the background check and plan (mck_lazy_open) */
	struct mck_lazy_index *indexes;     /* NULL: checked already */
	int *digest_ok;                     /* per index: 1, 0 (damaged), -errno */
	uint64_t *porder, nporder;          /* the drain order asked for, until planned */
	int own_plan;                       /* the plan was built here: freed here */
	int index_damaged;                  /* under lock */
	struct mck_read_fault ifault;
	struct mck_lazy *next_live;
};

/* Lazy restores in flight, for fork(): the child would find their missing
 * pages unregistered (zeros), so fork waits for their drains. */
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mck_lazy *live;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int append(uint64_t **arr, uint64_t *n, uint64_t *cap, uint64_t v)
{
	if (*n == *cap) {
		uint64_t nc = *cap ? *cap * 2 : 1024;
		uint64_t *p = realloc(*arr, nc * sizeof(**arr));

		if (!p)
			return -ENOMEM;
		*arr = p;
		*cap = nc;
	}
	(*arr)[(*n)++] = v;
	return 0;
}

/* ---- death ---------------------------------------------------------------- */

static void die(struct mck_lazy *l, const char *why)
{
	uint64_t left = atomic_load(&l->units_left);

	if (!left)
		return;
	dprintf(2, "memckpt: lazy restore: %s with %llu units of the "
		"arena not restored yet; aborting: a touch of one would hang (nobody serving "
		"its fault) or read zeros (userfaultfd gone)\n", why, (unsigned long long)left);
	abort();
}

/* ---- mapping pages ---------------------------------------------------------- */

static void *page_addr(const struct mck_lazy *l, uint64_t p)
{
	return l->base + p * l->ps;
}

static void set_mapped(struct mck_lazy *l, uint64_t p, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		uint8_t want = PENDING;

		atomic_compare_exchange_strong(&l->state[p + i], &want, MAPPED);
	}
}

/* UFFDIO_COPY (src) or UFFDIO_ZEROPAGE (src NULL) of pages [p, p+n): the
 * number mapped before a failure in *done; -errno of that failure. */
static int map_ioctl(struct mck_lazy *l, uint64_t p, uint64_t n, const void *src, uint64_t *done)
{
	size_t len = n * l->ps;
	int rc;
	long long got;

	if (src) {
		struct uffdio_copy c = {.dst = (uintptr_t)page_addr(l, p), .src = (uintptr_t)src,
					.len = len};

		rc = ioctl(l->fd, UFFDIO_COPY, &c) < 0 ? -errno : 0;
		got = c.copy;
	} else {
		struct uffdio_zeropage z = {.range = {.start = (uintptr_t)page_addr(l, p), .len = len}};

		rc = ioctl(l->fd, UFFDIO_ZEROPAGE, &z) < 0 ? -errno : 0;
		got = z.zeropage;
	}
	*done = rc == 0 ? n : (got > 0 ? (uint64_t)got / l->ps : 0);
	return rc;
}

static void wake(struct mck_lazy *l, uint64_t p)
{
	struct uffdio_range r = {.start = (uintptr_t)page_addr(l, p), .len = l->ps};

	ioctl(l->fd, UFFDIO_WAKE, &r);
}

/* ---- reading and checking ------------------------------------------------------ */

static const struct mck_idx_record *record_of(const struct mck_lazy *l, uint32_t source,
					      uint64_t i)
{
	return (const struct mck_idx_record *)l->sources[source].records + i;
}

/* Room for npages pages; a decoder if `coded`. */
static int scratch_open(struct scratch *sc, uint32_t npages, size_t ps, int coded)
{
	size_t n = (size_t)npages * ps;

	memset(sc, 0, sizeof(*sc));
	sc->buf = aligned_alloc(ps, n);
	sc->pages = aligned_alloc(ps, n);
	sc->digests = malloc((size_t)npages * MCK_BLAKE3_LEN);
	if (!sc->buf || !sc->pages || !sc->digests)
		return -ENOMEM;
	return coded ? mck_codec_open(&sc->codec) : 0;
}

static void scratch_close(struct scratch *sc)
{
	free(sc->buf);
	free(sc->pages);
	free(sc->digests);
	mck_codec_close(sc->codec);
	memset(sc, 0, sizeof(*sc));
}

static int fault_at(struct mck_read_fault *f, int kind, uint32_t source, uint64_t record,
		    uint64_t page, uint64_t offset)
{
	memset(f, 0, sizeof(*f));
	f->kind = kind;
	f->source = source;
	f->record = record;
	f->page = page;
	f->offset = offset;
	return -EBADMSG;
}

static int pread_fully(struct mck_lazy *l, int fd, uint8_t *buf, uint64_t len, uint64_t off,
		       uint32_t source, const struct mck_read_entry *e, struct mck_read_fault *f)
{
	uint64_t at = 0;

	while (at < len) {
		ssize_t got = pread(fd, buf + at, len - at, (off_t)(off + at));

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			fault_at(f, MCK_READ_FAULT_IO, source, e->record, e->page, off + at);
			f->err = -errno;
			return -EBADMSG;
		}
		if (got == 0)
			return fault_at(f, MCK_READ_FAULT_SHORT, source, e->record, e->page, off + at);
		at += (uint64_t)got;
	}
	atomic_fetch_add(&l->n_bytes, len);
	return 0;
}

/* The page image of entry e (stored at src) into dst; -EBADMSG with f set. */
static int decode(struct mck_lazy *l, struct scratch *sc, uint32_t source,
		  const struct mck_read_entry *e, const uint8_t *src, uint8_t *dst,
		  struct mck_read_fault *f)
{
	const struct mck_idx_record *r = record_of(l, source, e->record);
	char why[sizeof(f->why)];
	int rc;

	if (!(r->flags & MCK_PAGE_COMPRESSED)) {
		if (src != dst)
			memcpy(dst, src, l->ps);
		return 0;
	}
	rc = mck_codec_decode(sc->codec, r->flags & MCK_PAGE_COMPRESSED, src, r->length, dst,
			      l->ps, why, sizeof(why));
	if (rc == 0)
		return 0;
	fault_at(f, rc == -EBADMSG ? MCK_READ_FAULT_DECODE : MCK_READ_FAULT_IO, source, e->record,
		 e->page, r->offset);
	if (rc == -EBADMSG)
		memcpy(f->why, why, sizeof(why));
	else
		f->err = rc;
	return -EBADMSG;
}

static int check(struct mck_lazy *l, uint32_t source, const struct mck_read_entry *e,
		 const uint8_t *digest, struct mck_read_fault *f)
{
	const struct mck_idx_record *r = record_of(l, source, e->record);

	if (!l->verify || memcmp(digest, r->digest, MCK_BLAKE3_LEN) == 0)
		return 0;
	fault_at(f, MCK_READ_FAULT_DIGEST, source, e->record, e->page, r->offset);
	f->nbad = 1;
	return -EBADMSG;
}

/* Page p failed (f): never mapped with these bytes, never left missing. */
static void bad_page(struct mck_lazy *l, uint64_t p, const struct mck_read_fault *f)
{
	struct uffdio_poison ps = {.range = {.start = (uintptr_t)page_addr(l, p), .len = l->ps}};
	uint8_t want = PENDING;
	int first;

	if (!atomic_compare_exchange_strong(&l->state[p], &want, BAD))
		return; /* mapped already (by a copy of a good image), dropped, or bad */
	atomic_fetch_add(&l->n_bad, 1);
	pthread_mutex_lock(&l->lock);
	first = l->fault.kind == MCK_READ_FAULT_NONE;
	if (first)
		l->fault = *f;
	pthread_mutex_unlock(&l->lock);
	if (first)
		dprintf(2, "memckpt: lazy restore: page %llu of the arena is damaged in the store "
			"(chain position %u, record %llu): poisoned, a touch of it raises SIGBUS\n",
			(unsigned long long)p, f->source, (unsigned long long)f->record);
	if (!l->poison) {
		dprintf(2, "memckpt: lazy restore: this kernel cannot poison a page "
			"(UFFDIO_POISON); aborting rather than map a damaged page\n");
		abort();
	}
	if (ioctl(l->fd, UFFDIO_POISON, &ps) < 0 && errno != EEXIST && errno != ENOENT) {
		dprintf(2, "memckpt: lazy restore: UFFDIO_POISON of page %llu failed (%s); aborting "
			"rather than map a damaged page\n", (unsigned long long)p, strerror(errno));
		abort();
	}
}

/* ---- the drain -------------------------------------------------------------------- */

struct queue;
static int read_msgs(struct mck_lazy *l, struct queue *q);

/* Map the run of pages [p, p+n) from src (NULL: zeros), the ones still
 * pending. 0, or -errno that stops the drain (the arena is gone). q: the
 * handler's queue when the handler calls (it reads a pending remove event
 * itself), NULL from a drain thread. */
static int map_run(struct mck_lazy *l, uint64_t p, uint64_t n, const uint8_t *src,
		   struct queue *q)
{
	uint64_t i = 0;

	pthread_rwlock_rdlock(&l->maplock);
	while (i < n) {
		uint64_t j = i, done;
		int rc;

		while (i < n && atomic_load(&l->state[p + i]) != PENDING)
			i++;
		j = i;
		while (j < n && atomic_load(&l->state[p + j]) == PENDING)
			j++;
		if (i == j)
			break;
		rc = map_ioctl(l, p + i, j - i, src ? src + i * l->ps : NULL, &done);
		set_mapped(l, p + i, done);
		atomic_fetch_add(&l->n_drained, done);
		i += done;
		if (rc == 0)
			continue;
		if (rc == -EEXIST) {
			atomic_fetch_add(&l->n_eexist, 1);
			set_mapped(l, p + i, 1); /* the handler mapped it */
			i++;
		} else if (rc == -EAGAIN) {
			/* a remove event is pending: the handler reads it (under the
			 * write side), then the pages it dropped are skipped */
			atomic_fetch_add(&l->n_eagain, 1);
			pthread_rwlock_unlock(&l->maplock);
			if (q && (rc = read_msgs(l, q)) < 0)
				return rc;
			if (!q)
				sched_yield();
			pthread_rwlock_rdlock(&l->maplock);
		} else {
			pthread_rwlock_unlock(&l->maplock);
			return rc;
		}
	}
	pthread_rwlock_unlock(&l->maplock);
	return 0;
}

static int any_pending(struct mck_lazy *l, const struct mck_read_unit *u)
{
	const struct mck_read_entry *e = &l->plan->entries[u->first];

	for (uint32_t k = 0; k < u->n; k++)
		if (atomic_load(&l->state[u->kind == MCK_UNIT_ZERO ? u->first + k : e[k].page]) ==
		    PENDING)
			return 1;
	return 0;
}

/* Read, decode and check unit u's pages into dst (a page each entry, in
 * entry order; zeros for a ZERO unit); a page that fails is poisoned (and so
 * no longer PENDING: never mapped from dst). */
static void load_unit(struct mck_lazy *l, const struct mck_read_unit *u, struct scratch *sc,
		      uint8_t *dst)
{
	const struct mck_read_entry *e = &l->plan->entries[u->first];
	struct mck_read_fault f;
	uint32_t k;

	if (u->kind == MCK_UNIT_ZERO) {
		memset(dst, 0, (size_t)u->n * l->ps);
		return;
	}
	if (pread_fully(l, l->plan->sources[u->source].fd, sc->buf, u->bytes, u->offset, u->source,
			&e[0], &f) < 0) {
		for (k = 0; k < u->n; k++)
			bad_page(l, e[k].page, &f);
		return;
	}
	for (k = 0; k < u->n; k++) {
		const struct mck_idx_record *r = mck_plan_record(l->plan, u->source, e[k].record);

		if (decode(l, sc, u->source, &e[k], sc->buf + (r->offset - u->offset),
			   dst + (size_t)k * l->ps, &f) < 0)
			bad_page(l, e[k].page, &f);
	}
	if (l->verify)
		mck_blake3_pages(dst, l->ps, u->n, sc->digests);
	for (k = 0; k < u->n; k++)
		if (check(l, u->source, &e[k], sc->digests + (size_t)k * MCK_BLAKE3_LEN, &f) < 0)
			bad_page(l, e[k].page, &f);
}

static int drain_unit(struct mck_lazy *l, const struct mck_read_unit *u, struct scratch *sc,
		      struct queue *q)
{
	const struct mck_read_entry *e = &l->plan->entries[u->first];
	uint32_t k, start;

	if (!any_pending(l, u))
		return 0;
	if (u->kind == MCK_UNIT_ZERO)
		return map_run(l, u->first, u->n, NULL, q);
	load_unit(l, u, sc, sc->pages);
	/* runs of consecutive pages (bad ones are not PENDING: skipped) */
	for (start = 0, k = 1; k <= u->n; k++) {
		if (k < u->n && e[k].page == e[k - 1].page + 1)
			continue;
		int rc = map_run(l, e[start].page, k - start, sc->pages + (size_t)start * l->ps, q);

		if (rc < 0)
			return rc;
		start = k;
	}
	return 0;
}

/* Unit ui is done (drained, or served whole by the handler). */
static void unit_done(struct mck_lazy *l)
{
	if (atomic_fetch_sub(&l->units_left, 1) == 1)
		(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
}

/* Whoever claims a unit first drains it (a drain thread, or the handler
 * serving a batch at the front of the prefetch order). */
static int claim(struct mck_lazy *l, uint64_t ui)
{
	return !atomic_exchange(&l->claimed[ui], 1);
}

static void stopped(struct mck_lazy *l, int err)
{
	pthread_mutex_lock(&l->lock);
	if (l->run_state == MCK_LAZY_RUNNING) {
		l->run_state = MCK_LAZY_STOPPED;
		l->err = err;
	}
	pthread_mutex_unlock(&l->lock);
	atomic_store(&l->closing, 1);
}

static void note_chunk(struct mck_lazy *l, uint64_t c)
{
	uint64_t v = atomic_load(&l->chunk_min);

	while (c < v && !atomic_compare_exchange_weak(&l->chunk_min, &v, c))
		;
	v = atomic_load(&l->chunk_max);
	while (c > v && !atomic_compare_exchange_weak(&l->chunk_max, &v, c))
		;
}

/* A fault's handler (and the program) first: a woken handler preempts a
 * drain thread of lower priority at once, where it would otherwise wait for
 * one of them to use up its slice. Best effort. */
static void lower_priority(void)
{
	pid_t tid = (pid_t)syscall(SYS_gettid);
	int nice;

	errno = 0;
	nice = getpriority(PRIO_PROCESS, (id_t)tid);
	if (errno == 0 && nice + DRAIN_NICE <= 19)
		(void)!setpriority(PRIO_PROCESS, (id_t)tid, nice + DRAIN_NICE);
}

static void *worker(void *arg)
{
	struct mck_lazy *l = arg;
	struct mck_read_plan *p;
	uint64_t nunits, chunk = CHUNK_MIN_PAGES * 4;
	uint64_t gen;
	struct scratch sc;
	int rc;

	lower_priority();
	/* the drain waits for its plan (built while faults are served already),
	 * and for a held drain's release */
	pthread_mutex_lock(&l->lock);
	while ((l->hold || !atomic_load(&l->planned)) && !atomic_load(&l->closing) &&
	       !atomic_load(&l->abandoned))
		pthread_cond_wait(&l->cond, &l->lock);
	pthread_mutex_unlock(&l->lock);
	if (!atomic_load(&l->planned))
		return NULL; /* closed or abandoned before a plan */
	p = l->plan;
	nunits = p->nunits;
	gen = atomic_load(&l->fault_gen);
	rc = scratch_open(&sc, p->unit_pages, l->ps, p->coded);
	while (rc == 0 && !atomic_load(&l->closing) && !atomic_load(&l->abandoned)) {
		uint64_t take = chunk / p->unit_pages ? chunk / p->unit_pages : 1;
		uint64_t i = atomic_fetch_add(&l->next, take), end = i + take, g;

		if (i >= nunits) {
			/* the units the cursor jumped over (it follows the handler's
			 * batches at the front of the prefetch order) */
			for (i = 0; i < nunits && rc == 0 && !atomic_load(&l->closing); i++)
				if (claim(l, l->order[i]) &&
				    (rc = drain_unit(l, &p->units[l->order[i]], &sc, NULL)) == 0)
					unit_done(l);
			break;
		}
		if (end > nunits)
			end = nunits;
		note_chunk(l, chunk);
		for (; i < end && rc == 0; i++)
			if (claim(l, l->order[i]) &&
			    (rc = drain_unit(l, &p->units[l->order[i]], &sc, NULL)) == 0)
				unit_done(l);
		g = atomic_load(&l->fault_gen);
		if (g != gen) {
			gen = g;
			chunk = chunk / 4 > CHUNK_MIN_PAGES ? chunk / 4 : CHUNK_MIN_PAGES;
			sched_yield(); /* let the handler have the CPU */
		} else if (chunk < CHUNK_MAX_PAGES) {
			chunk *= 2;
		}
	}
	scratch_close(&sc);
	if (rc == -ENOENT || rc == -EFAULT) {
		uint64_t one = 1;

		stopped(l, rc); /* the arena was unmapped: nothing left to serve */
		(void)!write(l->efd, &one, sizeof(one));
	} else if (rc < 0) {
		char why[96];

		/* (not a silent stop: the unregister that follows would turn the
		 * pages left into zero pages) */
		snprintf(why, sizeof(why), "a drain thread failed (%s)", strerror(-rc));
		die(l, why);
	}
	return NULL;
}

/* ---- the fault handler ------------------------------------------------------------ */

struct pending_fault {
	uint64_t page;
	uint64_t t;
};

struct queue {
	struct pending_fault q[MSG_BATCH * 4];
	unsigned n;
};

static void dropped(struct mck_lazy *l, uint64_t start, uint64_t end)
{
	uint64_t lo = (uintptr_t)l->base, hi = lo + l->npages * l->ps;

	if (end <= lo || start >= hi)
		return;
	start = start < lo ? 0 : (start - lo) / l->ps;
	end = end > hi ? l->npages : (end - lo + l->ps - 1) / l->ps;
	for (uint64_t p = start; p < end; p++) {
		uint8_t s = atomic_exchange(&l->state[p], DROPPED);

		if (s == PENDING)
			atomic_fetch_add(&l->n_removed, 1);
		else if (s == BAD)
			atomic_store(&l->state[p], BAD);
	}
}

/* Read what the kernel queued: remove events handled, faults queued. The
 * messages read, or -errno if the uffd is unusable. */
static int read_msgs(struct mck_lazy *l, struct queue *q)
{
	struct uffd_msg msg[MSG_BATCH];
	unsigned room = (unsigned)(sizeof(q->q) / sizeof(q->q[0])) - q->n;
	ssize_t got;
	int err = 0;

	pthread_rwlock_wrlock(&l->maplock);
	got = read(l->fd, msg, sizeof(msg));
	if (got < 0)
		err = errno == EAGAIN || errno == EINTR ? 0 : -errno;
	for (ssize_t i = 0; got > 0 && i < got / (ssize_t)sizeof(msg[0]); i++) {
		if (msg[i].event == UFFD_EVENT_PAGEFAULT) {
			uint64_t a = msg[i].arg.pagefault.address, lo = (uintptr_t)l->base;

			atomic_fetch_add(&l->n_fault_msgs, 1);
			/* (a fault with no room left is woken by the drain's copy of
			 * its page, or by the unregister at the end) */
			if (a >= lo && a < lo + l->npages * l->ps && room) {
				room--;
				q->q[q->n].page = (a - lo) / l->ps;
				q->q[q->n++].t = now_ns();
			}
		} else if (msg[i].event == UFFD_EVENT_REMOVE) {
			dropped(l, msg[i].arg.remove.start, msg[i].arg.remove.end);
		}
	}
	pthread_rwlock_unlock(&l->maplock);
	return err < 0 ? err : got > 0 ? (int)(got / (ssize_t)sizeof(msg[0])) : 0;
}

/* Where page p is in the chain: the newest source with a record for it
 * (binary search: records are in page order), checked to be a record the
 * reader can follow; *rec NULL: no source has one (the page is zero). This
 * needs no plan: faults are served by it from the moment the server starts,
 * while the plan is built and the indexes checked in the background. */
static int lookup(const struct mck_lazy *l, uint64_t p, uint32_t newest, uint32_t *src,
		  uint64_t *idx, const struct mck_idx_record **rec, struct mck_read_fault *f)
{
	for (uint32_t s = newest; s-- > 0;) {
		const struct mck_idx_record *r = l->sources[s].records;
		uint64_t lo = 0, hi = l->sources[s].nrecords;

		while (lo < hi) {
			uint64_t mid = lo + (hi - lo) / 2;

			if (r[mid].page < p)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo < l->sources[s].nrecords && r[lo].page == p) {
			*src = s;
			*idx = lo;
			*rec = &r[lo];
			return mck_read_check_record(&l->sources[s], s, lo, l->ps, l->npages, f);
		}
	}
	*rec = NULL;
	return 0;
}

/* No source newer than s has a record for page p. */
static int newest_is(const struct mck_lazy *l, uint64_t p, uint32_t s)
{
	uint32_t s2;
	uint64_t i2;
	const struct mck_idx_record *r2;
	struct mck_read_fault f;

	return lookup(l, p, l->nsources, &s2, &i2, &r2, &f) == 0 && r2 && s2 == s;
}

/* For a fault on page p, record i of source s (stored bytes): the entries
 * to serve with it into e[], up to FAULT_AROUND: the pending pages that
 * follow p whose records follow i in the source, stored right after (one
 * read), and are the chain's newest for their page. */
static uint32_t around(struct mck_lazy *l, uint64_t p, uint32_t s, uint64_t i,
		       struct mck_read_entry *e, uint32_t max)
{
	const struct mck_idx_record *r = record_of(l, s, 0);
	uint64_t n = l->sources[s].nrecords;
	struct mck_read_fault f;
	uint32_t m = 1;

	e[0].page = p;
	e[0].record = i;
	while (m < max && i + m < n && r[i + m].page == p + m &&
	       !(r[i + m].flags & MCK_PAGE_ZERO) &&
	       r[i + m].offset == r[i + m - 1].offset + r[i + m - 1].length &&
	       atomic_load(&l->state[p + m]) == PENDING &&
	       mck_read_check_record(&l->sources[s], s, i + m, l->ps, l->npages, &f) == 0 &&
	       (s + 1 == l->nsources || newest_is(l, p + m, s))) {
		e[m].page = p + m;
		e[m].record = i + m;
		m++;
	}
	return m;
}

/* Pages after p (zero like it: no record or a ZERO one) to zero with it. */
static uint32_t zero_around(struct mck_lazy *l, uint64_t p, uint32_t max)
{
	uint32_t m = 1, s;
	uint64_t i;
	const struct mck_idx_record *r;
	struct mck_read_fault f;

	while (m < max && p + m < l->npages &&
	       atomic_load(&l->state[p + m]) == PENDING &&
	       lookup(l, p + m, l->nsources, &s, &i, &r, &f) == 0 &&
	       (!r || (r->flags & MCK_PAGE_ZERO)))
		m++;
	return m;
}

/* Read, decode and check entries e[0, m) of source s (stored back to back)
 * into the handler's scratch; the entries that pass, from the first (0:
 * the faulting page failed). */
static uint32_t fetch_run(struct mck_lazy *l, uint32_t s, const struct mck_read_entry *e,
			  uint32_t m)
{
	const struct mck_idx_record *r0 = record_of(l, s, e[0].record);
	const struct mck_idx_record *rl = record_of(l, s, e[m - 1].record);
	struct mck_read_fault f;

	if (pread_fully(l, l->sources[s].fd, l->hs.buf, rl->offset + rl->length - r0->offset,
			r0->offset, s, e, &f) < 0) {
		bad_page(l, e[0].page, &f);
		return 0;
	}
	for (uint32_t i = 0; i < m; i++) {
		const struct mck_idx_record *r = record_of(l, s, e[i].record);

		if (decode(l, &l->hs, s, &e[i], l->hs.buf + (r->offset - r0->offset),
			   l->hs.pages + (size_t)i * l->ps, &f) < 0) {
			bad_page(l, e[i].page, &f);
			m = i;
		}
	}
	if (l->verify && m) {
		mck_blake3_pages(l->hs.pages, l->ps, m, l->hs.digests);
		for (uint32_t i = 0; i < m; i++)
			if (check(l, s, &e[i], l->hs.digests + (size_t)i * MCK_BLAKE3_LEN, &f) < 0) {
				bad_page(l, e[i].page, &f);
				m = i;
			}
	}
	return m;
}

/* Map page p for a fault, checked, with up to FAULT_AROUND pending pages
 * that follow it (a program touching pages in order faults once per run,
 * not once per page). */
static int serve(struct mck_lazy *l, uint64_t p, struct queue *q)
{
	const uint8_t *src = NULL;
	uint8_t st = atomic_load(&l->state[p]);
	uint64_t n = 1;
	int rc;

	if (st == MAPPED || st == BAD) {
		wake(l, p);
		return 0;
	}
	if (st == PENDING) {
		const struct mck_idx_record *r;
		struct mck_read_fault f;
		uint32_t s = 0, max = FAULT_AROUND;
		uint64_t i = 0;

		if (lookup(l, p, l->nsources, &s, &i, &r, &f) < 0) {
			bad_page(l, p, &f);
			return 0; /* poisoned: the toucher gets SIGBUS */
		}
		/* reading the prefetch list in page order before the plan: grow */
		if (l->pref_bits && p == l->run_end && !atomic_load(&l->planned) &&
		    (l->pref_bits[p / 64] >> (p % 64) & 1))
			l->around = max = l->around * 2 > AROUND_MAX ? AROUND_MAX
				: l->around * 2 < 4 * FAULT_AROUND ? 4 * FAULT_AROUND : (uint32_t)l->around * 2;
		else
			l->around = FAULT_AROUND;
		if (!r || (r->flags & MCK_PAGE_ZERO)) {
			n = zero_around(l, p, max);
		} else {
			n = fetch_run(l, s, l->run, around(l, p, s, i, l->run, max));
			if (!n)
				return 0;
			src = l->hs.pages;
		}
		l->run_end = p + n;
	}
	for (;;) {
		uint64_t done;

		/* (the pages after p may have been mapped by the drain meanwhile:
		 * EEXIST after p's copy ends the run) */
		rc = map_ioctl(l, p, n, src, &done);
		set_mapped(l, p, done);
		atomic_fetch_add(&l->n_served, done);
		if (rc == 0 || (done && (rc == -EEXIST || rc == -EAGAIN)))
			return 0; /* p is mapped, its thread woken */
		if (rc == -EEXIST) {
			atomic_fetch_add(&l->n_eexist, 1);
			set_mapped(l, p, 1);
			wake(l, p);
			return 0;
		}
		if (rc != -EAGAIN)
			return rc;
		atomic_fetch_add(&l->n_eagain, 1);
		rc = read_msgs(l, q);
		if (rc < 0)
			return rc;
		n = 1;
		if (atomic_load(&l->state[p]) == DROPPED)
			src = NULL; /* dropped by the program meanwhile: it reads zeros */
	}
}

/* Map the handler's batch run (pages [first, first+n) in batch_buf, from
 * nunits units): every unit of it done. */
static int flush_batch(struct mck_lazy *l, uint64_t first, uint64_t *n, uint64_t *nunits,
		       struct queue *q)
{
	int rc = *n ? map_run(l, first, *n, l->batch_buf, q) : 0;

	for (; rc == 0 && *nunits; --*nunits)
		unit_done(l);
	*n = 0;
	return rc;
}

/* A fault on page p at the front of the prefetch order, right after the
 * last one there: serve a batch of the units that follow in the order (see
 * BATCH_MIN_PAGES). 1 if served so, 0 if p is not such a fault, -errno. */
static int front(struct mck_lazy *l, uint64_t p, struct queue *q)
{
	const struct mck_read_plan *pl = l->plan;
	uint64_t ui, pos, j, run_first = 0, run_n = 0, run_units = 0, got = 0, nx;
	int rc = 0;

	if (!atomic_load(&l->planned) || !l->nprefetch || atomic_load(&l->state[p]) != PENDING)
		return 0;
	ui = l->unit_of[p];
	pos = l->pos_of[ui];
	if (pos >= l->nprefetch)
		return 0;
	if (!l->front_next || pos + 1 < l->front_next || pos > l->front_next + FRONT_SLACK) {
		l->batch = 0; /* not where the last one ended: an ordinary fault */
		l->front_next = pos + 1;
		return 0;
	}
	if (atomic_load(&l->claimed[ui])) {
		/* at a unit a drain thread is on: p now, the batch from the next */
		rc = serve(l, p, q);
		if (rc < 0)
			return rc;
		pos++;
	}
	if (!l->batch_buf) {
		l->batch_buf = aligned_alloc(l->ps, (BATCH_MAX_PAGES + (size_t)l->unit_pages) * l->ps);
		if (!l->batch_buf)
			return 0;
	}
	l->batch = l->batch ? (l->batch * 2 > BATCH_MAX_PAGES ? BATCH_MAX_PAGES : l->batch * 2)
			    : BATCH_MIN_PAGES;
	for (j = pos; j < l->nprefetch && got < l->batch && rc == 0; j++) {
		uint64_t uj = l->order[j];
		const struct mck_read_unit *u = &pl->units[uj];
		uint64_t first = u->kind == MCK_UNIT_ZERO ? u->first : pl->entries[u->first].page;

		if (!claim(l, uj))
			continue; /* a drain thread's */
		got += u->n;
		if (!any_pending(l, u)) {
			unit_done(l); /* served by faults already */
			continue;
		}
		if (run_n && first != run_first + run_n)
			rc = flush_batch(l, run_first, &run_n, &run_units, q);
		if (rc == 0 && !u->contiguous) {
			if ((rc = drain_unit(l, u, &l->hs, q)) == 0)
				unit_done(l);
			continue;
		}
		if (!run_n)
			run_first = first;
		load_unit(l, u, &l->hs, l->batch_buf + run_n * l->ps);
		run_n += u->n;
		run_units++;
	}
	if (rc == 0)
		rc = flush_batch(l, run_first, &run_n, &run_units, q);
	l->front_next = j;
	/* the drain goes on after the batch: ahead of the program */
	nx = atomic_load(&l->next);
	while (nx < j && !atomic_compare_exchange_weak(&l->next, &nx, j))
		;
	return rc < 0 ? rc : 1;
}

static void first_touch(struct mck_lazy *l, uint64_t p, uint64_t t0)
{
	uint64_t t1 = now_ns();

	pthread_mutex_lock(&l->lock);
	if (!(l->touched_bits[p / 8] & (1u << (p % 8)))) {
		l->touched_bits[p / 8] |= (uint8_t)(1u << (p % 8));
		(void)append(&l->touched, &l->ntouched, &l->touched_cap, p);
		(void)append(&l->lat, &l->nlat, &l->lat_cap, t1 - t0);
	}
	pthread_mutex_unlock(&l->lock);
}

/* Every page mapped: unregister (a page the program drops from now on
 * reads as zero the ordinary way) and close the userfaultfd. */
static void finish(struct mck_lazy *l)
{
	struct uffdio_range r = {.start = (uintptr_t)l->base, .len = l->npages * l->ps};

	struct queue q = {.n = 0};

	ioctl(l->fd, UFFDIO_UNREGISTER, &r);
	/* remove events queued before: their madvise waits for them to be read */
	while (read_msgs(l, &q) > 0)
		q.n = 0;
	pthread_mutex_lock(&l->lock);
	if (l->run_state == MCK_LAZY_RUNNING) {
		l->run_state = MCK_LAZY_DRAINED;
		l->drained_ns = now_ns();
	}
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
}

/* The restore is abandoned: every page still pending is poisoned (runs of
 * them, one ioctl a run). */
static void poison_pending(struct mck_lazy *l)
{
	uint64_t p = 0;

	while (p < l->npages) {
		uint64_t q = p;
		uint8_t want = PENDING;

		while (q < l->npages && atomic_compare_exchange_strong(&l->state[q], &want, BAD)) {
			q++;
			want = PENDING;
		}
		if (q == p) {
			p++;
			continue;
		}
		atomic_fetch_add(&l->n_bad, q - p);
		if (!l->poison) {
			dprintf(2, "memckpt: lazy restore: this kernel cannot poison a page "
				"(UFFDIO_POISON); aborting rather than leave pages that cannot be "
				"served\n");
			abort();
		}
		while (p < q) {
			struct uffdio_poison ps = {
				.range = {.start = (uintptr_t)page_addr(l, p), .len = (q - p) * l->ps}};

			if (ioctl(l->fd, UFFDIO_POISON, &ps) == 0)
				break;
			if (errno == ENOENT)
				return; /* the arena is gone */
			if (errno == EAGAIN) {
				struct queue qu = {.n = 0};

				(void)read_msgs(l, &qu); /* a remove event first; faults wait */
				continue;
			}
			if (errno != EEXIST) {
				dprintf(2, "memckpt: lazy restore: UFFDIO_POISON of pages %llu-%llu failed "
					"(%s); aborting\n", (unsigned long long)p,
					(unsigned long long)q - 1, strerror(errno));
				abort();
			}
			/* (a page there already: past it) */
			p += (ps.updated > 0 ? (uint64_t)ps.updated / l->ps : 0) + 1;
		}
		p = q;
	}
}

static void *handler(void *arg)
{
	struct mck_lazy *l = arg;
	struct queue q = {.n = 0};

	for (;;) {
		struct pollfd pfd[2] = {{.fd = l->fd, .events = POLLIN}, {.fd = l->efd, .events = POLLIN}};
		int rc;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die(l, "the page fault handler failed to poll its userfaultfd");
			break;
		}
		if (atomic_load(&l->kill)) {
			die(l, "the page fault handler was killed (a test)");
			break;
		}
		if (pfd[0].revents & POLLNVAL) {
			die(l, "the page fault handler found its userfaultfd closed under it");
			l->fd = l->keep_fd; /* drained already: unregister through the copy */
			l->keep_fd = -1;
			break;
		}
		if (pfd[0].revents & POLLIN) {
			rc = read_msgs(l, &q);
			rc = rc < 0 ? rc : 0;
			for (unsigned i = 0; rc == 0 && i < q.n; i++) {
				uint64_t p = q.q[i].page, t = q.q[i].t;

				rc = front(l, p, &q);
				if (rc >= 0)
					rc = serve(l, p, &q); /* (p is mapped: a wake) */
				first_touch(l, p, t);
				atomic_fetch_add(&l->fault_gen, 1);
			}
			q.n = 0;
			if (rc == -ENOENT || rc == -EFAULT) {
				stopped(l, rc); /* the arena was unmapped: nothing left to serve */
				break;
			}
			if (rc < 0) {
				char why[96];

				snprintf(why, sizeof(why), "the page fault handler failed (%s)", strerror(-rc));
				die(l, why);
				break;
			}
		}
		if (pfd[1].revents & POLLIN) {
			uint64_t v;

			(void)!read(l->efd, &v, sizeof(v));
		}
		if (atomic_load(&l->abandoned)) {
			poison_pending(l);
			atomic_store(&l->units_left, 0);
			break;
		}
		if (!atomic_load(&l->units_left) || atomic_load(&l->closing))
			break;
	}
	/* the drain may have stopped with faults still queued in the kernel:
	 * unregistering wakes them (the arena is gone, or every page is there) */
	finish(l);
	return NULL;
}

/* ---- fork ------------------------------------------------------------------------- */

static void before_fork(void)
{
	pthread_mutex_lock(&live_lock);
	for (struct mck_lazy *l = live; l; l = l->next_live)
		if (l->pid == getpid()) {
			mck_lazy_release(l);
			mck_lazy_wait(l, -1);
		}
}

static void after_fork_parent(void)
{
	pthread_mutex_unlock(&live_lock);
}

static void after_fork_child(void)
{
	pthread_mutex_unlock(&live_lock);
}

static void register_atfork(void)
{
	pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

/* ---- the API ------------------------------------------------------------------------ */

static int build_order(struct mck_lazy *l, const uint64_t *pref, uint64_t npref)
{
	uint64_t nunits = l->plan->nunits, n = 0;
	uint8_t *seen = calloc(nunits ? nunits : 1, 1);

	l->order = malloc((nunits ? nunits : 1) * sizeof(*l->order));
	l->pos_of = malloc((nunits ? nunits : 1) * sizeof(*l->pos_of));
	l->claimed = calloc(nunits ? nunits : 1, 1);
	if (!seen || !l->order || !l->pos_of || !l->claimed) {
		free(seen);
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < npref; i++) {
		uint64_t u;

		if (pref[i] >= l->npages)
			continue;
		u = l->unit_of[pref[i]];
		if (!seen[u]) {
			seen[u] = 1;
			l->order[n++] = u;
		}
	}
	l->nprefetch = npref ? n : 0;
	for (uint64_t u = 0; u < nunits; u++)
		if (!seen[u])
			l->order[n++] = u;
	free(seen);
	for (uint64_t i = 0; i < nunits; i++)
		l->pos_of[l->order[i]] = (uint32_t)i;
	return 0;
}

static int map_units(struct mck_lazy *l)
{
	const struct mck_read_plan *p = l->plan;

	l->unit_of = malloc((l->npages ? l->npages : 1) * sizeof(*l->unit_of));
	if (!l->unit_of)
		return -ENOMEM;
	if (p->nunits > UINT32_MAX || p->done[p->nunits] != l->npages)
		return -EINVAL; /* not a plan of every page (built with MCK_READ_OUT_ZERO?) */
	for (uint64_t i = 0; i < p->nunits; i++) {
		const struct mck_read_unit *u = &p->units[i];

		for (uint32_t k = 0; k < u->n; k++)
			l->unit_of[u->kind == MCK_UNIT_ZERO ? u->first + k
							     : p->entries[u->first + k].page] = (uint32_t)i;
	}
	return 0;
}

static int open_uffd(struct mck_lazy *l)
{
	uint64_t offered = 0;
	int rc, umo;

	l->fd = mck_uffd_open(&umo);
	if (l->fd < 0)
		return l->fd;
	rc = mck_uffd_api(l->fd, 0, &offered);
	if (rc < 0)
		return rc;
	close(l->fd);
	/* UFFDIO_API is once per fd: a second fd with what this kernel offers */
	l->fd = mck_uffd_open(&umo);
	if (l->fd < 0)
		return l->fd;
	l->poison = !!(offered & UFFD_FEATURE_POISON);
	rc = mck_uffd_api(l->fd, UFFD_FEATURE_EVENT_REMOVE | (l->poison ? UFFD_FEATURE_POISON : 0),
			  NULL);
	if (rc < 0)
		return rc;
	{
		struct uffdio_register reg = {
			.range = {.start = (uintptr_t)l->base, .len = l->npages * l->ps},
			.mode = UFFDIO_REGISTER_MODE_MISSING,
		};

		if (ioctl(l->fd, UFFDIO_REGISTER, &reg) < 0)
			return errno == EINVAL ? -EOPNOTSUPP : -errno;
		if (!(reg.ioctls & (1ull << _UFFDIO_COPY)) || !(reg.ioctls & (1ull << _UFFDIO_ZEROPAGE)))
			return -EOPNOTSUPP;
	}
	l->keep_fd = fcntl(l->fd, F_DUPFD_CLOEXEC, 0);
	return l->keep_fd < 0 ? -errno : 0;
}

static int start_threads(struct mck_lazy *l, unsigned nthreads)
{
	sigset_t all, old;
	int rc;

	if (!nthreads) {
		cpu_set_t set;

		nthreads = sched_getaffinity(0, sizeof(set), &set) == 0 ? (unsigned)CPU_COUNT(&set) : 1;
	}
	if (nthreads > MAX_WORKERS)
		nthreads = MAX_WORKERS;
	if (nthreads < 1)
		nthreads = 1;
	/* the program's signals are for its own threads */
	sigfillset(&all);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	rc = -pthread_create(&l->handler, NULL, handler, l);
	if (rc == 0) {
		l->handler_started = 1;
		for (; l->nworkers < nthreads; l->nworkers++)
			if (pthread_create(&l->workers[l->nworkers], NULL, worker, l) != 0)
				break;
		if (!l->nworkers)
			rc = -EAGAIN;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return rc;
}

static void free_lazy(struct mck_lazy *l)
{
	if (l->fd >= 0)
		close(l->fd);
	if (l->keep_fd >= 0)
		close(l->keep_fd);
	if (l->efd >= 0)
		close(l->efd);
	scratch_close(&l->hs);
	free(l->unit_of);
	free(l->pos_of);
	free((void *)l->claimed);
	free(l->batch_buf);
	free(l->pref_bits);
	free(l->run);
	free((void *)l->state);
	free(l->order);
	free(l->touched_bits);
	free(l->touched);
	free(l->lat);
	free(l->indexes);
	free(l->digest_ok);
	free(l->porder);
	if (l->own_plan)
		mck_read_plan_free(l->plan);
	pthread_rwlock_destroy(&l->maplock);
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cond);
	free(l);
}

/* The drain's plan (and its order): the drain may begin. */
static int set_plan(struct mck_lazy *l, struct mck_read_plan *plan, const uint64_t *order,
		    uint64_t norder)
{
	int rc;

	if (plan->ndeferred)
		return -ENOTSUP;
	if (plan->npages != l->npages || plan->dest != l->base || plan->page_size != l->ps)
		return -EINVAL;
	l->plan = plan;
	rc = map_units(l);
	if (rc == 0)
		rc = build_order(l, order, norder);
	if (rc < 0)
		return rc;
	atomic_fetch_add(&l->units_left, plan->nunits);
	atomic_store(&l->planned_ns, now_ns());
	pthread_mutex_lock(&l->lock);
	atomic_store(&l->planned, 1);
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
	/* the plan's own count, held since the start (the handler ends at 0) */
	if (atomic_fetch_sub(&l->units_left, 1) == 1)
		(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
	return 0;
}

static void *hash_indexes(void *arg)
{
	struct mck_lazy *l = arg;

	for (uint32_t s = 0; s < l->nsources; s++)
		l->digest_ok[s] = mck_lazy_index_digest(&l->indexes[s]);
	return NULL;
}

/* The server's own thread: each index checked whole, the plan built, the
 * drain let go; or the restore abandoned, with the reason kept. */
static void *preparer(void *arg)
{
	struct mck_lazy *l = arg;
	struct mck_read_plan *plan = NULL;
	struct mck_read_fault f;
	pthread_t hasher;
	int rc = 0, hashing = 0;

	memset(&f, 0, sizeof(f));
	/* the handler first: a first fault is served at once, beside the two
	 * threads checking (the hasher stays at the process's priority: at nice
	 * +5 both would get a small share of a busy machine) */
	lower_priority();
	/* a held server (tests) serves faults only by lookup until released */
	pthread_mutex_lock(&l->lock);
	while (l->hold && !atomic_load(&l->closing) && !atomic_load(&l->abandoned))
		pthread_cond_wait(&l->cond, &l->lock);
	pthread_mutex_unlock(&l->lock);
	/* the digests on a thread of their own, the records and the plan here */
	if (l->indexes && pthread_create(&hasher, NULL, hash_indexes, l) == 0)
		hashing = 1;
	for (uint32_t s = 0; l->indexes && s < l->nsources && rc == 0; s++) {
		struct mck_lazy_index records_only = {.data = NULL};

		if (!hashing)
			l->digest_ok[s] = mck_lazy_index_digest(&l->indexes[s]);
		rc = mck_lazy_check_index(&records_only, &l->sources[s], s, l->ps, l->npages, &f);
	}
	if (rc == 0)
		rc = mck_read_plan_build(&plan, l->sources, l->nsources, l->base, l->ps, l->npages,
					 NULL, 0, 0, &f);
	if (hashing)
		pthread_join(hasher, NULL);
	for (uint32_t s = 0; l->indexes && s < l->nsources; s++)
		if (l->digest_ok[s] != 1) {
			memset(&f, 0, sizeof(f));
			f.source = s;
			f.record = MCK_LAZY_WHOLE_FILE;
			f.kind = l->digest_ok[s] == 0 ? MCK_READ_FAULT_RECORD : MCK_READ_FAULT_IO;
			f.err = l->digest_ok[s] == 0 ? 0 : l->digest_ok[s];
			snprintf(f.why, sizeof(f.why), "%s", l->digest_ok[s] == 0
				 ? "BLAKE3 digest mismatch (the file is damaged)"
				 : "its digest could not be computed");
			rc = -EBADMSG;
			break;
		}
	if (rc < 0 && plan) {
		mck_read_plan_free(plan);
		plan = NULL;
	}
	if (rc == 0) {
		l->own_plan = 1;
		rc = set_plan(l, plan, l->porder, l->nporder);
	}
	free(l->porder);
	l->porder = NULL;
	if (rc == 0)
		return NULL;
	if (f.kind == MCK_READ_FAULT_NONE) {
		f.kind = MCK_READ_FAULT_IO;
		f.err = rc;
		snprintf(f.why, sizeof(f.why), "planning the drain failed (%s)", strerror(-rc));
	}
	pthread_mutex_lock(&l->lock);
	l->ifault = f;
	l->index_damaged = 1;
	pthread_mutex_unlock(&l->lock);
	dprintf(2, "memckpt: lazy restore: the index at chain position %u cannot be used (%s); "
		"the %llu pages served from it so far were each checked against their record's "
		"digest, every page not served yet is poisoned (a touch raises SIGBUS)\n",
		f.source, f.why, (unsigned long long)atomic_load(&l->n_served));
	mck_lazy_abandon(l);
	return NULL;
}

static int start_preparer(struct mck_lazy *l, const struct mck_lazy_index *indexes,
			  const uint64_t *order, uint64_t norder)
{
	sigset_t all, old;
	int rc;

	if (indexes) {
		l->indexes = malloc(l->nsources * sizeof(*l->indexes) + 1);
		l->digest_ok = calloc(l->nsources + 1, sizeof(*l->digest_ok));
		if (!l->indexes || !l->digest_ok)
			return -ENOMEM;
		memcpy(l->indexes, indexes, l->nsources * sizeof(*l->indexes));
	}
	if (norder) {
		l->porder = malloc(norder * sizeof(*order));
		if (!l->porder)
			return -ENOMEM;
		memcpy(l->porder, order, norder * sizeof(*order));
		l->nporder = norder;
	}
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	rc = -pthread_create(&l->preparer, NULL, preparer, l);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	l->preparer_started = rc == 0;
	return rc;
}

static int open_common(struct mck_lazy **out, const struct mck_read_source *sources,
		       uint32_t nsources, const struct mck_lazy_index *indexes, void *dest,
		       size_t page_size, uint64_t npages, struct mck_read_plan *plan,
		       const uint64_t *order, uint64_t norder, unsigned nthreads, unsigned flags)
{
	struct mck_lazy *l;
	pthread_rwlockattr_t ra;
	int rc;

	*out = NULL;
	if (!npages || !page_size || !dest || (nsources && !sources) || (norder && !order))
		return -EINVAL;
	if (npages > SIZE_MAX / page_size)
		return -EOVERFLOW;
	for (uint32_t s = 0; s < nsources; s++)
		if (sources[s].nrecords && !sources[s].records)
			return -EINVAL;
	pthread_once(&atfork_once, register_atfork);
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->sources = sources;
	l->nsources = nsources;
	l->unit_pages = page_size >= MCK_UNIT_BYTES ? 1 : (uint32_t)(MCK_UNIT_BYTES / page_size);
	l->base = dest;
	l->ps = page_size;
	l->npages = npages;
	l->verify = !!(flags & MCK_LAZY_VERIFY);
	l->hold = !!(flags & MCK_LAZY_HOLD);
	l->pid = getpid();
	l->fd = l->keep_fd = -1;
	l->start_ns = now_ns();
	atomic_init(&l->units_left, 1); /* the plan's count: until it is set */
	atomic_init(&l->chunk_min, UINT64_MAX);
	pthread_rwlockattr_init(&ra);
	/* the handler's reads must not starve behind a stream of drain copies */
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&l->maplock, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cond, NULL);
	l->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	/* (calloc of these is fresh zero pages: nothing is touched until used) */
	l->state = calloc(l->npages, 1);
	l->touched_bits = calloc((l->npages + 7) / 8, 1);
	rc = l->efd < 0 ? -errno : (!l->state || !l->touched_bits) ? -ENOMEM : 0;
	if (rc == 0)
		rc = scratch_open(&l->hs, l->unit_pages > AROUND_MAX ? l->unit_pages : AROUND_MAX,
				  l->ps, mck_codec_flags() != 0);
	if (rc == 0 && !(l->run = malloc(AROUND_MAX * sizeof(*l->run))))
		rc = -ENOMEM;
	if (rc == 0 && norder && !(l->pref_bits = calloc((npages + 63) / 64, 8)))
		rc = -ENOMEM;
	for (uint64_t k = 0; rc == 0 && k < norder; k++)
		if (order[k] < npages)
			l->pref_bits[order[k] / 64] |= 1ull << (order[k] % 64);
	if (rc == 0 && plan)
		rc = set_plan(l, plan, order, norder);
	if (rc == 0)
		rc = open_uffd(l);
	if (rc == 0)
		rc = start_threads(l, nthreads);
	if (rc == 0 && !plan)
		rc = start_preparer(l, indexes, order, norder);
	if (rc < 0) {
		if (l->handler_started) {
			atomic_store(&l->closing, 1);
			pthread_mutex_lock(&l->lock);
			pthread_cond_broadcast(&l->cond);
			pthread_mutex_unlock(&l->lock);
			for (unsigned i = 0; i < l->nworkers; i++)
				pthread_join(l->workers[i], NULL);
			atomic_store(&l->units_left, 0);
			(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
			pthread_join(l->handler, NULL);
		}
		free_lazy(l);
		return rc;
	}
	pthread_mutex_lock(&live_lock);
	l->next_live = live;
	live = l;
	pthread_mutex_unlock(&live_lock);
	*out = l;
	return 0;
}

int mck_lazy_open(struct mck_lazy **out, const struct mck_read_source *sources,
		  uint32_t nsources, const struct mck_lazy_index *indexes, void *dest,
		  size_t page_size, uint64_t npages, const uint64_t *order, uint64_t norder,
		  unsigned nthreads, unsigned flags)
{
	return open_common(out, sources, nsources, indexes, dest, page_size, npages, NULL, order,
			   norder, nthreads, flags);
}

int mck_lazy_start(struct mck_lazy **out, struct mck_read_plan *plan, const uint64_t *order,
		   uint64_t norder, unsigned nthreads, unsigned flags)
{
	*out = NULL;
	if (plan->ndeferred)
		return -ENOTSUP;
	return open_common(out, plan->sources, plan->nsources, NULL, plan->dest, plan->page_size,
			   plan->npages, plan, order, norder, nthreads, flags);
}

void mck_lazy_abandon(struct mck_lazy *l)
{
	pthread_mutex_lock(&l->lock);
	atomic_store(&l->abandoned, 1);
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
	(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
}

int mck_lazy_index_fault(struct mck_lazy *l, struct mck_read_fault *f)
{
	int bad;

	pthread_mutex_lock(&l->lock);
	bad = l->index_damaged;
	if (bad)
		*f = l->ifault;
	pthread_mutex_unlock(&l->lock);
	return bad;
}

int mck_lazy_planned(struct mck_lazy *l)
{
	return atomic_load(&l->planned);
}

int mck_lazy_wait(struct mck_lazy *l, int timeout_ms)
{
	struct timespec until;
	int rc = 0;

	clock_gettime(CLOCK_REALTIME, &until);
	if (timeout_ms > 0) {
		until.tv_sec += timeout_ms / 1000;
		until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
	}
	pthread_mutex_lock(&l->lock);
	while (l->run_state == MCK_LAZY_RUNNING && rc == 0) {
		if (timeout_ms < 0)
			pthread_cond_wait(&l->cond, &l->lock);
		else if (timeout_ms == 0 ||
			 pthread_cond_timedwait(&l->cond, &l->lock, &until) == ETIMEDOUT)
			rc = l->run_state == MCK_LAZY_RUNNING ? -ETIMEDOUT : 0;
	}
	pthread_mutex_unlock(&l->lock);
	return rc;
}

void mck_lazy_get_stats(struct mck_lazy *l, struct mck_lazy_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->npages = l->npages;
	st->fault_msgs = atomic_load(&l->n_fault_msgs);
	st->drained = atomic_load(&l->n_drained);
	st->served = atomic_load(&l->n_served);
	st->eexist = atomic_load(&l->n_eexist);
	st->eagain = atomic_load(&l->n_eagain);
	st->removed = atomic_load(&l->n_removed);
	st->bad = atomic_load(&l->n_bad);
	st->bytes_read = atomic_load(&l->n_bytes);
	st->chunk_min = atomic_load(&l->chunk_min);
	st->chunk_max = atomic_load(&l->chunk_max);
	if (st->chunk_min == UINT64_MAX)
		st->chunk_min = 0;
	st->start_ns = l->start_ns;
	st->planned_ns = atomic_load(&l->planned_ns);
	pthread_mutex_lock(&l->lock);
	st->faults = l->ntouched;
	st->drained_ns = l->drained_ns;
	st->state = l->run_state;
	st->err = l->err;
	pthread_mutex_unlock(&l->lock);
}

void mck_lazy_first_fault(struct mck_lazy *l, struct mck_read_fault *f)
{
	pthread_mutex_lock(&l->lock);
	*f = l->fault;
	pthread_mutex_unlock(&l->lock);
}

static uint64_t copy_out(struct mck_lazy *l, const uint64_t *src, const uint64_t *n,
			 uint64_t *dst, uint64_t cap)
{
	uint64_t got;

	pthread_mutex_lock(&l->lock);
	got = *n;
	if (cap && dst)
		memcpy(dst, src, (got < cap ? got : cap) * sizeof(*dst));
	pthread_mutex_unlock(&l->lock);
	return got;
}

uint64_t mck_lazy_touched(struct mck_lazy *l, uint64_t *pages, uint64_t cap)
{
	return copy_out(l, l->touched, &l->ntouched, pages, cap);
}

uint64_t mck_lazy_latencies(struct mck_lazy *l, uint64_t *ns, uint64_t cap)
{
	return copy_out(l, l->lat, &l->nlat, ns, cap);
}

int mck_lazy_fd(struct mck_lazy *l)
{
	return l->fd;
}

void mck_lazy_release(struct mck_lazy *l)
{
	pthread_mutex_lock(&l->lock);
	l->hold = 0;
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
}

void mck_lazy_kill_handler(struct mck_lazy *l)
{
	atomic_store(&l->kill, 1);
	(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
}

void mck_lazy_close(struct mck_lazy *l)
{
	struct mck_lazy **pp;

	if (!l)
		return;
	pthread_mutex_lock(&live_lock);
	for (pp = &live; *pp; pp = &(*pp)->next_live)
		if (*pp == l) {
			*pp = l->next_live;
			break;
		}
	pthread_mutex_unlock(&live_lock);
	if (l->pid == getpid()) {
		mck_lazy_release(l);
		if (l->preparer_started)
			pthread_join(l->preparer, NULL); /* planned, or abandoned */
		/* the drain runs to its end: a page left missing would read zeros */
		for (unsigned i = 0; i < l->nworkers; i++)
			pthread_join(l->workers[i], NULL);
		atomic_store(&l->closing, 1);
		(void)!write(l->efd, &(uint64_t){1}, sizeof(uint64_t));
		pthread_join(l->handler, NULL);
	}
	free_lazy(l);
}
