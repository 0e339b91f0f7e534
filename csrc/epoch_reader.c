/* epoch_reader.c: running a read plan (see epoch_reader.h) on threads.
 *
 * Each thread takes the next unit, reads it (one preadv straight into the
 * pages, or a pread into scratch that is then decoded), and hashes its
 * pages right away, while they are still in cache: with two threads one
 * reads while the other hashes. Units are handed out in plan order, so the
 * first faulty unit (the one reported) is the same whatever the number of
 * threads. Every worker is joined before the call returns. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "memckpt.h"
#include "page_codec.h"
#include "read_plan.h"
#include "read_threads.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* A thread more only for this much work or more each: starting and joining
 * one costs tens of microseconds, and on a busy machine its first slice may
 * come milliseconds later, while one thread reads this much in about that. */
#define THREAD_MIN_BYTES (4u << 20)
/* Fresh pages are faulted in with one madvise per run of at least this
 * many: the kernel populates a run far faster than a read faulting it in
 * page by page through copy-to-user (measured on this project's VMs:
 * 512 MiB in ~150 ms against ~320 ms). */
#define POPULATE_MIN_PAGES 4
/* With the fill in the run (read_fill.c), a thread takes this much of the
 * plan at a time: a 2 MiB block's units, which it populates and reads. */
#define FILL_SHARE_BYTES (2u << 20)

static atomic_int populate_works = 1; /* cleared once a kernel says EINVAL */

struct scratch {
	struct iovec *iov;
	uint64_t *idx;
	uint8_t *digests;
	uint8_t *buf;           /* CODED units' stored bytes */
	struct mck_codec *codec;
};

struct run {
	struct mck_read_plan *plan;
	atomic_uint_fast64_t next;
	uint64_t last;
	uint64_t share;         /* units a thread takes at a time */
	atomic_int stop;        /* a failure that is no unit's: every thread stops */
	pthread_mutex_t lock;
	atomic_uint_fast64_t fault_unit; /* the lowest faulty unit so far (UINT64_MAX: none) */
	struct mck_read_fault fault;
	int fault_rc;
	int rc;                 /* a failure that is no unit's (memory for scratch) */
};

static int scratch_open(struct scratch *sc, const struct mck_read_plan *p)
{
	size_t n = p->unit_pages;

	memset(sc, 0, sizeof(*sc));
	sc->iov = malloc(n * sizeof(*sc->iov));
	sc->idx = malloc(n * sizeof(*sc->idx));
	sc->digests = malloc(n * MCK_BLAKE3_LEN);
	if (!sc->iov || !sc->idx || !sc->digests)
		return -ENOMEM;
	if (p->coded) {
		sc->buf = malloc(n * p->page_size);
		if (!sc->buf)
			return -ENOMEM;
		return mck_codec_open(&sc->codec);
	}
	return 0;
}

static void scratch_close(struct scratch *sc)
{
	free(sc->iov);
	free(sc->idx);
	free(sc->digests);
	free(sc->buf);
	mck_codec_close(sc->codec);
}

static int unit_fault(struct mck_read_fault *f, int kind, const struct mck_read_plan *p,
		      const struct mck_read_unit *u, uint64_t entry, uint64_t offset)
{
	const struct mck_read_entry *e = &p->entries[u->first + entry];

	memset(f, 0, sizeof(*f));
	f->kind = kind;
	f->source = u->source;
	f->record = e->record;
	f->page = e->page;
	f->offset = offset;
	return -EBADMSG;
}

/* The entry of unit u whose stored bytes hold pack byte `at`. */
static uint64_t entry_at(const struct mck_read_plan *p, const struct mck_read_unit *u,
			 uint64_t at)
{
	uint64_t k = 0;

	while (k + 1 < u->n) {
		const struct mck_idx_record *r =
			mck_plan_record(p, u->source, p->entries[u->first + k].record);

		if (at < r->offset + r->length)
			break;
		k++;
	}
	return k;
}

/* Read u->bytes from u->offset of the unit's pack into iov[0..cnt), which
 * spans exactly that many bytes; iov is consumed. */
static int read_fully(const struct mck_read_plan *p, const struct mck_read_unit *u,
		      struct iovec *iov, size_t cnt, struct mck_read_fault *f)
{
	int fd = p->sources[u->source].fd;
	uint64_t off = u->offset;

	while (cnt) {
		ssize_t got = preadv(fd, iov, cnt > IOV_MAX ? IOV_MAX : (int)cnt, (off_t)off);

		if (got < 0) {
			int err = errno;

			if (err == EINTR)
				continue;
			unit_fault(f, MCK_READ_FAULT_IO, p, u, entry_at(p, u, off), off);
			f->err = -err;
			return f->err;
		}
		if (got == 0)
			return unit_fault(f, MCK_READ_FAULT_SHORT, p, u, entry_at(p, u, off), off);
		off += (uint64_t)got;
		while (cnt && (size_t)got >= iov->iov_len) {
			got -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt) {
			iov->iov_base = (uint8_t *)iov->iov_base + got;
			iov->iov_len -= (size_t)got;
		}
	}
	return 0;
}

static void populate(void *addr, size_t len)
{
	/* best effort: the read that follows faults in whatever this did not */
	if (atomic_load_explicit(&populate_works, memory_order_relaxed) &&
	    madvise(addr, len, MADV_POPULATE_WRITE) < 0 && errno == EINVAL)
		atomic_store_explicit(&populate_works, 0, memory_order_relaxed);
}

/* Raw images straight into their pages: one iovec per run of consecutive pages. */
static int read_raw(const struct mck_read_plan *p, const struct mck_read_unit *u,
		    struct scratch *sc, struct mck_read_fault *f)
{
	size_t ps = p->page_size, cnt = 0;

	for (uint32_t k = 0; k < u->n; k++) {
		uint8_t *at = p->dest + p->entries[u->first + k].page * ps;

		if (cnt && (uint8_t *)sc->iov[cnt - 1].iov_base + sc->iov[cnt - 1].iov_len == at) {
			sc->iov[cnt - 1].iov_len += ps;
		} else {
			sc->iov[cnt].iov_base = at;
			sc->iov[cnt++].iov_len = ps;
		}
	}
	/* (with the fill in the run of a FILL_HUGE plan, every page is there) */
	if ((p->flags & MCK_READ_OUT_ZERO) && !(p->fill && (p->flags & MCK_READ_FILL_HUGE)))
		for (size_t i = 0; i < cnt; i++)
			if (sc->iov[i].iov_len >= POPULATE_MIN_PAGES * ps)
				populate(sc->iov[i].iov_base, sc->iov[i].iov_len);
	return read_fully(p, u, sc->iov, cnt, f);
}

/* Stored bytes into scratch, then each page decoded (or copied) into place. */
static int read_coded(const struct mck_read_plan *p, const struct mck_read_unit *u,
		      struct scratch *sc, struct mck_read_fault *f)
{
	struct iovec one = {.iov_base = sc->buf, .iov_len = u->bytes};
	size_t ps = p->page_size;
	int rc = read_fully(p, u, &one, 1, f);

	for (uint32_t k = 0; rc == 0 && k < u->n; k++) {
		const struct mck_read_entry *e = &p->entries[u->first + k];
		const struct mck_idx_record *r = mck_plan_record(p, u->source, e->record);
		const uint8_t *src = sc->buf + (r->offset - u->offset);
		uint8_t *dst = p->dest + e->page * ps;

		if (!(r->flags & MCK_PAGE_COMPRESSED)) {
			memcpy(dst, src, ps);
			continue;
		}
		rc = mck_codec_decode(sc->codec, r->flags & MCK_PAGE_COMPRESSED, src, r->length,
				      dst, ps, f->why, sizeof(f->why));
		if (rc == -EBADMSG) {
			char why[sizeof(f->why)];

			memcpy(why, f->why, sizeof(why));
			unit_fault(f, MCK_READ_FAULT_DECODE, p, u, k, r->offset);
			memcpy(f->why, why, sizeof(why));
		} else if (rc < 0) {
			unit_fault(f, MCK_READ_FAULT_IO, p, u, k, r->offset);
			f->err = rc;
		}
	}
	return rc;
}

/* Every page of the unit against its record's digest; the first that differs is the fault. */
static int verify(const struct mck_read_plan *p, const struct mck_read_unit *u,
		  struct scratch *sc, struct mck_read_fault *f)
{
	const struct mck_read_entry *e = &p->entries[u->first];
	uint64_t bad = 0, first_bad = 0;

	if (u->contiguous) {
		mck_blake3_pages(p->dest + e[0].page * p->page_size, p->page_size, u->n,
				 sc->digests);
	} else {
		for (uint32_t k = 0; k < u->n; k++)
			sc->idx[k] = e[k].page;
		mck_blake3_pages_at(p->dest, p->page_size, sc->idx, u->n, sc->digests);
	}
	for (uint32_t k = 0; k < u->n; k++) {
		const struct mck_idx_record *r = mck_plan_record(p, u->source, e[k].record);

		if (memcmp(sc->digests + (size_t)k * MCK_BLAKE3_LEN, r->digest, MCK_BLAKE3_LEN)) {
			if (!bad++)
				first_bad = k;
		}
	}
	if (!bad)
		return 0;
	unit_fault(f, MCK_READ_FAULT_DIGEST, p, u, first_bad,
		   mck_plan_record(p, u->source, e[first_bad].record)->offset);
	f->nbad = bad;
	return -EBADMSG;
}

static int run_unit(const struct mck_read_plan *p, const struct mck_read_unit *u,
		    struct scratch *sc, struct mck_read_fault *f)
{
	int rc;

	if (u->kind == MCK_UNIT_ZERO) {
		memset(p->dest + u->first * p->page_size, 0, (size_t)u->n * p->page_size);
		return 0;
	}
	rc = u->kind == MCK_UNIT_RAW ? read_raw(p, u, sc, f) : read_coded(p, u, sc, f);
	if (rc == 0 && (p->flags & MCK_READ_VERIFY))
		rc = verify(p, u, sc, f);
	return rc;
}

/* Units [i, end) as one thread's share: each unit's whole 2 MiB blocks
 * populated just before it is read (with plan->fill), so that the zeroing
 * runs on every thread and the pages are still in cache for the copy. A
 * unit after the lowest faulty unit found so far is not begun. */
static void run_share(struct run *r, uint64_t i, uint64_t end, struct scratch *sc)
{
	struct mck_read_plan *p = r->plan;
	struct mck_read_fault f;

	for (; i < end && i < atomic_load_explicit(&r->fault_unit, memory_order_relaxed); i++) {
		int rc;

		if (p->fill)
			mck_read_fill_unit(p, &p->units[i]);
		rc = run_unit(p, &p->units[i], sc, &f);
		if (rc < 0) {
			pthread_mutex_lock(&r->lock);
			if (i < atomic_load(&r->fault_unit)) {
				atomic_store(&r->fault_unit, i);
				r->fault = f;
				r->fault_rc = rc;
			}
			pthread_mutex_unlock(&r->lock);
			return;
		}
	}
}

static void *worker(void *arg)
{
	struct run *r = arg;
	struct scratch sc;
	int rc = scratch_open(&sc, r->plan);

	if (rc < 0) {
		pthread_mutex_lock(&r->lock);
		if (!r->rc)
			r->rc = rc;
		pthread_mutex_unlock(&r->lock);
		atomic_store(&r->stop, 1);
	}
	while (rc == 0 && !atomic_load_explicit(&r->stop, memory_order_relaxed)) {
		/* units are taken in plan order, a share at a time */
		uint64_t i = atomic_fetch_add(&r->next, r->share);

		if (i >= r->last || i >= atomic_load_explicit(&r->fault_unit, memory_order_relaxed))
			break;
		run_share(r, i, i + r->share < r->last ? i + r->share : r->last, &sc);
	}
	scratch_close(&sc);
	return NULL;
}

int mck_read_plan_run(struct mck_read_plan *p, uint64_t first, uint64_t last,
		      unsigned nthreads, struct mck_read_fault *fault)
{
	struct run r;

	memset(fault, 0, sizeof(*fault));
	if (first > last || last > p->nunits)
		return -EINVAL;
	if (first == last)
		return 0;
	if (!nthreads) {
		uint64_t work = (p->done[last] - p->done[first]) * p->page_size / THREAD_MIN_BYTES;

		nthreads = mck_read_cpus();
		if (nthreads > work)
			nthreads = work ? (unsigned)work : 1;
	}
	if (nthreads > last - first)
		nthreads = (unsigned)(last - first);
	memset(&r, 0, sizeof(r));
	r.plan = p;
	atomic_init(&r.next, first);
	atomic_init(&r.stop, 0);
	r.last = last;
	/* with the fill in the run, a share is a 2 MiB block's worth: one
	 * thread populates a block and reads it, the other the next block */
	r.share = p->fill && FILL_SHARE_BYTES / p->page_size > p->unit_pages
		? FILL_SHARE_BYTES / p->page_size / p->unit_pages : 1;
	atomic_init(&r.fault_unit, UINT64_MAX);
	pthread_mutex_init(&r.lock, NULL);

	mck_read_on_threads(worker, &r, nthreads);
	pthread_mutex_destroy(&r.lock);

	if (atomic_load(&r.fault_unit) != UINT64_MAX) {
		*fault = r.fault;
		return r.fault_rc;
	}
	return r.rc;
}
