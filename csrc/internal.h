/* internal.h: what the core's files share and the public header does not show. */
#ifndef MEMCKPT_INTERNAL_H
#define MEMCKPT_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/types.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>

#include "memckpt.h"

/* ---- kernel UAPI newer than the build machine's headers (6.1) ------------
 * Values from the kernel's include/uapi/linux/{userfaultfd,fs}.h
 * (Documentation/admin-guide/mm/pagemap.rst); each guarded so that newer
 * headers win. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

#ifndef PAGEMAP_SCAN
struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};

struct pm_scan_arg {
	__u64 size;
	__u64 flags;
	__u64 start;
	__u64 end;
	__u64 walk_end;
	__u64 vec;
	__u64 vec_len;
	__u64 max_pages;
	__u64 category_inverted;
	__u64 category_mask;
	__u64 category_anyof_mask;
	__u64 return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)
#endif

#define MCK_PM_SOFT_DIRTY (1ULL << 55) /* /proc/pid/pagemap entry bit */

/* ---- one ops struct per dirty-tracking backend ----------------------------
 * Adding a backend: one track_*.c file defining its ops, and one row in the
 * table in tracker.c. */
struct mck_tracker;

struct mck_tracker_ops {
	const char *name;
	unsigned props; /* enum mck_backend_props */
	/* 1 available, 0 unavailable (reason written), -errno probe failure */
	int (*status)(const struct mck_features *f, char *reason, size_t len);
	/* set t->priv; start tracking [t->addr, t->addr + t->len) */
	int (*open)(struct mck_tracker *t);
	/* write sorted page indices to out, re-arm in the same step */
	int64_t (*collect)(struct mck_tracker *t, uint64_t *out, size_t cap);
	void (*close)(struct mck_tracker *t);
	/* close in a child of fork() (see mck_tracker_detached): free t->priv
	 * and close this process's fds, and nothing else. A uffd's context is
	 * the opener's mm, so an ioctl through the inherited fd (unregister,
	 * protect) would act on the parent's range; the eventfds are shared
	 * with the parent's threads; the threads themselves, and whoever held
	 * a mutex at the fork, do not exist here. */
	void (*forget)(struct mck_tracker *t);
};

struct mck_tracker {
	const struct mck_tracker_ops *ops;
	int backend;
	uint8_t *addr;
	size_t len;
	size_t npages;
	size_t page_size;
	void *priv;
	/* who opened it: see mck_tracker_detached (tracker.c) */
	pid_t owner;
	unsigned long fork_gen;
};

/* tracker.c: true in any process but the one that opened t (a child of
 * fork()): there every entry point refuses with -ECHILD and close forgets. */
bool mck_detached(const struct mck_tracker *t);

extern const struct mck_tracker_ops mck_uffd_async_ops;
extern const struct mck_tracker_ops mck_uffd_sync_ops;
extern const struct mck_tracker_ops mck_soft_dirty_ops;
extern const struct mck_tracker_ops mck_mprotect_ops;
extern const struct mck_tracker_ops mck_compare_ops;

/* ---- background capture: capture_bg.c <-> track_uffd.c (uffd-sync) -------
 * capture_bg.c owns the copy (page states, copier thread); track_uffd.c owns
 * the fd, the handler and the lock that orders faults against collects. */
struct mck_bg;

/* track_uffd.c: with the tracker's lock held, drain the dirty bitmap into
 * out[] (D) and the writable one (the pages of D not protected: all of D
 * unless a pre-arm ran) and call arm(bg, out, &n, writable, w), which
 * protects the writable pages and arms the copy (and may widen out[] and n,
 * to every page); if arm fails, the bits drained are set again. Returns n or
 * -errno. */
int64_t mck_uffd_sync_freeze(struct mck_tracker *t, uint64_t *out, size_t cap,
			     int (*arm)(struct mck_bg *, uint64_t *, size_t *, const uint64_t *, size_t),
			     struct mck_bg *bg);
/* track_uffd.c: with the lock held, drain the writable bitmap and call
 * protect(t, pages, w, gap) on it, leaving the dirty bits: the pages are still
 * reported by the next collect, but no longer need protecting in it. Returns
 * w or -errno (the bits set again). */
int64_t mck_uffd_sync_prearm(struct mck_tracker *t,
			     int (*protect)(struct mck_tracker *, const uint64_t *, size_t, int64_t),
			     int64_t gap);
/* track_uffd.c: the background copy of this tracker (NULL: none yet), and
 * setting it (the tracker frees it at close, after mck_bg_destroy). */
struct mck_bg *mck_uffd_sync_bg(struct mck_tracker *t);
void mck_uffd_sync_set_bg(struct mck_tracker *t, struct mck_bg *bg);
/* track_uffd.c: (un)protect [page, page + npages) of the range, retrying EAGAIN. */
int mck_uffd_sync_protect(struct mck_tracker *t, uint64_t page, size_t npages, bool protect);
/* track_uffd.c: a waiting writer's page is copied: record it as written
 * (next epoch) and un-protect it, which wakes the writer. Takes the lock. */
int mck_uffd_sync_release(struct mck_tracker *t, uint64_t page);
/* capture_bg.c, called by the handler with the lock held, for a write fault
 * on page (index in the range): true if the page awaits its copy, so the
 * writer must sleep on (the copier releases it); false to resolve as usual. */
bool mck_bg_defer(struct mck_bg *bg, uint64_t page);
/* capture_bg.c, called by close before unregistering: finish the copy
 * (releasing every waiter), stop the copier thread, free. */
void mck_bg_destroy(struct mck_bg *bg);
/* capture_bg.c, called by forget in a fork child: free bg's memory; no
 * join (the copier is not in this process), no mutex or cond destroyed
 * (one may have been held at the fork). */
void mck_bg_forget(struct mck_bg *bg);

/* ---- helpers shared by the backends (util.c) ----------------------------- */

/* A page bitmap whose bits may be set from any thread or signal handler. */
struct mck_bitmap {
	_Atomic uint64_t *words;
	size_t nbits;
};

int mck_bitmap_init(struct mck_bitmap *b, size_t nbits);
void mck_bitmap_free(struct mck_bitmap *b);
static inline void mck_bitmap_set(struct mck_bitmap *b, size_t bit)
{
	atomic_fetch_or_explicit(&b->words[bit / 64], 1ULL << (bit % 64),
				 memory_order_relaxed);
}
/* Move the set bits, in order, to out[] as indices and clear them. */
size_t mck_bitmap_drain(struct mck_bitmap *b, uint64_t *out);

/* Open a userfaultfd (O_CLOEXEC|O_NONBLOCK), falling back to
 * UFFD_USER_MODE_ONLY when the plain one is refused; -errno. */
int mck_uffd_open(int *user_mode_only);
/* UFFDIO_API with the features asked; -errno (-EOPNOTSUPP if a feature is missing). */
int mck_uffd_api(int fd, uint64_t want, uint64_t *offered);
int mck_uffd_register_wp(int fd, void *addr, size_t len);
int mck_uffd_writeprotect(int fd, void *addr, size_t len, bool protect);

/* /proc/self/pagemap, opened O_CLOEXEC; -errno. */
int mck_pagemap_open(void);
/* Loop PAGEMAP_SCAN over [start, end) until walk_end reaches end; for every
 * page in the returned regions, append its index (from base) to out.
 * Returns the count, -errno. */
int64_t mck_pagemap_scan_indices(int pagemap_fd, uint64_t flags, uint64_t mask,
				 uint8_t *base, size_t len, size_t page_size,
				 uint64_t *out, size_t cap);

void mck_reason(char *reason, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define MCK_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif /* MEMCKPT_INTERNAL_H */
