/* lazy_internal.h: what the files of the lazy restore server share
 * (lazy_restore.c, lazy_page.c, lazy_poison.c, lazy_drain.c,
 * lazy_handler.c, lazy_prefetch.c, lazy_prepare.c, lazy_fork.c): serving an
 * epoch into an arena on first touch (see lazy_restore.h and
 * docs/restore.md).
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
#ifndef MEMCKPT_LAZY_INTERNAL_H
#define MEMCKPT_LAZY_INTERNAL_H

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

struct pending_fault {
	uint64_t page;
	uint64_t t;
};

struct queue {
	struct pending_fault q[MSG_BATCH * 4];
	unsigned n;
};

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline int append(uint64_t **arr, uint64_t *n, uint64_t *cap, uint64_t v)
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

/* Lazy restores in flight (lazy_fork.c), for fork(). */
extern pthread_mutex_t lz_live_lock;
extern struct mck_lazy *lz_live;
extern pthread_once_t lz_atfork_once;

/* lazy_restore.c */
int lz_map_units(struct mck_lazy *l);

/* lazy_page.c */
void *lz_page_addr(const struct mck_lazy *l, uint64_t p);
void lz_set_mapped(struct mck_lazy *l, uint64_t p, uint64_t n);
int lz_map_ioctl(struct mck_lazy *l, uint64_t p, uint64_t n, const void *src, uint64_t *done);
void lz_wake(struct mck_lazy *l, uint64_t p);
const struct mck_idx_record *lz_record_of(const struct mck_lazy *l, uint32_t source,
					  uint64_t i);
int lz_scratch_open(struct scratch *sc, uint32_t npages, size_t ps, int coded);
void lz_scratch_close(struct scratch *sc);
int lz_pread_fully(struct mck_lazy *l, int fd, uint8_t *buf, uint64_t len, uint64_t off,
		   uint32_t source, const struct mck_read_entry *e, struct mck_read_fault *f);
int lz_decode(struct mck_lazy *l, struct scratch *sc, uint32_t source,
	      const struct mck_read_entry *e, const uint8_t *src, uint8_t *dst,
	      struct mck_read_fault *f);
int lz_check(struct mck_lazy *l, uint32_t source, const struct mck_read_entry *e,
	     const uint8_t *digest, struct mck_read_fault *f);

/* lazy_poison.c */
void lz_die(struct mck_lazy *l, const char *why);
void lz_bad_page(struct mck_lazy *l, uint64_t p, const struct mck_read_fault *f);
void lz_poison_pending(struct mck_lazy *l);

/* lazy_drain.c */
int lz_map_run(struct mck_lazy *l, uint64_t p, uint64_t n, const uint8_t *src,
	       struct queue *q);
int lz_any_pending(struct mck_lazy *l, const struct mck_read_unit *u);
void lz_load_unit(struct mck_lazy *l, const struct mck_read_unit *u, struct scratch *sc,
		  uint8_t *dst);
int lz_drain_unit(struct mck_lazy *l, const struct mck_read_unit *u, struct scratch *sc,
		  struct queue *q);
void lz_unit_done(struct mck_lazy *l);
int lz_claim(struct mck_lazy *l, uint64_t ui);
void lz_stopped(struct mck_lazy *l, int err);
void lz_lower_priority(void);
void *lz_worker(void *arg);

/* lazy_handler.c */
int lz_read_msgs(struct mck_lazy *l, struct queue *q);
void *lz_handler(void *arg);

/* lazy_prefetch.c */
void lz_first_touch(struct mck_lazy *l, uint64_t p, uint64_t t0);
int lz_build_order(struct mck_lazy *l, const uint64_t *pref, uint64_t npref);

/* lazy_prepare.c */
int lz_set_plan(struct mck_lazy *l, struct mck_read_plan *plan, const uint64_t *order,
		uint64_t norder);
int lz_start_preparer(struct mck_lazy *l, const struct mck_lazy_index *indexes,
		      const uint64_t *order, uint64_t norder);

/* lazy_fork.c */
void lz_register_atfork(void);

#endif /* MEMCKPT_LAZY_INTERNAL_H */
