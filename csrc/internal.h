/* internal.h: what the core's files share and the public header does not show. */
#ifndef MEMCKPT_INTERNAL_H
#define MEMCKPT_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/types.h>
#include <sys/uio.h>
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
struct mck_hold_ops;

/* What a backend can do beyond tracking, asked of its ops (caps) rather than
 * of its name, so that a capture works with any backend that can. */
enum mck_tracker_caps {
	/* A handler thread sees every first write to a protected page and can
	 * keep the writer asleep until a capture has copied the page: what
	 * background capture (capture_bg.c) needs. ops->hold is then set. */
	MCK_CAP_HOLD_WRITERS = 1u << 0,
};

struct mck_tracker_ops {
	const char *name;
	unsigned props; /* enum mck_backend_props */
	unsigned caps;  /* enum mck_tracker_caps */
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
	/* MCK_CAP_HOLD_WRITERS only, else NULL */
	const struct mck_hold_ops *hold;
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
/* tracker.c: the backend's caps (enum mck_tracker_caps); 0 for an unknown one. */
unsigned mck_backend_caps(int backend);
/* tracker.c: t's hold interface, or NULL if its backend cannot hold writers. */
const struct mck_hold_ops *mck_tracker_hold(const struct mck_tracker *t);

extern const struct mck_tracker_ops mck_uffd_async_ops;
extern const struct mck_tracker_ops mck_uffd_sync_ops;
extern const struct mck_tracker_ops mck_soft_dirty_ops;
extern const struct mck_tracker_ops mck_mprotect_ops;
extern const struct mck_tracker_ops mck_compare_ops;
/* tracker_range.c: a byte range's edge pages compared, its whole pages to a backend */
extern const struct mck_tracker_ops mck_range_ops;
/* tracker.c: allocate t over [addr, addr+len) (page-aligned), set its owner,
 * its ops and t->priv = priv, and open it (ops->open may replace priv). */
int mck_tracker_start(struct mck_tracker **out, const struct mck_tracker_ops *ops, int backend,
		      void *addr, size_t len, void *priv);

/* ---- a capture hooked into a tracker's fault path -------------------------
 * Two tables, one each way, so that neither file knows the other: the
 * tracker (track_uffd.c, uffd-sync) owns the fd, the handler and the lock
 * that orders faults against collects, and offers them through its
 * mck_hold_ops; the capture (capture_bg.c) owns the copy (page states,
 * copier thread) and registers its mck_capture_hooks, which the handler and
 * close call. Both sides see only this header. */

/* The capture's side, called by the tracker with ctx as attached. */
struct mck_capture_hooks {
	/* By the handler with the tracker's lock held, for a write fault on
	 * page (index in the range): true if the page awaits its copy, so the
	 * writer must sleep on (the capture releases it, hold->release);
	 * false to resolve the fault as usual. */
	bool (*defer)(void *ctx, uint64_t page);
	/* By close, before unregistering: finish the copy (releasing every
	 * waiter), stop the capture's threads, detach and free ctx. */
	void (*destroy)(void *ctx);
	/* By forget in a fork child: free ctx's memory; no join (the threads
	 * are not in this process), no mutex or cond destroyed (one may have
	 * been held at the fork). */
	void (*forget)(void *ctx);
};

/* The capture's arm step in freeze: see mck_hold_ops.freeze. */
typedef int (*mck_hold_arm_fn)(void *ctx, uint64_t *out, size_t *n, const uint64_t *writable,
			       size_t w);
/* Protect pages[0..n) (sorted) of t's range, runs closer than gap pages in one call. */
typedef int (*mck_hold_protect_fn)(struct mck_tracker *t, const uint64_t *pages, size_t n,
				   int64_t gap);

/* The tracker's side, called by the capture. */
struct mck_hold_ops {
	/* With the tracker's lock held, drain the dirty bitmap into out[] (D)
	 * and the writable one (the pages of D not protected: all of D unless
	 * a pre-arm ran) and call arm(ctx, out, &n, writable, w), which
	 * protects the writable pages and arms the copy (and may widen out[]
	 * and n, to every page); if arm fails, the bits drained are set again.
	 * Returns n or -errno. */
	int64_t (*freeze)(struct mck_tracker *t, uint64_t *out, size_t cap, mck_hold_arm_fn arm,
			  void *ctx);
	/* With the lock held, drain the writable bitmap and call protect(t,
	 * pages, w, gap) on it, leaving the dirty bits: the pages are still
	 * reported by the next collect, but no longer need protecting in it.
	 * Returns w or -errno (the bits set again). */
	int64_t (*prearm)(struct mck_tracker *t, mck_hold_protect_fn protect, int64_t gap);
	/* (Un)protect [page, page + npages) of the range, retrying EAGAIN. */
	int (*protect)(struct mck_tracker *t, uint64_t page, size_t npages, bool protect);
	/* A waiting writer's page is copied: record it as written (next
	 * epoch) and un-protect it, which wakes the writer. Takes the lock. */
	int (*release)(struct mck_tracker *t, uint64_t page);
	/* The ctx attached to t with these hooks, or NULL (none yet, or
	 * another capture's). */
	void *(*attached)(struct mck_tracker *t, const struct mck_capture_hooks *hooks);
	/* Attach a capture (under the lock; hooks NULL detaches). The tracker
	 * calls hooks->destroy at close and hooks->forget in a fork child. */
	void (*attach)(struct mck_tracker *t, const struct mck_capture_hooks *hooks, void *ctx);
};

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

/* ---- one input's BLAKE3 over several threads (blake3.c) -------------------
 * The aligned subtrees of 64 chunks (64 KiB) of an input are independent:
 * threads hash them apart, and one streaming hasher takes their CVs in order.
 * Pure computation, like the rest of blake3.c (async-signal-safe). */
#define MCK_BLAKE3_SUBTREE_CHUNKS 64
#define MCK_BLAKE3_SUBTREE_BYTES (MCK_BLAKE3_SUBTREE_CHUNKS * 1024)

/* The chaining value of the subtree of 64 chunks whose first is chunk number
 * first_chunk (a multiple of 64) of the input; chunks[i] points at the 1024
 * bytes of its chunk i. Never the root: the input must be longer. */
void mck_blake3_subtree(const uint8_t *const chunks[MCK_BLAKE3_SUBTREE_CHUNKS], uint64_t first_chunk,
			uint8_t cv[MCK_BLAKE3_LEN]);
/* Absorb n consecutive subtrees by their CVs (from mck_blake3_subtree) into
 * h, which must have absorbed a whole number of subtrees; -EINVAL (h
 * unchanged) if not. More input must follow before mck_blake3_final. */
int mck_blake3_push_subtrees(struct mck_blake3 *h, const uint8_t *cvs, size_t n);

/* ---- one input laid out as iovecs, hashed (hash_iov.c) --------------------- */

/* A position in a byte stream laid out as iov[0..cnt). */
struct mck_iov_cursor {
	const struct iovec *iov;
	size_t cnt;
	size_t i;  /* the iovec the position is in */
	size_t at; /* bytes of it before the position */
};

/* Move the cursor n bytes on (n must not pass the end). */
void mck_cursor_skip(struct mck_iov_cursor *c, uint64_t n);
/* *p = the cursor's position; returns how many bytes from there one iovec
 * holds (the cursor must not be at the end). */
size_t mck_cursor_piece(struct mck_iov_cursor *c, const uint8_t **p);
/* The chaining value of the subtree of 64 KiB at the cursor (advanced past
 * it), which is subtree number g of its input; a chunk that straddles two
 * iovecs is gathered into gather (64 KiB). */
void mck_hash_subtree_at(struct mck_iov_cursor *c, uint64_t g, uint8_t *gather,
			 uint8_t cv[MCK_BLAKE3_LEN]);
/* Absorb the next n bytes at the cursor into h, which has absorbed *pos
 * bytes (*pos grows by n): the aligned subtrees in SIMD lanes, the rest
 * streamed (a stream's bytes past its 64 KiB boundaries stay byte-at-a-time
 * otherwise, which is several times slower). gather: 64 KiB of scratch. */
void mck_hash_stream(struct mck_blake3 *h, uint64_t *pos, struct mck_iov_cursor *c, uint64_t n,
		     uint8_t *gather);

#define MCK_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif /* MEMCKPT_INTERNAL_H */
