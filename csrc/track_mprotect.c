/* track_mprotect.c: PROT_READ and a SIGSEGV handler, the portable way.
 *
 * The range is made read-only; the first write to a page faults, and a
 * process-wide SIGSEGV handler records the page in its tracker's bitmap and
 * makes that one page writable again, so later writes run at full speed.
 * collect re-protects the whole range and drains the bitmap.
 *
 * Exact, and exact with concurrent writers (see the protocol below). Kernel
 * writes are the weakness: read(2), recv(2) and the like into a protected page
 * fail with EFAULT instead of faulting into the handler, so no
 * MCK_PROP_KERNEL_WRITES. Other limits:
 *  - a page dropped with MADV_DONTNEED reads as zero afterwards without any
 *    fault: discards must be recorded by the caller;
 *  - every isolated writable page is a VMA, and vm.max_map_count (65530 by
 *    default) caps them: when a one-page mprotect fails with ENOMEM the handler
 *    unprotects (and reports) an ever larger aligned block instead;
 *  - a SIGSEGV handler installed after ours that does not chain to it turns the
 *    next tracked write into a crash, and a thread that blocks SIGSEGV (or
 *    runs a handler with it in sa_mask) dies on a tracked write: the kernel
 *    forces SIG_DFL on a blocked synchronous fault;
 *  - in a huge-page region the one-page mprotect splits the huge page, and
 *    each first write costs a signal and an mprotect (several microseconds).
 *
 * The handler touches only static memory and the trackers' own allocations,
 * calls only async-signal-safe functions (mprotect, sigaction, signal,
 * pthread_sigmask, clock_gettime, raise; and sched_yield, a bare system call)
 * and keeps errno as it found it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define MP_SLOTS 64
/* How long a closed tracker's range still excuses a write fault: see mp_claim */
#define MP_TOMBSTONE_NS 1000000000LL

/* Epoch protocol between the handler and collect (Dekker-style; every access
 * to collecting and inflight is seq_cst).
 *
 *   handler: for (;;) { inflight++; if (!collecting) break; inflight--; wait; }
 *            set bit; mprotect(page, RW); inflight--;
 *   collect: collecting = 1; wait until inflight == 0;
 *            mprotect(range, READ); drain bitmap; collecting = 0;
 *
 * A write reaches memory only while its page is writable, and a page becomes
 * writable only through a handler that set its bit first, while counted in
 * inflight. Store-then-load on both sides means that either the handler sees
 * collecting == 1 and backs off, or collect sees inflight > 0 and waits for it:
 * no handler is between its gate and its decrement while collect re-protects
 * and drains. So every writable window of a page either
 *  - opened before collect's re-protect: its bit was set before the drain, so
 *    this epoch reports the page, and the re-protect closes the window (any
 *    later write faults again and lands in the next epoch); or
 *  - opens after collecting = 0: the handler records into the new epoch's
 *    bitmap and the page is reported by the next collect.
 * A handler that faulted during collect waits at the gate, and unprotects only
 * after the re-protect, recording into the new epoch. A handler that set its
 * bit just before collect started may report a page whose write, retried after
 * the re-protect, faults once more: an early report, never a lost one.
 */
struct mp_priv {
	uintptr_t start, end; /* fixed at open */
	size_t page_size;
	struct mck_bitmap dirty;
	_Atomic int collecting;
	_Atomic unsigned inflight;
	pthread_mutex_t collect_lock; /* two collects at once would break the epochs */
	int slot;
};

/* A slot keeps its range after close (a tombstone), until it is reused. The
 * range is also readable without the priv, so a handler filters on it without
 * dereferencing a priv that close may be freeing. */
struct mp_slot {
	_Atomic uintptr_t start, end;
	_Atomic(struct mp_priv *) priv;
	_Atomic unsigned users;      /* handlers holding priv: close waits for zero */
	_Atomic int64_t closed_ns;   /* CLOCK_MONOTONIC at close; 0 while open or unused */
};

static struct mp_slot mp_slots[MP_SLOTS];
static pthread_mutex_t mp_lock = PTHREAD_MUTEX_INITIALIZER; /* open and close */
static unsigned mp_nopen;              /* under mp_lock */
/* Written under mp_lock and only while our handler is not installed (before
 * sigaction installs it), so the handler reads a settled copy. */
static struct sigaction mp_prev;

static int64_t mp_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void mp_mark(struct mck_bitmap *b, size_t first, size_t last)
{
	for (size_t i = first; i < last; i++)
		mck_bitmap_set(b, i);
}

/* Record the page and make it writable. ENOMEM means the VMA count hit
 * vm.max_map_count (or the range is gone): unprotecting a larger aligned
 * block absorbs neighbouring writable pages into one VMA, down to the whole
 * range, which is one VMA again. The extra pages are reported as written. */
static int mp_unprotect(struct mp_priv *p, size_t page)
{
	size_t npages = (p->end - p->start) / p->page_size;
	static const unsigned shift[] = { 0, 4, 9, 15 };

	for (size_t s = 0; s <= MCK_ARRAY_SIZE(shift); s++) {
		size_t first = 0, last = npages;

		if (s < MCK_ARRAY_SIZE(shift)) {
			size_t block = (size_t)1 << shift[s];

			first = page & ~(block - 1);
			last = first + block < npages ? first + block : npages;
		}
		mp_mark(&p->dirty, first, last);
		if (mprotect((void *)(p->start + first * p->page_size),
			     (last - first) * p->page_size, PROT_READ | PROT_WRITE) == 0)
			return 0;
		if (errno != ENOMEM)
			break;
	}
	return -errno;
}

static int mp_record(struct mp_priv *p, uintptr_t addr)
{
	int rc;

	for (;;) {
		atomic_fetch_add(&p->inflight, 1);
		if (!atomic_load(&p->collecting))
			break;
		atomic_fetch_sub(&p->inflight, 1);
		while (atomic_load(&p->collecting))
			sched_yield();
	}
	rc = mp_unprotect(p, (addr - p->start) / p->page_size);
	atomic_fetch_sub(&p->inflight, 1);
	return rc;
}

/* 1 if the fault was ours and the write may be retried, 0 if it belongs to
 * whoever had SIGSEGV before us. */
static int mp_claim(uintptr_t addr)
{
	int stale = 0;

	for (int i = 0; i < MP_SLOTS; i++) {
		struct mp_slot *s = &mp_slots[i];
		struct mp_priv *p;

		if (addr < atomic_load(&s->start) || addr >= atomic_load(&s->end))
			continue;
		atomic_fetch_add(&s->users, 1);
		p = atomic_load(&s->priv);
		if (p && addr >= p->start && addr < p->end) {
			int rc = mp_record(p, addr);

			atomic_fetch_sub(&s->users, 1);
			return rc == 0;
		}
		atomic_fetch_sub(&s->users, 1);
		/* A write that faulted just before its tracker's close made the
		 * range writable reaches us after the tracker is gone: retrying
		 * it succeeds. Only for a while, so that a page the program
		 * itself protects later still crashes as it should. A live
		 * tracker over the same page wins, hence the scan goes on. */
		int64_t closed = atomic_load(&s->closed_ns);

		if (closed && mp_now_ns() - closed < MP_TOMBSTONE_NS)
			stale = 1;
	}
	return stale;
}

/* Hand the signal to whoever had it before, as the kernel would have. */
static void mp_chain(int sig, siginfo_t *si, void *uctx)
{
	const struct sigaction *prev = &mp_prev;
	bool from_kernel = si->si_code > 0;

	if (!(prev->sa_flags & SA_SIGINFO) && prev->sa_handler == SIG_IGN) {
		/* the kernel does not let a fault be ignored: it kills */
		if (!from_kernel)
			return;
		signal(sig, SIG_DFL);
		return;
	}
	if (!(prev->sa_flags & SA_SIGINFO) && prev->sa_handler == SIG_DFL) {
		/* returning re-runs the faulting instruction, which now meets
		 * the default action: the core dump shows the real fault */
		signal(sig, SIG_DFL);
		if (!from_kernel)
			raise(sig);
		return;
	}

	/* the mask the previous handler asked for: ours adds nothing to the
	 * interrupted code's (SA_NODEFER, empty sa_mask) */
	sigset_t mask = prev->sa_mask, old;

	if (!(prev->sa_flags & SA_NODEFER))
		sigaddset(&mask, sig);
	pthread_sigmask(SIG_BLOCK, &mask, &old);
	if (prev->sa_flags & SA_SIGINFO)
		prev->sa_sigaction(sig, si, uctx);
	else
		prev->sa_handler(sig);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void mp_on_segv(int sig, siginfo_t *si, void *uctx)
{
	int saved_errno = errno;

	/* our protection only ever yields SEGV_ACCERR; kill(2) and friends
	 * carry si_code <= 0 and are never ours */
	if (!(si->si_code == SEGV_ACCERR && mp_claim((uintptr_t)si->si_addr)))
		mp_chain(sig, si, uctx);
	errno = saved_errno;
}

/* Under mp_lock. */
static int mp_install(void)
{
	struct sigaction sa = { 0 }, cur;

	/* SA_NODEFER: a tracked write made inside another signal handler that
	 * interrupted this one must fault into us again, not meet a blocked
	 * SIGSEGV (fatal). SA_ONSTACK: a previous handler that catches stack
	 * overflows needs the alternate stack; we cannot switch to it later. */
	sa.sa_sigaction = mp_on_segv;
	sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	/* read the previous action before ours can run and chain to it */
	if (sigaction(SIGSEGV, NULL, &cur) < 0)
		return -errno;
	/* still ours (a close found another handler on top, and that one
	 * has since gone): mp_prev already holds what came before us */
	if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == mp_on_segv)
		return 0;
	mp_prev = cur;
	if (sigaction(SIGSEGV, &sa, NULL) < 0)
		return -errno;
	return 0;
}

/* Under mp_lock. Restore only if ours is still the installed one: whoever
 * installed on top of us may chain to us, and must keep working. */
static void mp_uninstall(void)
{
	struct sigaction cur;

	if (sigaction(SIGSEGV, NULL, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) &&
	    cur.sa_sigaction == mp_on_segv)
		sigaction(SIGSEGV, &mp_prev, NULL);
}

/* Under mp_lock: a never-used slot, else the oldest tombstone. */
static int mp_pick_slot(uintptr_t start, uintptr_t end)
{
	int best = -1;
	int64_t best_closed = INT64_MAX;

	for (int i = 0; i < MP_SLOTS; i++) {
		struct mp_slot *s = &mp_slots[i];
		struct mp_priv *p = atomic_load(&s->priv);
		int64_t closed = atomic_load(&s->closed_ns);

		if (p) {
			if (start < p->end && p->start < end)
				return -EBUSY; /* one tracker per page */
			continue;
		}
		if (closed < best_closed) {
			best = i;
			best_closed = closed;
		}
	}
	/* EMFILE: the closest errno to "too many trackers open" */
	return best < 0 ? -EMFILE : best;
}

static int mp_open(struct mck_tracker *t)
{
	struct mp_priv *p;
	struct mp_slot *s = NULL;
	int rc, slot = -1;

	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->start = (uintptr_t)t->addr;
	p->end = p->start + t->len;
	p->page_size = t->page_size;
	rc = mck_bitmap_init(&p->dirty, t->npages);
	if (rc < 0)
		goto fail_free;
	rc = pthread_mutex_init(&p->collect_lock, NULL);
	if (rc) {
		rc = -rc;
		goto fail_bitmap;
	}

	pthread_mutex_lock(&mp_lock);
	slot = mp_pick_slot(p->start, p->end);
	if (slot < 0) {
		rc = slot;
		goto fail_unlock;
	}
	if (mp_nopen == 0) {
		rc = mp_install();
		if (rc < 0)
			goto fail_unlock;
	}
	/* published before the range is protected: from the first fault on,
	 * the handler finds it */
	s = &mp_slots[slot];
	p->slot = slot;
	atomic_store(&s->start, p->start);
	atomic_store(&s->end, p->end);
	atomic_store(&s->closed_ns, 0);
	atomic_store(&s->priv, p);
	mp_nopen++;
	if (mprotect(t->addr, t->len, PROT_READ) < 0) {
		rc = -errno;
		goto fail_unpublish;
	}
	pthread_mutex_unlock(&mp_lock);
	t->priv = p;
	return 0;

fail_unpublish:
	/* mprotect may have protected part of the range before failing */
	mprotect(t->addr, t->len, PROT_READ | PROT_WRITE);
	atomic_store(&s->closed_ns, mp_now_ns());
	atomic_store(&s->priv, NULL);
	while (atomic_load(&s->users))
		sched_yield();
	if (--mp_nopen == 0)
		mp_uninstall();
fail_unlock:
	pthread_mutex_unlock(&mp_lock);
	pthread_mutex_destroy(&p->collect_lock);
fail_bitmap:
	mck_bitmap_free(&p->dirty);
fail_free:
	free(p);
	return rc;
}

static int64_t mp_collect(struct mck_tracker *t, uint64_t *out, size_t cap)
{
	struct mp_priv *p = t->priv;
	uintptr_t o = (uintptr_t)out;
	sigset_t all, old;
	int64_t n;

	if (cap < t->npages)
		return -ENOBUFS;
	/* the drain would fault on out[] and wait for itself forever */
	if (o < p->end && o + t->npages * sizeof(*out) > p->start)
		return -EINVAL;
	/* So would a signal handler that interrupts this collect and writes to
	 * the range: its fault waits at the gate this thread holds shut. Keep
	 * asynchronous signals out for the few milliseconds. */
	sigfillset(&all);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGILL);
	sigdelset(&all, SIGFPE);
	sigdelset(&all, SIGTRAP);
	pthread_mutex_lock(&p->collect_lock);
	pthread_sigmask(SIG_BLOCK, &all, &old);

	atomic_store(&p->collecting, 1);
	while (atomic_load(&p->inflight))
		sched_yield();
	/* One call over the whole range rather than one per dirty run: its
	 * cost goes with the VMAs it merges back (one per run of unprotected
	 * pages), not with the pages, and a range that is all read-only
	 * already costs nothing. Measured on 1 GiB: per-run calls were as
	 * fast at 0.1% dirty and twice as slow from 1% up. */
	if (mprotect(t->addr, t->len, PROT_READ) < 0) {
		/* bits stay set, so the next collect still reports them */
		n = -errno;
		goto out;
	}
	n = (int64_t)mck_bitmap_drain(&p->dirty, out);
out:
	atomic_store(&p->collecting, 0);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_mutex_unlock(&p->collect_lock);
	return n;
}

static void mp_close(struct mck_tracker *t)
{
	struct mp_priv *p = t->priv;
	struct mp_slot *s;

	if (!p)
		return;
	s = &mp_slots[p->slot];
	pthread_mutex_lock(&mp_lock);
	/* writable before unpublished, so no write faults after the handler
	 * has stopped recognising the range (except the stragglers the
	 * tombstone excuses) */
	mprotect(t->addr, t->len, PROT_READ | PROT_WRITE);
	atomic_store(&s->closed_ns, mp_now_ns());
	atomic_store(&s->priv, NULL);
	while (atomic_load(&s->users))
		sched_yield();
	if (--mp_nopen == 0)
		mp_uninstall();
	pthread_mutex_unlock(&mp_lock);
	pthread_mutex_destroy(&p->collect_lock);
	mck_bitmap_free(&p->dirty);
	free(p);
	t->priv = NULL;
}

/* In a fork child: everything here is the child's own (its mm, its signal
 * disposition, its copy of the slots), so it undoes what close undoes, but
 * without waiting on what threads of the parent may have held at the fork:
 * mp_lock (try it; if taken, leave the slot published and p allocated, a
 * few bytes lost in the child), a handler's users count, collect_lock. */
static void mp_forget(struct mck_tracker *t)
{
	struct mp_priv *p = t->priv;
	struct mp_slot *s;

	if (!p)
		return;
	t->priv = NULL;
	/* the child's copy of the arena is its own memory, untracked from now */
	mprotect(t->addr, t->len, PROT_READ | PROT_WRITE);
	if (pthread_mutex_trylock(&mp_lock) != 0)
		return;
	s = &mp_slots[p->slot];
	atomic_store(&s->closed_ns, mp_now_ns());
	atomic_store(&s->priv, NULL);
	if (--mp_nopen == 0)
		mp_uninstall();
	pthread_mutex_unlock(&mp_lock);
	if (atomic_load(&s->users) == 0) {
		mck_bitmap_free(&p->dirty);
		free(p);
	}
}

static int mp_status(const struct mck_features *f, char *reason, size_t len)
{
	(void)f;
	mck_reason(reason, len, "mprotect(PROT_READ) and a SIGSEGV handler: POSIX, always there");
	return 1;
}

const struct mck_tracker_ops mck_mprotect_ops = {
	.name = "mprotect",
	.props = MCK_PROP_EXACT | MCK_PROP_CONCURRENT,
	.status = mp_status,
	.open = mp_open,
	.collect = mp_collect,
	.close = mp_close,
	.forget = mp_forget,
};
