/* capture_bg.c: background (copy-before-write) snapshots over a tracker
 * that can hold writers (MCK_CAP_HOLD_WRITERS: uffd-sync), without fork.
 * This file knows the tracker only through its mck_hold_ops, and the tracker
 * knows this file only through the mck_capture_hooks it registers
 * (internal.h).
 *
 * The checkpoint instant is mck_bg_begin's critical section in the tracker
 * (hold->freeze): the dirty bitmap is drained into D and D's pages, the
 * only writable ones by the tracker's invariant, are write-protected
 * again. From then on no page of the range can be written without a round
 * trip to the handler thread, which asks bg_defer first: a page of D not
 * copied yet keeps its writer asleep, and the copier, on copying that page,
 * records it as written (next epoch) and un-protects it, which wakes the
 * writer. So staging ends up holding every page of D as it was at the
 * instant, and every write after it is reported by the next collect.
 *
 * Who copies: only the copier thread. The handler never reads the arena and
 * never waits: were it to copy a page itself, a page discarded meanwhile
 * would fault on the handler's own read and the handler would wait on
 * itself. It only flags the page (WAITER) and queues it ahead of the
 * copier's order (QEMU's background snapshot does the same with its page
 * request queue). Per page of D, one byte of state, claimed by compare-and-
 * swap: PENDING -> COPYING -> DONE, plus the WAITER flag, which only the
 * handler sets and only on a page not DONE. The copier's exchange to DONE
 * returns the flag, so a waiter flagged before the copy finished is released
 * by the copier, and a fault that finds DONE is resolved by the handler as
 * usual: no page is copied twice, no waiter is left asleep.
 *
 * The copier is one thread per tracker, started at the first mck_bg_begin
 * and parked between copies: a pthread_create in the pause would cost more
 * than a wake-up, and 1,000 checkpoints leave no threads behind. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

enum {
	BG_PENDING = 0,
	BG_COPYING = 1,
	BG_DONE = 2,
	BG_PHASE = 3,  /* mask of the three above */
	BG_WAITER = 4, /* a writer sleeps until this page is copied */
};

enum bg_phase {
	BG_IDLE,    /* no copy, or the last one was waited for */
	BG_RUNNING, /* the copier has work */
	BG_FINISHED /* copied, not yet waited for */
};

/* Ratio of one UFFDIO_WRITEPROTECT call (~1.4 us, its TLB flush included)
 * to walking one more page inside a call (~0.1 us, whether the page was
 * protected already or not), measured on 6.18 at 1 GiB by
 * bench/bench_bg_protect.py (docs/checkpointing.md): a gap of
 * already-protected pages shorter than this is cheaper to walk than to split
 * the ioctl at. With cost = calls * c_call + pages walked * c_page, merging
 * exactly the gaps below c_call / c_page is the cheapest cover of each D. */
#define BG_AUTO_GAP 12

struct mck_bg {
	struct mck_tracker *t;
	const struct mck_hold_ops *hold; /* t's */
	size_t page_size;
	size_t cap; /* the tracker's page count: D never holds more */
	_Atomic uint8_t *state;
	/* indices into D of pages a writer waits on: written by the handler
	 * (under the tracker lock, at most once per page), read by the copier */
	uint32_t *urgent;
	_Atomic size_t urgent_head;
	size_t urgent_tail;

	/* the copy in progress: set by arm() under the tracker lock */
	const uint64_t *pages;
	size_t n;
	uint8_t *staging;
	size_t staging_pages;
	int64_t max_gap;
	bool all_pages;
	bool populated;       /* D also holds the pages that may hold data */
	const uint64_t *extra; /* and these (a failed epoch's pages) */
	size_t nextra;
	/* cap entries each, calloc'd (resident only as far as used): the
	 * populated pages, and D built from its parts before it replaces the
	 * drained list, which must stay intact until nothing can fail */
	uint64_t *pop;
	uint64_t *merged;
	_Atomic bool armed; /* the handler defers writes to pages of D */
	_Atomic uint64_t faults_waited;
	uint64_t copied_early;
	struct timespec instant;
	struct mck_bg_stats stats;
	int err;

	pthread_t thread;
	pthread_mutex_t mu; /* phase, stop, err, stats */
	pthread_cond_t cv;
	enum bg_phase phase;
	bool stop;
};

static uint64_t ns_since(const struct timespec *a)
{
	struct timespec b;

	clock_gettime(CLOCK_MONOTONIC, &b);
	return (uint64_t)((b.tv_sec - a->tv_sec) * 1000000000LL + (b.tv_nsec - a->tv_nsec));
}

/* The index in D of page, or -1: D is sorted (the bitmap drains in order). */
static ptrdiff_t find(const struct mck_bg *bg, uint64_t page)
{
	size_t lo = 0, hi = bg->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (bg->pages[mid] < page)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < bg->n && bg->pages[lo] == page ? (ptrdiff_t)lo : -1;
}

/* The hooks' defer (internal.h): under the tracker lock, in its handler. */
static bool bg_defer(void *ctx, uint64_t page)
{
	struct mck_bg *bg = ctx;
	ptrdiff_t i;
	uint8_t st;

	if (!atomic_load_explicit(&bg->armed, memory_order_acquire))
		return false;
	i = find(bg, page);
	if (i < 0)
		return false;
	st = atomic_load(&bg->state[i]);
	for (;;) {
		if ((st & BG_PHASE) == BG_DONE)
			return false;
		if (st & BG_WAITER)
			break; /* another writer of this page already waits */
		if (atomic_compare_exchange_weak(&bg->state[i], &st, st | BG_WAITER)) {
			size_t h = atomic_load_explicit(&bg->urgent_head, memory_order_relaxed);

			bg->urgent[h] = (uint32_t)i;
			atomic_store_explicit(&bg->urgent_head, h + 1, memory_order_release);
			break;
		}
	}
	atomic_fetch_add_explicit(&bg->faults_waited, 1, memory_order_relaxed);
	return true;
}

/* Copy D's page i unless someone claimed it, and release its waiters:
 * 1 if copied here, 0 if not, -errno if a waiter could not be released. */
static int copy_one(struct mck_bg *bg, size_t i)
{
	uint8_t st = atomic_load(&bg->state[i]), old;

	do {
		if ((st & BG_PHASE) != BG_PENDING)
			return 0;
	} while (!atomic_compare_exchange_weak(&bg->state[i], &st,
					       (uint8_t)((st & ~BG_PHASE) | BG_COPYING)));
	memcpy(bg->staging + i * bg->page_size, bg->t->addr + bg->pages[i] * bg->page_size,
	       bg->page_size);
	old = atomic_exchange(&bg->state[i], BG_DONE);
	if (old & BG_WAITER) {
		int rc = bg->hold->release(bg->t, bg->pages[i]);

		return rc < 0 ? rc : 1;
	}
	return 1;
}

static int copy_all(struct mck_bg *bg)
{
	size_t next = 0;
	int rc, err = 0;

	for (;;) {
		size_t i;
		bool early = false;

		if (bg->urgent_tail < atomic_load_explicit(&bg->urgent_head, memory_order_acquire)) {
			i = bg->urgent[bg->urgent_tail++];
			early = true;
		} else if (next < bg->n) {
			i = next++;
		} else {
			break;
		}
		rc = copy_one(bg, i);
		if (rc < 0 && !err)
			err = rc; /* keep going: every other waiter must wake */
		bg->copied_early += early && rc > 0;
	}
	/* every page is DONE: the handler defers nothing any more */
	atomic_store_explicit(&bg->armed, false, memory_order_release);
	return err;
}

static void *copier_main(void *arg)
{
	struct mck_bg *bg = arg;

	pthread_mutex_lock(&bg->mu);
	for (;;) {
		while (bg->phase != BG_RUNNING && !bg->stop)
			pthread_cond_wait(&bg->cv, &bg->mu);
		if (bg->phase != BG_RUNNING)
			break;
		pthread_mutex_unlock(&bg->mu);
		int rc = copy_all(bg);
		uint64_t ns = ns_since(&bg->instant);

		pthread_mutex_lock(&bg->mu);
		bg->err = rc;
		bg->stats.copy_ns = ns;
		bg->stats.faults_waited = atomic_load(&bg->faults_waited);
		bg->stats.copied_early = bg->copied_early;
		bg->phase = BG_FINISHED;
		pthread_cond_broadcast(&bg->cv);
	}
	pthread_mutex_unlock(&bg->mu);
	return NULL;
}

/* Protect pages[0..n) (sorted), merging runs whose gap is at most gap pages
 * into one ioctl: every page of the range outside the writable list is
 * protected already, so an ioctl over a gap re-protects nothing new and
 * costs only its walk. Called under the tracker lock. */
static int protect_list(struct mck_tracker *t, const uint64_t *pages, size_t n, int64_t gap,
			struct mck_bg_stats *st)
{
	const struct mck_hold_ops *hold = mck_tracker_hold(t);
	uint64_t runs = 0, calls = 0, covered = 0;
	int rc;

	for (size_t i = 0, j; i < n; i = j) {
		j = i + 1;
		runs++;
		while (j < n && pages[j] - pages[j - 1] - 1 <= (uint64_t)gap) {
			runs += pages[j] != pages[j - 1] + 1;
			j++;
		}
		rc = hold->protect(t, pages[i], (size_t)(pages[j - 1] - pages[i] + 1), true);
		if (rc < 0)
			return rc;
		calls++;
		covered += pages[j - 1] - pages[i] + 1;
	}
	if (st) {
		st->runs = runs;
		st->protect_calls = calls;
		st->protect_pages = covered;
		st->max_gap = gap;
	}
	return 0;
}

/* out = the sorted union of three sorted, duplicate-free lists; its length. */
static size_t merge3(const uint64_t *a, size_t na, const uint64_t *b, size_t nb,
		     const uint64_t *c, size_t nc, uint64_t *out)
{
	size_t i = 0, j = 0, k = 0, n = 0;

	while (i < na || j < nb || k < nc) {
		uint64_t m = UINT64_MAX;

		if (i < na && a[i] < m)
			m = a[i];
		if (j < nb && b[j] < m)
			m = b[j];
		if (k < nc && c[k] < m)
			m = c[k];
		i += i < na && a[i] == m;
		j += j < nb && b[j] == m;
		k += k < nc && c[k] == m;
		out[n++] = m;
	}
	return n;
}

/* The drained pages are pages[0..*np); the writable ones among them, which
 * need protecting, are writable[0..w). D grows from the drained pages to
 * every page (MCK_BG_ALL_PAGES), or by the populated and extra pages: those
 * not drained are protected already, or absent (a write to one faults), so
 * what needs protecting does not grow. pages[] becomes D only once nothing
 * can fail: on failure, the caller puts the drained bits back from it.
 * Called under the tracker lock: the instant. */
static int arm(void *ctx, uint64_t *pages, size_t *np, const uint64_t *writable, size_t w)
{
	struct mck_bg *bg = ctx;
	struct timespec t0;
	int64_t gap = bg->max_gap < 0 ? BG_AUTO_GAP : bg->max_gap;
	const uint64_t *d = pages;
	size_t n = *np;
	bool every = bg->all_pages;
	int rc;

	bg->stats.collect_ns = ns_since(&bg->instant);
	if (!every && (bg->populated || bg->nextra)) {
		int64_t m = 0;

		if (bg->populated) {
			/* here, under the lock, no page can turn from absent to
			 * written unseen: such a write waits for the handler */
			m = mck_pages_populated(bg->t->addr, bg->t->len, bg->pop, bg->cap, 0);
		}
		if (m < 0) {
			/* no pagemap to read (a sandbox without /proc, no fd
			 * left): every page, as a full epoch took before,
			 * rather than no epoch at all */
			every = true;
		} else {
			n = merge3(pages, n, bg->pop, (size_t)m, bg->extra, bg->nextra, bg->merged);
			d = bg->merged;
		}
	}
	if (every)
		n = bg->cap;
	if (n > bg->staging_pages)
		return -ENOBUFS;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = protect_list(bg->t, writable, w, gap, &bg->stats);
	if (rc < 0)
		return rc;
	if (every) {
		for (size_t i = 0; i < n; i++)
			pages[i] = i;
	} else if (d != pages) {
		memcpy(pages, d, n * sizeof(*pages));
	}
	*np = n;
	bg->stats.protect_ns = ns_since(&t0);
	bg->stats.pages = n;
	bg->stats.prearmed = n - w;
	memset((void *)bg->state, BG_PENDING, n);
	atomic_store_explicit(&bg->urgent_head, 0, memory_order_relaxed);
	bg->urgent_tail = 0;
	bg->copied_early = 0;
	atomic_store(&bg->faults_waited, 0);
	bg->pages = pages;
	bg->n = n;
	clock_gettime(CLOCK_MONOTONIC, &bg->instant);
	atomic_store_explicit(&bg->armed, true, memory_order_release);
	return 0;
}

static int prearm_protect(struct mck_tracker *t, const uint64_t *pages, size_t n, int64_t gap)
{
	return protect_list(t, pages, n, gap, NULL);
}

static void bg_free(struct mck_bg *bg)
{
	free((void *)bg->state);
	free(bg->urgent);
	free(bg->pop);
	free(bg->merged);
	pthread_cond_destroy(&bg->cv);
	pthread_mutex_destroy(&bg->mu);
	free(bg);
}

static int bg_create(struct mck_tracker *t, const struct mck_hold_ops *hold, struct mck_bg **out)
{
	struct mck_bg *bg = calloc(1, sizeof(*bg));
	sigset_t all, old;
	int rc;

	if (!bg)
		return -ENOMEM;
	bg->t = t;
	bg->hold = hold;
	bg->page_size = t->page_size;
	bg->cap = t->npages;
	/* calloc'd: untouched pages of these cost nothing until a D that large */
	bg->state = calloc(t->npages, sizeof(*bg->state));
	bg->urgent = calloc(t->npages, sizeof(*bg->urgent));
	bg->pop = calloc(t->npages, sizeof(*bg->pop));
	bg->merged = calloc(t->npages, sizeof(*bg->merged));
	pthread_mutex_init(&bg->mu, NULL);
	pthread_cond_init(&bg->cv, NULL);
	if (!bg->state || !bg->urgent || !bg->pop || !bg->merged || t->npages > UINT32_MAX) {
		bg_free(bg);
		return t->npages > UINT32_MAX ? -EOVERFLOW : -ENOMEM;
	}
	/* every signal blocked, as in the handler: a signal handler that wrote
	 * into a page of D on this thread would wait on this thread */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = -pthread_create(&bg->thread, NULL, copier_main, bg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc < 0) {
		bg_free(bg);
		return rc;
	}
	*out = bg;
	return 0;
}

/* The hooks' destroy (internal.h): called by the tracker's close. */
static void bg_destroy(void *ctx)
{
	struct mck_bg *bg = ctx;

	pthread_mutex_lock(&bg->mu);
	bg->stop = true;
	pthread_cond_broadcast(&bg->cv);
	pthread_mutex_unlock(&bg->mu);
	/* the copier finishes a copy in progress before it sees stop */
	pthread_join(bg->thread, NULL);
	/* the handler reads bg under the tracker lock: detach it there, or a
	 * fault still queued would read it after the free */
	bg->hold->attach(bg->t, NULL, NULL);
	bg_free(bg);
}

/* The hooks' forget (internal.h): called by the tracker's forget in a fork child. */
static void bg_forget(void *ctx)
{
	struct mck_bg *bg = ctx;

	/* the copier and the handler live in the parent; staging is the
	 * caller's; what remains here is memory of this process */
	free((void *)bg->state);
	free(bg->urgent);
	free(bg);
}

static const struct mck_capture_hooks bg_hooks = {
	.defer = bg_defer,
	.destroy = bg_destroy,
	.forget = bg_forget,
};

int mck_bg_supported(int backend, char *reason, size_t len)
{
	const char *name = mck_backend_name(backend);

	if (!name)
		return -EINVAL;
	if (!(mck_backend_caps(backend) & MCK_CAP_HOLD_WRITERS)) {
		mck_reason(reason, len, "background capture needs the uffd-sync tracker, whose "
			   "handler thread can hold a writer until its page is copied; %s cannot "
			   "(use mode \"copy\" or \"fork\")", name);
		return 0;
	}
	return mck_backend_status(backend, reason, len);
}

/* The tracker's background state, made (with its copier) at first use and
 * attached to the tracker, which destroys it at close. */
static int bg_get(struct mck_tracker *t, const struct mck_hold_ops *hold, struct mck_bg **out)
{
	int rc;

	*out = hold->attached(t, &bg_hooks);
	if (*out)
		return 0;
	rc = bg_create(t, hold, out);
	if (rc < 0)
		return rc;
	hold->attach(t, &bg_hooks, *out);
	return 0;
}

int64_t mck_bg_prearm(struct mck_tracker *t, int64_t max_gap)
{
	const struct mck_hold_ops *hold;

	if (!t)
		return -EINVAL;
	hold = mck_tracker_hold(t);
	if (!hold)
		return -EOPNOTSUPP;
	if (mck_detached(t))
		return -ECHILD;
	/* safe during a copy too: it only protects pages the handler made
	 * writable, which the copier has finished with */
	return hold->prearm(t, prearm_protect, max_gap < 0 ? BG_AUTO_GAP : max_gap);
}

int64_t mck_bg_begin(struct mck_tracker *t, uint64_t *pages, size_t cap, void *staging,
		     size_t staging_pages, int64_t max_gap, unsigned flags,
		     struct mck_bg_stats *stats)
{
	return mck_bg_begin_ex(t, pages, cap, staging, staging_pages, max_gap, flags, NULL, 0,
			       stats);
}

int64_t mck_bg_begin_ex(struct mck_tracker *t, uint64_t *pages, size_t cap, void *staging,
			size_t staging_pages, int64_t max_gap, unsigned flags,
			const uint64_t *extra, size_t nextra, struct mck_bg_stats *stats)
{
	const struct mck_hold_ops *hold;
	struct mck_bg *bg;
	int64_t n;
	int rc;

	if (!t || !pages || (!staging && staging_pages) ||
	    (flags & ~(unsigned)(MCK_BG_ALL_PAGES | MCK_BG_POPULATED)) || (!extra && nextra))
		return -EINVAL;
	hold = mck_tracker_hold(t);
	if (!hold)
		return -EOPNOTSUPP;
	if (mck_detached(t))
		return -ECHILD;
	if (cap < t->npages)
		return -ENOBUFS;
	/* merge3 and the copier's binary search need D sorted and unique */
	for (size_t i = 0; i < nextra; i++)
		if (extra[i] >= t->npages || (i && extra[i] <= extra[i - 1]))
			return -EINVAL;
	rc = bg_get(t, hold, &bg);
	if (rc < 0)
		return rc;
	pthread_mutex_lock(&bg->mu);
	rc = bg->phase != BG_IDLE ? -EBUSY : 0;
	pthread_mutex_unlock(&bg->mu);
	if (rc < 0)
		return rc;
	/* phase is IDLE, so the copier is parked and these are ours */
	bg->staging = staging;
	bg->staging_pages = staging_pages;
	bg->max_gap = max_gap;
	bg->all_pages = flags & MCK_BG_ALL_PAGES;
	bg->populated = flags & MCK_BG_POPULATED;
	bg->extra = extra;
	bg->nextra = nextra;
	memset(&bg->stats, 0, sizeof(bg->stats));
	clock_gettime(CLOCK_MONOTONIC, &bg->instant);
	n = hold->freeze(t, pages, cap, arm, bg);
	if (n < 0)
		return n;
	pthread_mutex_lock(&bg->mu);
	bg->err = 0;
	bg->phase = BG_RUNNING;
	pthread_cond_broadcast(&bg->cv);
	if (stats)
		*stats = bg->stats;
	pthread_mutex_unlock(&bg->mu);
	return n;
}

int mck_bg_wait(struct mck_tracker *t, struct mck_bg_stats *stats)
{
	const struct mck_hold_ops *hold;
	struct mck_bg *bg;
	int rc;

	if (!t)
		return -EINVAL;
	hold = mck_tracker_hold(t);
	if (!hold)
		return -EOPNOTSUPP;
	/* the copier that would end the wait is in the parent */
	if (mck_detached(t))
		return -ECHILD;
	bg = hold->attached(t, &bg_hooks);
	if (!bg)
		return -EINVAL;
	pthread_mutex_lock(&bg->mu);
	while (bg->phase == BG_RUNNING)
		pthread_cond_wait(&bg->cv, &bg->mu);
	if (bg->phase == BG_IDLE) {
		rc = -EINVAL;
	} else {
		bg->phase = BG_IDLE;
		rc = bg->err;
		if (stats)
			*stats = bg->stats;
	}
	pthread_mutex_unlock(&bg->mu);
	return rc;
}
