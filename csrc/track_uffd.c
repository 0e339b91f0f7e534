/* track_uffd.c: the two userfaultfd write-protect backends.
 *
 * uffd-async (Linux >= 6.7): the kernel resolves write-protect faults itself
 * (UFFD_FEATURE_WP_ASYNC) by clearing the pte's uffd-wp bit, so a written page
 * is one whose bit is gone. PAGEMAP_SCAN with PM_SCAN_WP_MATCHING lists those
 * pages and sets the bit again under the page-table lock, page by page, so the
 * list and the re-arm are one step: no thread to run, no fault reaches us.
 *
 * uffd-sync (Linux >= 5.7): every first write to a protected page stops the
 * writer and queues a message; a handler thread records the page and lifts
 * the protection on that one page, which wakes the writer.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

/* ---- shared ------------------------------------------------------------- */

static int uffd_unregister(int fd, void *addr, size_t len)
{
	struct uffdio_range range = { .start = (uintptr_t)addr, .len = len };

	return ioctl(fd, UFFDIO_UNREGISTER, &range) < 0 ? -errno : 0;
}

/* The probe could not open a userfaultfd: say why, and what would fix it.
 * Returns 0 with the reason written, or -errno when the probe itself failed
 * (then there is no fact about the kernel to report). */
static int uffd_refused(const struct mck_features *f, char *reason, size_t len)
{
	int err = f->uffd_errno ? f->uffd_errno : EIO;

	if (f->uffd == MCK_PROBE_ERROR) {
		mck_reason(reason, len, "probing userfaultfd failed: %s", strerror(err));
		return -err;
	}
	switch (err) {
	case ENOSYS:
		mck_reason(reason, len, "kernel built without CONFIG_USERFAULTFD");
		break;
	case EPERM:
	case EACCES:
		/* mck_uffd_open already fell back to UFFD_USER_MODE_ONLY, so
		 * even that was refused (Linux < 5.11, or a seccomp/LSM policy) */
		mck_reason(reason, len,
			   "userfaultfd refused (%s) with vm.unprivileged_userfaultfd=%d: "
			   "run with CAP_SYS_PTRACE or set vm.unprivileged_userfaultfd=1",
			   strerror(err), f->unprivileged_userfaultfd);
		break;
	default:
		mck_reason(reason, len, "userfaultfd unavailable: %s", strerror(err));
		break;
	}
	return 0;
}

/* 1 if feature state s is OK; else 0 with `missing` as the reason, or -errno
 * if the probe of it failed. */
static int need(int s, int err, const char *missing, char *reason, size_t len)
{
	if (s == MCK_PROBE_OK)
		return 1;
	if (s == MCK_PROBE_ERROR) {
		err = err ? err : EIO;
		mck_reason(reason, len, "probe failed (%s): %s", strerror(err), missing);
		return -err;
	}
	mck_reason(reason, len, "%s", missing);
	return 0;
}

/* ---- uffd-async ----------------------------------------------------------- */

struct uffd_async {
	int uffd;
	int pagemap;
};

static int uffd_async_status(const struct mck_features *f, char *reason, size_t len)
{
	int rc;

	if (f->uffd != MCK_PROBE_OK)
		return uffd_refused(f, reason, len);
	rc = need(f->uffd_wp_async, f->uffd_errno,
		  "kernel lacks UFFD_FEATURE_WP_ASYNC (needs Linux >= 6.7)", reason, len);
	if (rc <= 0)
		return rc;
	rc = need(f->uffd_wp_unpopulated, f->uffd_errno,
		  "kernel lacks UFFD_FEATURE_WP_UNPOPULATED (needs Linux >= 6.4)", reason, len);
	if (rc <= 0)
		return rc;
	if (f->pagemap_scan != MCK_PROBE_OK) {
		/* the errno tells a kernel without the ioctl (ENOTTY/EINVAL)
		 * from a pagemap we may not open (EACCES, EPERM) */
		int err = f->pagemap_scan_errno ? f->pagemap_scan_errno : ENOTTY;

		mck_reason(reason, len, "PAGEMAP_SCAN on /proc/self/pagemap failed (%s): "
			   "needs Linux >= 6.7 and a readable pagemap", strerror(err));
		return f->pagemap_scan == MCK_PROBE_ERROR ? -err : 0;
	}
	mck_reason(reason, len, "userfaultfd WP_ASYNC + PAGEMAP_SCAN: exact at 4 KiB, "
		   "one ioctl lists and re-protects the written pages%s",
		   f->uffd_user_mode_only ? " (user-mode-only fd: fine here, the kernel "
		   "resolves async faults itself)" : "");
	return 1;
}

static int uffd_async_open(struct mck_tracker *t)
{
	struct uffd_async *a;
	bool registered = false;
	int rc;

	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->uffd = a->pagemap = -1;
	rc = mck_uffd_open(NULL);
	if (rc < 0)
		goto fail;
	a->uffd = rc;
	/* WP_UNPOPULATED makes the protect below also mark never-touched
	 * (pte_none) pages, which otherwise would be written unseen */
	rc = mck_uffd_api(a->uffd, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, NULL);
	if (rc < 0)
		goto fail;
	rc = mck_pagemap_open();
	if (rc < 0)
		goto fail;
	a->pagemap = rc;
	rc = mck_uffd_register_wp(a->uffd, t->addr, t->len);
	if (rc < 0)
		goto fail;
	registered = true;
	rc = mck_uffd_writeprotect(a->uffd, t->addr, t->len, true);
	if (rc < 0)
		goto fail;
	t->priv = a;
	return 0;
fail:
	if (registered)
		uffd_unregister(a->uffd, t->addr, t->len);
	if (a->pagemap >= 0)
		close(a->pagemap);
	if (a->uffd >= 0)
		close(a->uffd);
	free(a);
	return rc;
}

static int64_t uffd_async_collect(struct mck_tracker *t, uint64_t *out, size_t cap)
{
	struct uffd_async *a = t->priv;

	/* CHECK_WPASYNC makes the kernel refuse (EPERM) rather than silently
	 * report nothing if the range is no longer registered for async WP */
	return mck_pagemap_scan_indices(a->pagemap, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
					PAGE_IS_WRITTEN, t->addr, t->len, t->page_size,
					out, cap);
}

static void uffd_async_close(struct mck_tracker *t)
{
	struct uffd_async *a = t->priv;

	if (!a)
		return;
	/* unregister, not just close: a child forked meanwhile (a fork
	 * snapshot) holds the fd too, and the registration would outlive our
	 * close until the child exits, refusing the next tracker with EBUSY */
	uffd_unregister(a->uffd, t->addr, t->len);
	close(a->pagemap);
	close(a->uffd);
	free(a);
	t->priv = NULL;
}

static void uffd_async_forget(struct mck_tracker *t)
{
	struct uffd_async *a = t->priv;

	if (!a)
		return;
	/* no unregister: the fd's context is the parent's mm (see internal.h);
	 * closing our copy leaves the parent's registration as it is */
	close(a->pagemap);
	close(a->uffd);
	free(a);
	t->priv = NULL;
}

const struct mck_tracker_ops mck_uffd_async_ops = {
	.name = "uffd-async",
	.props = MCK_PROP_EXACT | MCK_PROP_KERNEL_WRITES | MCK_PROP_CONCURRENT,
	.status = uffd_async_status,
	.open = uffd_async_open,
	.collect = uffd_async_collect,
	.close = uffd_async_close,
	.forget = uffd_async_forget,
};

/* ---- uffd-sync ------------------------------------------------------------
 *
 * Registered in MISSING and WP mode, not WP alone. With WP alone, a page whose
 * pte does not exist cannot be protected (before WP_UNPOPULATED, Linux 6.4),
 * and a page whose pte is zapped later (MADV_DONTNEED, which is what
 * mck_region_discard does) loses its protection on every kernel: its next
 * write allocates a fresh writable page and no fault is raised. Measured on
 * 6.18 with WP_UNPOPULATED: a write after a discard and before the next
 * collect went unreported; on 6.1 every later write to that page would.
 * MISSING mode turns each of those into a fault we resolve ourselves:
 *  - a read installs a zero page already write-protected (UFFDIO_COPY with
 *    MODE_WP), so the first write still faults and nothing is reported for a
 *    read. (UFFDIO_ZEROPAGE would map the shared zero page without the uffd-wp
 *    bit, and a later write would copy it unseen; protecting it afterwards
 *    leaves a window for other threads.) The cost: a never-touched page that
 *    is only read gets a real page and a round trip to this thread.
 *  - a write is recorded and gets a writable zero-filled page.
 * It also spares populating the whole range at open on kernels without
 * WP_UNPOPULATED, and so works from Linux 5.7 on without asking for it.
 *
 * Why collect is exact with one mutex, taken by the handler around "set the
 * page's bit, make the page writable" and by collect around "drain the bitmap,
 * re-protect the pages drained": it keeps the invariant that a page is
 * writable only while its bit is set (between the drain and the re-protect,
 * only while it is in the drained set).
 * (Two bitmaps in fact: dirty, and writable, its subset the handler made
 * writable since the page was last protected. A pre-arm, for the background
 * capture, drains writable alone and protects those pages, leaving them
 * dirty; collect reports dirty and protects only writable. The invariant
 * holds for writable, and every page in writable is in dirty, so the
 * argument below is the same.)
 *
 * Take any store S to page p, and the collect C that follows it.
 *  - p was writable when S executed. Only the handler makes a page writable
 *    (un-protect, or a write-missing fill), and it set p's bit first, in the
 *    same critical section. That section came after the previous collect's
 *    (which would otherwise have drained the bit and re-protected p), so C
 *    drains the bit and reports p. And S happened before C re-protected p:
 *    UFFDIO_WRITEPROTECT flushes the TLBs before it returns, so no CPU can
 *    store through a stale writable entry after it, and C's caller copies
 *    only after C returns.
 *  - p was protected or absent when S executed. The writer sleeps in the
 *    kernel; S retires only after some handler section has set p's bit and
 *    made p writable. If that section precedes C, C reports p; if S then
 *    retires only after C re-protected p, S faults again and the next collect
 *    reports p as well (the one over-report: a write in flight across a
 *    collect counts in both epochs, which a checkpoint needs anyway, since
 *    C's copy may not hold it). If the section follows C, S belongs after C
 *    and the next collect reports it.
 * So every store is reported by the first collect whose copy could miss it.
 * Without the lock a handler could set p's bit before C drains and un-protect
 * p after C re-protects: p would stay writable with its bit clear, and every
 * later write to it would be lost (the test's shadow checkpoint catches that).
 *
 * Kernel writes (read(2) into the range) fault like user writes and are
 * resolved by the handler, except on a UFFD_USER_MODE_ONLY fd (what an
 * unprivileged process gets with vm.unprivileged_userfaultfd=0): there the
 * kernel gives up at once and the syscall fails with EFAULT.
 *
 * Nothing that holds the mutex may write into the range, or it waits on a
 * handler that waits on it: collect writes only to out[], which must not
 * lie in the tracked range. */

struct uffd_sync {
	int uffd;
	int stopfd; /* eventfd: a write tells the handler to return */
	uint8_t *addr;
	size_t len;
	size_t page_size;
	const uint8_t *zero; /* one page of zeros, the source of MISSING fills */
	pthread_t thread;
	pthread_mutex_t lock;
	struct mck_bitmap dirty;
	/* the pages the handler made writable since they were last protected:
	 * a subset of dirty, since a pre-arm (mck_bg_prearm) protects pages
	 * again without reporting them; collect re-protects only these */
	struct mck_bitmap writable;
	uint64_t *scratch; /* npages entries: the writable pages drained */
	/* a failure the handler met; collect returns it from then on */
	_Atomic int err;
	/* a capture hooked into the fault path (capture_bg.c, through
	 * mck_capture_hooks): set under lock, NULL until one attaches; the
	 * handler asks it about every write fault */
	const struct mck_capture_hooks *hooks;
	void *hooks_ctx;
};

static int uffd_sync_status(const struct mck_features *f, char *reason, size_t len)
{
	int rc;

	if (f->uffd != MCK_PROBE_OK)
		return uffd_refused(f, reason, len);
	rc = need(f->uffd_wp, f->uffd_errno,
		  "kernel lacks userfaultfd write-protect (needs Linux >= 5.7 "
		  "and an architecture with CONFIG_HAVE_ARCH_USERFAULTFD_WP)", reason, len);
	if (rc <= 0)
		return rc;
	mck_reason(reason, len, "userfaultfd write-protect with a handler thread: exact, "
		   "one round trip to the handler per first write to a page%s",
		   f->uffd_user_mode_only ? "; user-mode-only fd: read(2) and other kernel "
		   "writes into the range fail with EFAULT" : "");
	return 1;
}

/* EAGAIN means the mm is changing under a non-cooperative event (fork,
 * mremap); none is enabled here, but the kernel asks for a retry if so. */
static int writeprotect(int fd, void *addr, size_t len, bool protect)
{
	int rc;

	while ((rc = mck_uffd_writeprotect(fd, addr, len, protect)) == -EAGAIN)
		sched_yield();
	return rc;
}

static int fill(const struct uffd_sync *s, uint64_t page, bool protect)
{
	struct uffdio_copy copy = {
		.dst = page,
		.src = (uintptr_t)s->zero,
		.len = s->page_size,
		.mode = protect ? UFFDIO_COPY_MODE_WP : 0,
	};

	while (ioctl(s->uffd, UFFDIO_COPY, &copy) < 0) {
		if (errno != EAGAIN)
			return -errno;
		sched_yield();
	}
	return 0;
}

static void wake(int fd, uint64_t addr, size_t len)
{
	struct uffdio_range range = { .start = addr, .len = len };

	ioctl(fd, UFFDIO_WAKE, &range);
}

static void handle_fault(struct uffd_sync *s, const struct uffd_msg *m)
{
	uint64_t flags = m->arg.pagefault.flags;
	uint64_t page = m->arg.pagefault.address & ~(uint64_t)(s->page_size - 1);
	uint64_t base = (uintptr_t)s->addr;
	int rc, expected = 0;

	if (page < base || page - base >= s->len) {
		/* cannot happen (the kernel only reports registered ranges);
		 * waking lets the thread retry rather than sleep forever */
		wake(s->uffd, page, s->page_size);
		return;
	}
	if (!(flags & (UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_WRITE))) {
		rc = fill(s, page, true);
	} else {
		pthread_mutex_lock(&s->lock);
		/* a page of a background snapshot not copied yet: the writer
		 * sleeps on until the copier has copied it and un-protects it
		 * (uffd_sync_release); deciding under the lock orders this
		 * against the freeze that protected the page */
		if (s->hooks && s->hooks->defer(s->hooks_ctx, (page - base) / s->page_size)) {
			pthread_mutex_unlock(&s->lock);
			return;
		}
		mck_bitmap_set(&s->dirty, (size_t)((page - base) / s->page_size));
		mck_bitmap_set(&s->writable, (size_t)((page - base) / s->page_size));
		if (flags & UFFD_PAGEFAULT_FLAG_WP)
			rc = writeprotect(s->uffd, (void *)(uintptr_t)page, s->page_size, false);
		else
			rc = fill(s, page, false);
		pthread_mutex_unlock(&s->lock);
	}
	if (rc == 0)
		return; /* both ioctls woke the writer */
	if (rc == -EEXIST) {
		/* two threads missed on the same page and the other fill won:
		 * nothing woke this one, and its retry meets the page as the
		 * winner left it (a write to a protected one faults again) */
		wake(s->uffd, page, s->page_size);
		return;
	}
	/* The writer would fault again forever: give up tracking instead.
	 * Unregistering wakes every waiter and lets writes through; collect
	 * reports the error from now on, so nothing is silently lost. */
	atomic_compare_exchange_strong(&s->err, &expected, rc);
	uffd_unregister(s->uffd, s->addr, s->len);
	wake(s->uffd, page, s->page_size);
}

static void *uffd_sync_handler(void *arg)
{
	struct uffd_sync *s = arg;
	struct pollfd pfd[2] = {
		{ .fd = s->uffd, .events = POLLIN },
		{ .fd = s->stopfd, .events = POLLIN },
	};
	struct uffd_msg msgs[64];

	for (;;) {
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pfd[1].revents)
			break;
		if (pfd[0].revents & (POLLERR | POLLNVAL))
			break;
		/* drain every queued message in as few reads as possible */
		for (;;) {
			ssize_t n = read(s->uffd, msgs, sizeof(msgs));

			if (n < 0) {
				if (errno == EINTR)
					continue;
				/* EAGAIN: the fd is non-blocking and the
				 * queue is empty (the poll wake-up was for
				 * a message a woken writer withdrew) */
				break;
			}
			for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++)
				if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
					handle_fault(s, &msgs[i]);
			/* no fork/remap/remove/unmap events were asked for,
			 * so no other message needs an answer */
			if ((size_t)n < sizeof(msgs))
				break;
		}
	}
	return NULL;
}

/* A handler with every signal blocked: a process-directed signal must not
 * land on it, because a signal handler that wrote into the range would
 * fault and wait on the very thread it interrupted. */
static int start_handler(struct uffd_sync *s)
{
	sigset_t all, old;
	int rc;

	sigfillset(&all);
	rc = pthread_sigmask(SIG_SETMASK, &all, &old);
	if (rc)
		return -rc;
	rc = pthread_create(&s->thread, NULL, uffd_sync_handler, s);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -rc;
}

static void stop_handler(struct uffd_sync *s)
{
	uint64_t one = 1;

	while (write(s->stopfd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
	pthread_join(s->thread, NULL);
}

static int uffd_sync_open(struct mck_tracker *t)
{
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)t->addr, .len = t->len },
		.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
	};
	struct uffd_sync *s;
	bool bitmap = false, writable = false, mutex = false, registered = false, thread = false;
	void *zero;
	int rc;

	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->uffd = s->stopfd = -1;
	s->addr = t->addr;
	s->len = t->len;
	s->page_size = t->page_size;
	zero = mmap(NULL, t->page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (zero == MAP_FAILED) {
		rc = -errno;
		goto fail;
	}
	s->zero = zero;
	rc = mck_bitmap_init(&s->dirty, t->npages);
	if (rc < 0)
		goto fail;
	bitmap = true;
	rc = mck_bitmap_init(&s->writable, t->npages);
	if (rc < 0)
		goto fail;
	writable = true;
	/* calloc'd: its pages cost memory only once that many are drained */
	s->scratch = calloc(t->npages, sizeof(*s->scratch));
	if (!s->scratch) {
		rc = -ENOMEM;
		goto fail;
	}
	rc = -pthread_mutex_init(&s->lock, NULL);
	if (rc < 0)
		goto fail;
	mutex = true;
	rc = mck_uffd_open(NULL);
	if (rc < 0)
		goto fail;
	s->uffd = rc;
	/* not WP_UNPOPULATED, even where offered: MISSING mode covers absent
	 * pages, and its markers would only turn those faults into the same
	 * MISSING faults (measured on 6.18) */
	rc = mck_uffd_api(s->uffd, UFFD_FEATURE_PAGEFAULT_FLAG_WP, NULL);
	if (rc < 0)
		goto fail;
	s->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->stopfd < 0) {
		rc = -errno;
		goto fail;
	}
	/* One UFFDIO_REGISTER/WRITEPROTECT over the whole range: on 6.1 a
	 * UFFDIO_WRITEPROTECT range must lie in one VMA, and the range is one
	 * mapping (region.c keeps it apart with guard pages). A caller that
	 * mprotect()s part of it splits the VMA and would break that. */
	if (ioctl(s->uffd, UFFDIO_REGISTER, &reg) < 0) {
		rc = -errno;
		goto fail;
	}
	registered = true;
	if ((reg.ioctls & (1ULL << _UFFDIO_COPY)) == 0 ||
	    (reg.ioctls & (1ULL << _UFFDIO_WRITEPROTECT)) == 0) {
		/* a mapping that is not anonymous private memory (shmem,
		 * hugetlbfs) on a kernel that cannot protect it */
		rc = -EOPNOTSUPP;
		goto fail;
	}
	/* the handler runs before the protect: from the protect on, any
	 * thread's first write needs it */
	rc = start_handler(s);
	if (rc < 0)
		goto fail;
	thread = true;
	rc = writeprotect(s->uffd, t->addr, t->len, true);
	if (rc < 0)
		goto fail;
	t->priv = s;
	return 0;
fail:
	/* unregister first: it wakes any writer already waiting, so the
	 * handler may stop without leaving one asleep */
	if (registered)
		uffd_unregister(s->uffd, t->addr, t->len);
	if (thread)
		stop_handler(s);
	if (s->stopfd >= 0)
		close(s->stopfd);
	if (s->uffd >= 0)
		close(s->uffd);
	if (mutex)
		pthread_mutex_destroy(&s->lock);
	if (bitmap)
		mck_bitmap_free(&s->dirty);
	if (writable)
		mck_bitmap_free(&s->writable);
	free(s->scratch);
	if (s->zero)
		munmap((void *)s->zero, t->page_size);
	free(s);
	return rc;
}

/* By the invariant above, only the pages whose bits were just drained can be
 * writable: re-protecting those is enough, and costs nothing when nothing was
 * written (a whole 1 GiB range costs ~30 ms here). One ioctl per run of
 * adjacent pages, or one over the whole range when the runs are so many that
 * their ioctls would cost more than its walk. */
/* Measured on 6.18: a one-page ioctl ~1.2 us, the whole-range walk ~0.12 us
 * a page, so break-even near one run per 10 pages; 16 leaves room for the
 * TLB-shootdown IPIs each ioctl costs when writers run on other CPUs. */
#define UFFD_SYNC_PAGES_PER_RUN 16

static int reprotect(struct uffd_sync *s, const uint64_t *pages, size_t n)
{
	size_t runs = 0, first;
	int rc;

	for (size_t i = 0; i < n; i++)
		runs += i == 0 || pages[i] != pages[i - 1] + 1;
	if (runs > s->len / s->page_size / UFFD_SYNC_PAGES_PER_RUN)
		return writeprotect(s->uffd, s->addr, s->len, true);
	for (size_t i = 0; i < n; i = first) {
		first = i + 1;
		while (first < n && pages[first] == pages[first - 1] + 1)
			first++;
		rc = writeprotect(s->uffd, s->addr + pages[i] * s->page_size,
				  (first - i) * s->page_size, true);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Put back what a collect drained (n dirty pages in out, w writable ones in
 * s->scratch) when re-protecting them failed: some may still be writable,
 * so their bits must stay set, or their next writes would go unseen.
 * Called with s->lock held. */
static void undrain(struct uffd_sync *s, const uint64_t *out, size_t n, size_t w)
{
	for (size_t i = 0; i < n; i++)
		mck_bitmap_set(&s->dirty, (size_t)out[i]);
	for (size_t i = 0; i < w; i++)
		mck_bitmap_set(&s->writable, (size_t)s->scratch[i]);
}

static int64_t uffd_sync_collect(struct mck_tracker *t, uint64_t *out, size_t cap)
{
	struct uffd_sync *s = t->priv;
	size_t n, w;
	int64_t rc;

	if (cap < t->npages)
		return -ENOBUFS;
	pthread_mutex_lock(&s->lock);
	rc = atomic_load(&s->err);
	if (rc < 0)
		goto out;
	n = mck_bitmap_drain(&s->dirty, out);
	/* only the writable ones need protecting: a pre-arm protected the
	 * others already (without one, these are the same pages) */
	w = mck_bitmap_drain(&s->writable, s->scratch);
	rc = reprotect(s, s->scratch, w);
	if (rc < 0) {
		undrain(s, out, n, w);
		goto out;
	}
	rc = (int64_t)n;
out:
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/* What close and forget both free: this process's own fds and memory. */
static void uffd_sync_free(struct mck_tracker *t, struct uffd_sync *s)
{
	close(s->stopfd);
	close(s->uffd);
	mck_bitmap_free(&s->dirty);
	mck_bitmap_free(&s->writable);
	free(s->scratch);
	munmap((void *)s->zero, t->page_size);
	free(s);
	t->priv = NULL;
}

static void uffd_sync_close(struct mck_tracker *t)
{
	struct uffd_sync *s = t->priv;

	if (!s)
		return;
	/* a background copy first: it needs the handler and the registration
	 * to release the writers waiting on it, and its staging stays a
	 * complete snapshot */
	if (s->hooks)
		s->hooks->destroy(s->hooks_ctx);
	/* unregister, and before stopping the handler: it wakes writers
	 * still waiting on a fault, which then write through the now plain
	 * range; and a child forked meanwhile holds the fd too, so closing
	 * alone would leave the range registered with no handler, and every
	 * later write would sleep until the child exits */
	uffd_unregister(s->uffd, t->addr, t->len);
	stop_handler(s);
	pthread_mutex_destroy(&s->lock);
	uffd_sync_free(t, s);
}

static void uffd_sync_forget(struct mck_tracker *t)
{
	struct uffd_sync *s = t->priv;

	if (!s)
		return;
	/* Of what close does, only what is this process's own: no unregister
	 * (it would act on the parent's mm), no write to stopfd (the eventfd
	 * is shared: it would stop the parent's handler), no join (the handler
	 * and the copier are the parent's threads), no mutex destroy (one may
	 * have been held at the fork). */
	if (s->hooks)
		s->hooks->forget(s->hooks_ctx);
	uffd_sync_free(t, s);
}

/* ---- uffd-sync: holding writers for a capture (mck_hold_ops, internal.h) -- */

static int64_t uffd_sync_freeze(struct mck_tracker *t, uint64_t *out, size_t cap,
				mck_hold_arm_fn arm, void *ctx)
{
	struct uffd_sync *s = t->priv;
	size_t n, drained, w;
	int64_t rc;

	if (cap < t->npages)
		return -ENOBUFS;
	/* the same critical section as collect's: a page is writable only
	 * while its bit is set, and arm() protects the pages drained before
	 * any fault on them is resolved, so no write slips between the
	 * drain and the protect, and none after it escapes the copy */
	pthread_mutex_lock(&s->lock);
	rc = atomic_load(&s->err);
	if (rc < 0)
		goto out;
	n = drained = mck_bitmap_drain(&s->dirty, out);
	w = mck_bitmap_drain(&s->writable, s->scratch);
	rc = arm(ctx, out, &n, s->scratch, w);
	if (rc < 0) {
		/* arm() widens out[] only once nothing can fail any more */
		undrain(s, out, drained, w);
		goto out;
	}
	rc = (int64_t)n;
out:
	pthread_mutex_unlock(&s->lock);
	return rc;
}

static int64_t uffd_sync_prearm(struct mck_tracker *t, mck_hold_protect_fn protect, int64_t gap)
{
	struct uffd_sync *s = t->priv;
	size_t w;
	int64_t rc;

	/* protect the writable pages but leave their dirty bits: the next
	 * collect still reports them, and a write since faults again, which
	 * makes the page writable (and so protected by that collect) again */
	pthread_mutex_lock(&s->lock);
	rc = atomic_load(&s->err);
	if (rc < 0)
		goto out;
	w = mck_bitmap_drain(&s->writable, s->scratch);
	rc = protect(t, s->scratch, w, gap);
	if (rc < 0) {
		for (size_t i = 0; i < w; i++)
			mck_bitmap_set(&s->writable, (size_t)s->scratch[i]);
		goto out;
	}
	rc = (int64_t)w;
out:
	pthread_mutex_unlock(&s->lock);
	return rc;
}

static void *uffd_sync_attached(struct mck_tracker *t, const struct mck_capture_hooks *hooks)
{
	struct uffd_sync *s = t->priv;

	/* set only by the caller's side (the capture's first use, close),
	 * never by the handler: the caller reads it without the lock */
	return s->hooks == hooks ? s->hooks_ctx : NULL;
}

static void uffd_sync_attach(struct mck_tracker *t, const struct mck_capture_hooks *hooks,
			     void *ctx)
{
	struct uffd_sync *s = t->priv;

	pthread_mutex_lock(&s->lock);
	s->hooks = hooks;
	s->hooks_ctx = hooks ? ctx : NULL;
	pthread_mutex_unlock(&s->lock);
}

static int uffd_sync_protect(struct mck_tracker *t, uint64_t page, size_t npages, bool protect)
{
	struct uffd_sync *s = t->priv;

	return writeprotect(s->uffd, s->addr + page * s->page_size, npages * s->page_size, protect);
}

static int uffd_sync_release(struct mck_tracker *t, uint64_t page)
{
	struct uffd_sync *s = t->priv;
	int rc, expected = 0;

	pthread_mutex_lock(&s->lock);
	mck_bitmap_set(&s->dirty, (size_t)page);
	mck_bitmap_set(&s->writable, (size_t)page);
	/* un-protecting wakes every writer waiting in the range: a writer
	 * whose fault was a missing-page one retries, faults again and is
	 * resolved by the handler as usual */
	rc = writeprotect(s->uffd, s->addr + page * s->page_size, s->page_size, false);
	if (rc < 0) {
		/* as in the handler: give up tracking rather than leave the
		 * writer asleep; collect reports the error from now on */
		atomic_compare_exchange_strong(&s->err, &expected, rc);
		uffd_unregister(s->uffd, s->addr, s->len);
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

static const struct mck_hold_ops uffd_sync_hold = {
	.freeze = uffd_sync_freeze,
	.prearm = uffd_sync_prearm,
	.protect = uffd_sync_protect,
	.release = uffd_sync_release,
	.attached = uffd_sync_attached,
	.attach = uffd_sync_attach,
};

const struct mck_tracker_ops mck_uffd_sync_ops = {
	.name = "uffd-sync",
	.props = MCK_PROP_EXACT | MCK_PROP_KERNEL_WRITES | MCK_PROP_CONCURRENT,
	.caps = MCK_CAP_HOLD_WRITERS,
	.hold = &uffd_sync_hold,
	.status = uffd_sync_status,
	.open = uffd_sync_open,
	.collect = uffd_sync_collect,
	.close = uffd_sync_close,
	.forget = uffd_sync_forget,
};
