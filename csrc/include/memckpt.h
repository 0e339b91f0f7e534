/* memckpt.h: the one public header of the memckpt C core.
 *
 * Conventions (the same for every function here):
 *  - a function returns 0, or a count, on success and -errno on failure;
 *    errno is never the way an error is reported;
 *  - every fd the core opens is O_CLOEXEC;
 *  - nothing here includes or needs Python.h: a C simulator can link the core
 *    on its own (see csrc/tests/ for examples).
 * The installed library is libmemckpt.so (the wheel ships it inside the
 * package: `memckpt-config --cflags --libs`, or find_package(memckpt CONFIG)
 * in CMake); docs/c-api.md documents the API. */
#ifndef MEMCKPT_H
#define MEMCKPT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library's version: the Python package's too (a test holds them equal);
 * CMake reads it from here. Until 1.0 every minor version may change the ABI,
 * so the shared library's SONAME is libmemckpt.so.MAJOR.MINOR. */
#define MCK_VERSION_MAJOR 0
#define MCK_VERSION_MINOR 1
#define MCK_VERSION_PATCH 0

/* What libmemckpt.so exports: the functions declared here and nothing else
 * (the core is compiled with -fvisibility=hidden; the shared library's build
 * defines MCK_BUILD_SHARED). The static core linked into the Python module
 * exports nothing. */
#if defined(MCK_BUILD_SHARED) && defined(__GNUC__)
#define MCK_API __attribute__((visibility("default")))
#else
#define MCK_API
#endif

/* --------------------------------------------------------------- errors */

/* A sentence for a return code of this API: rc < 0 is -errno (the system's
 * description of that errno; "unknown error" for one it does not know), rc >=
 * 0 is "success". Never NULL; the string is constant, so any thread may call
 * this at any time (a fork child too: no lock, no allocation). */
MCK_API const char *mck_strerror(int64_t rc);

/* ---------------------------------------------------------------- probe */

/* Three outcomes for every probed feature, after CRIU's kerndat. */
enum mck_probe_state {
	MCK_PROBE_ERROR = -1,       /* the probe itself failed (see *_errno) */
	MCK_PROBE_UNSUPPORTED = 0,  /* the kernel or the privileges lack it */
	MCK_PROBE_OK = 1,
};

enum mck_thp_mode {
	MCK_THP_UNKNOWN = -1,
	MCK_THP_NEVER = 0,
	MCK_THP_MADVISE = 1,
	MCK_THP_ALWAYS = 2,
};

struct mck_features {
	size_t page_size;
	int thp_mode;                 /* enum mck_thp_mode */

	int uffd;                     /* enum mck_probe_state: a userfaultfd opens */
	int uffd_errno;               /* why not, when uffd != OK */
	int uffd_user_mode_only;      /* 1: only UFFD_USER_MODE_ONLY let us open one */
	int unprivileged_userfaultfd; /* vm.unprivileged_userfaultfd, -1 unreadable */
	uint64_t uffd_features;       /* what UFFDIO_API offered */
	int uffd_wp;                  /* enum mck_probe_state, each of these */
	int uffd_wp_async;
	int uffd_wp_unpopulated;
	int pagemap_scan;
	int pagemap_scan_errno;
	int soft_dirty;               /* decided by a self-test, never by clear_refs' result */
	int soft_dirty_errno;
};

/* Probe the kernel once; later calls return the cached result. Thread-safe. */
MCK_API int mck_probe(struct mck_features *out);

/* ------------------------------------------------------------- regions */

enum mck_region_flags {
	MCK_REGION_HUGEPAGES = 1u << 0, /* 2 MiB aligned, MADV_HUGEPAGE: tracking is 2 MiB coarse */
};

struct mck_region {
	void *addr;       /* page-aligned; 2 MiB aligned if len >= 2 MiB or MCK_REGION_HUGEPAGES */
	size_t len;       /* a multiple of the page size */
	unsigned flags;
	void *map_base;   /* the whole mapping, guard pages and alignment slack included */
	size_t map_len;
};

/* Map len bytes (rounded up to whole pages) of zero-filled anonymous private
 * memory between two PROT_NONE guard pages. */
MCK_API int mck_region_create(struct mck_region *r, size_t len, unsigned flags);
MCK_API int mck_region_destroy(struct mck_region *r);
/* Give the pages of [off, off+len) back to the kernel; they read as zero after. */
MCK_API int mck_region_discard(struct mck_region *r, size_t off, size_t len);

enum mck_populated_flags {
	/* read /proc/self/pagemap even where PAGEMAP_SCAN works (tests) */
	MCK_POPULATED_READ = 1u << 0,
};

/* Write to out[] the sorted indices (from addr's page) of the pages of
 * [addr, addr+len) (page-aligned; private anonymous memory) that may hold
 * data: present and not the shared zero page, or swapped out. Every other
 * page reads as zero. A uffd-wp marker (a never-touched page under a
 * WP_UNPOPULATED tracker) is told from a swapped page only with
 * CAP_SYS_ADMIN; without it, such pages are listed too (never too few).
 * A page written after the call returns may be missing: the caller orders
 * the call after its snapshot's instant. Returns the count; -ENOBUFS if
 * more than cap. PAGEMAP_SCAN (Linux >= 6.7), else /proc/self/pagemap. */
MCK_API int64_t mck_pages_populated(void *addr, size_t len, uint64_t *out, size_t cap,
				    unsigned flags);

/* ------------------------------------------------------------ trackers */

enum mck_backend {
	MCK_BACKEND_UFFD_ASYNC = 0,
	MCK_BACKEND_UFFD_SYNC,
	MCK_BACKEND_SOFT_DIRTY,
	MCK_BACKEND_MPROTECT,
	MCK_BACKEND_COMPARE,
	MCK_BACKEND_COUNT,
};

enum mck_backend_props {
	MCK_PROP_EXACT = 1u << 0,         /* reports exactly the pages written */
	MCK_PROP_KERNEL_WRITES = 1u << 1, /* sees, and lets through, writes the kernel makes (read(2) into the range) */
	MCK_PROP_CONCURRENT = 1u << 2,    /* collect may run while other threads write */
};

MCK_API const char *mck_backend_name(int backend);
/* The backend numbered by name, or -EINVAL. */
MCK_API int mck_backend_lookup(const char *name);
MCK_API unsigned mck_backend_props(int backend);
/* 1 if the backend works here, 0 if not, with the reason written to
 * reason[len] in both cases; -errno if the question could not be answered. */
MCK_API int mck_backend_status(int backend, char *reason, size_t len);
/* The best available backend in order of preference, why in reason[len]. */
MCK_API int mck_backend_auto(char *reason, size_t len);

struct mck_tracker;

/* Start tracking writes to [addr, addr+len) (page-aligned). Only one tracker
 * may watch a given page at a time. */
MCK_API int mck_tracker_open(struct mck_tracker **out, int backend, void *addr, size_t len);
/* Track writes to any byte range [start, start+len) (memory the program
 * already has: malloc does not page-align). The pages wholly inside it go to
 * the backend; a partial page at either end, shared with whatever lies beside
 * the range, is tracked by comparing the range's own bytes in it with a copy
 * kept at each collect (never protected: a neighbour's writes neither fault
 * nor count). Indices count from the page holding start; npages covers the
 * range. No background capture (mck_bg_* return -EOPNOTSUPP) when the range
 * is not page-aligned; when it is, this is mck_tracker_open. */
MCK_API int mck_tracker_open_range(struct mck_tracker **out, int backend, void *start, size_t len);
/* Write to out[] the sorted indices (from addr's page) of the pages written
 * since the last collect (or the open) and re-arm in the same step, so that no
 * write is lost between the two. cap must be at least the range's page count.
 * Returns the number of indices. */
MCK_API int64_t mck_tracker_collect(struct mck_tracker *t, uint64_t *out, size_t cap);
MCK_API size_t mck_tracker_npages(const struct mck_tracker *t);
MCK_API int mck_tracker_backend(const struct mck_tracker *t);
/* Close the tracker: the range is plain memory again. In a child of fork()
 * (below) it only frees the child's copy: the parent's tracking goes on. */
MCK_API int mck_tracker_close(struct mck_tracker *t);

/* ------------------------------------------------------------ pauses */

/* What a pause snapshots besides the tracker's pages. */
struct mck_pause_job {
	void *base;            /* the tracker's range (for a full epoch's populated pages) */
	size_t page_size;
	const uint64_t *carry; /* sorted page numbers of a failed epoch, or NULL */
	size_t ncarry;
	int full;              /* a full epoch: 0 no, else one of: */
};
enum {
	MCK_PAUSE_POPULATED = 1, /* the pages that may hold data (every page if unreadable) */
	MCK_PAUSE_EVERY_PAGE = 2,
};

/* Where a pause's pages go: dirty[] gets what the tracker reported plus the
 * carry (ndirty of them; reported: the tracker's own count), full[] a full
 * epoch's populated pages; tmp[] is scratch for the merge. Each holds cap >=
 * the tracker's page count (full and tmp may be NULL when unused). */
struct mck_pause_out {
	uint64_t *dirty, *full, *tmp;
	size_t cap, ndirty, reported;
};

/* The pages of one pause, in one call (pause.c): collect (the instant),
 * merge in job->carry, and for a full epoch list the populated pages.
 * Returns the count of pages to snapshot (ndirty, or the populated count of
 * a full epoch), or -errno: nothing was collected, unless ndirty says so. */
MCK_API int64_t mck_pause_pages(struct mck_tracker *t, const struct mck_pause_job *job,
				struct mck_pause_out *o);
/* out's i-th page = base's page pages[i] (runs of consecutive pages as one
 * memcpy); the caller checks the bounds. */
MCK_API int mck_copy_pages(const void *base, size_t page_size, const uint64_t *pages, size_t n,
			   void *out);

/* Fork safety. A tracker belongs to the process that opened it. Its kernel
 * objects are shared with any child of fork(): a userfaultfd acts on the mm
 * that created it, whoever holds the fd, so a child's unregister or
 * write-protect would undo the parent's tracking; its threads (uffd-sync's
 * handler, the background copier) are not in the child. So in any other
 * process the tracker is *detached*: collect, and the mck_bg_* calls below,
 * return -ECHILD and touch nothing, and mck_tracker_close frees the child's
 * copy of the tracker and closes the child's fds, with no ioctl, no thread
 * join (the mprotect backend also makes the child's copy of the range
 * writable, which is the child's own memory). A child that wants tracking
 * opens a tracker of its own. Fork snapshots (mck_fork_*) follow the same
 * rule. */
/* 1 if the calling process is not the one that opened t, else 0. */
MCK_API int mck_tracker_detached(const struct mck_tracker *t);
/* The pid of the process that opened t. */
MCK_API int mck_tracker_owner(const struct mck_tracker *t);

/* -------------------------------------------------------- fork snapshots
 *
 * A checkpoint whose pause is the fork itself: the parent collects the dirty
 * pages, then mck_fork_start() forks a child that writes those pages, from
 * its copy-on-write image of the arena, into an epoch's pack and index files
 * (the store's format, docs/format.md). The parent resumes at once and later
 * reaps the child with mck_fork_wait() (or mck_fork_kill() on error paths).
 *
 * The child allocates nothing, runs no atfork handler (it is made by _Fork)
 * and calls only async-signal-safe functions: it may start while other
 * threads hold the malloc or stdio locks. It dies with its parent
 * (PR_SET_PDEATHSIG) and always leaves by _exit(). */

/* The page index record of the store's format: 56 bytes, little-endian. */
#define MCK_FORK_RECORD_SIZE 56
#define MCK_FORK_IDX_HEADER_SIZE 48
#define MCK_FORK_FLAG_ZERO 1u

/* Where a child failed (mck_fork_result.stage); also the child's exit code. */
enum mck_fork_stage {
	MCK_FORK_OK = 0,
	MCK_FORK_STAGE_SETUP = 1,   /* PR_SET_PDEATHSIG, or the parent was already gone */
	MCK_FORK_STAGE_PACK = 2,    /* writing the pack's pages */
	MCK_FORK_STAGE_INDEX = 3,   /* writing the index */
	MCK_FORK_STAGE_SYNC = 4,    /* fdatasync of pack or index */
	MCK_FORK_STAGE_REPORT = 5,  /* writing the result to the parent */
	MCK_FORK_STAGE_DIED = 6,    /* (parent side) the child died without a result */
};

struct mck_fork_job {
	const void *base;          /* page 0 of the arena */
	size_t page_size;
	size_t npages;             /* the arena's pages: every pages[i] < npages */
	const uint64_t *pages;     /* n page numbers, strictly increasing */
	size_t n;
	int incremental;           /* 1: zero pages get a ZERO record; 0: they get none */
	int pack_fd;               /* pages go from pack_off on; the pack header is */
	uint64_t pack_off;         /* already there (written by the parent) */
	const uint8_t *pack_header;   /* those bytes, which the pack's digest covers */
	size_t pack_header_len;       /* == pack_off */
	int idx_fd;                /* written from offset 0: header, then records */
	uint8_t idx_header[MCK_FORK_IDX_HEADER_SIZE]; /* the record count is filled in */
	/* mck_fork_scratch_size(n) bytes the child uses for digests, records and
	 * its dedup table. Best a MAP_SHARED anonymous mapping the parent has
	 * touched once: then the child's writes to it copy no page. */
	void *scratch;
	size_t scratch_len;
};

struct mck_fork_child {
	int pid;   /* -1 once reaped */
	int fd;    /* read end of the result pipe (O_CLOEXEC); -1 once closed */
	/* the process that forked it: in any other (a fork() child of that
	 * one), read, wait and kill only close this process's copy of fd and
	 * return -ECHILD: the snapshot child is not ours to kill or reap, and
	 * its result is the parent's to read */
	int owner;
};

struct mck_fork_result {
	uint64_t records;          /* index records written */
	uint64_t stored;           /* pages stored in the pack */
	uint64_t dedup;            /* nonzero pages whose content was stored already */
	uint64_t zero;             /* all-zero pages (never stored) */
	uint64_t pack_size;        /* bytes, header included */
	uint64_t idx_size;
	uint8_t pack_digest[32];   /* all zero: since format 1.2 no digest of the whole pack */
	uint8_t idx_digest[32];    /* BLAKE3 of the whole index file */
	/* The child's Private_Clean + Private_Dirty from /proc/self/smaps_rollup,
	 * read after it wrote and synced the files: memory that exists only
	 * because the child is alive, i.e. pages the parent rewrote (or freed)
	 * while the child ran, plus a few pages of the child's own stack. */
	uint64_t extra_bytes;
	double child_seconds;      /* from the fork to the result, in the child */
	int32_t error;             /* errno of the failed step; 0 on success */
	int32_t stage;             /* enum mck_fork_stage */
	/* filled by the parent in mck_fork_wait: */
	int32_t pid;
	int32_t exit_code;         /* -1 if killed by a signal */
	int32_t term_signal;       /* 0 if it exited */
	int32_t reported;          /* 1 if a whole result came through the pipe */
};

/* Bytes of scratch a job of n pages needs. */
MCK_API size_t mck_fork_scratch_size(size_t n);
/* Check the job, then fork the child; returns 0 with out filled, or -errno
 * (-EINVAL for a bad job) with no child made and no fd left open. */
MCK_API int mck_fork_start(const struct mck_fork_job *job, struct mck_fork_child *out);
/* Read the child's result, then reap it (both retried on EINTR). Returns 0 if
 * the child wrote and synced both files; -error (res->stage says where) if
 * the child reported a failure; -ECHILD if it died without a whole result
 * (res->term_signal / res->exit_code say how). c is closed on return, also
 * on failure: a second call returns -ESRCH. */
MCK_API int mck_fork_wait(struct mck_fork_child *c, struct mck_fork_result *res);
/* The first half of mck_fork_wait: read the result (same return values) and
 * close the pipe, but leave a child that reported to exit on its own: its
 * exit tears down a copy of the parent's address space (~50 ms for 1 GiB
 * here), which the epoch need not wait for, since the files are durable
 * once it reports. A child that reported nothing is reaped at once (c->pid
 * is then -1). Otherwise mck_fork_wait(c, res), with the same res, reaps it
 * and returns the same value (or mck_fork_kill does). */
MCK_API int mck_fork_read(struct mck_fork_child *c, struct mck_fork_result *res);
/* SIGKILL the child (if still unreaped), reap it and close the pipe.
 * Idempotent; 0 or -errno. */
MCK_API int mck_fork_kill(struct mck_fork_child *c);

/* ------------------------------------------------- background capture
 * Copy-before-write snapshots without fork, over a uffd-sync tracker
 * (csrc/capture_bg.c). mck_bg_begin is the checkpoint instant: in one step
 * against the tracker's fault handler it collects the pages written since the
 * last collect (D, like mck_tracker_collect), write-protects them, and hands
 * them to a copier thread that copies each into staging. A write to a page of
 * D not copied yet waits until that page is copied, then proceeds and counts
 * as a write of the next epoch. The program is paused only for the collect
 * and the protect. Only one background copy per tracker at a time. */

/* How mck_bg_begin re-protects D: runs of D closer than max_gap pages are
 * protected by one UFFDIO_WRITEPROTECT over the gap too (the gap's pages are
 * already protected: walking them is cheaper than another ioctl). */
#define MCK_BG_GAP_AUTO (-1)      /* the gap the measured cost ratio gives */
#define MCK_BG_GAP_RUNS 0         /* one ioctl per run of adjacent pages */
#define MCK_BG_GAP_SPAN INT64_MAX /* one ioctl from D's first page to its last */

enum mck_bg_flags {
	/* snapshot every page of the range, not only those written since the
	 * last collect (a full epoch); the collect still re-arms */
	MCK_BG_ALL_PAGES = 1u << 0,
	/* snapshot also the pages that may hold data at the instant
	 * (mck_pages_populated, taken in the same critical section): a full
	 * epoch that neither reads nor stages the never-touched pages */
	MCK_BG_POPULATED = 1u << 1,
};

struct mck_bg_stats {
	uint64_t pages;         /* |D| */
	uint64_t prearmed;      /* pages of D a pre-arm had protected already */
	uint64_t runs;          /* runs of adjacent pages in D */
	uint64_t protect_calls; /* UFFDIO_WRITEPROTECT ioctls the pause made */
	uint64_t protect_pages; /* pages those ioctls covered (D and the gaps) */
	int64_t max_gap;        /* the gap used */
	uint64_t faults_waited; /* write faults that waited for their page's copy */
	uint64_t copied_early;  /* pages copied out of order for a waiting writer */
	uint64_t collect_ns;    /* draining the dirty bitmap (in the pause) */
	uint64_t protect_ns;    /* the ioctls (in the pause) */
	uint64_t copy_ns;       /* the copier, from the instant to the last page */
};

/* 1 if the tracker's backend can do background capture, 0 if not (reason
 * written in both cases). */
MCK_API int mck_bg_supported(int backend, char *reason, size_t len);
/* Collect into pages[] (cap >= the tracker's page count) as
 * mck_tracker_collect does (every page with MCK_BG_ALL_PAGES in flags),
 * write-protect those pages, and start copying page
 * pages[i] to staging + i * page size. staging holds staging_pages pages; if
 * fewer than collected, nothing changes and -ENOBUFS is returned. pages[] and
 * staging must stay untouched until mck_bg_wait returns. Returns the count;
 * -EOPNOTSUPP if the backend is not uffd-sync, -EBUSY if a copy is pending. */
MCK_API int64_t mck_bg_begin(struct mck_tracker *t, uint64_t *pages, size_t cap, void *staging,
			     size_t staging_pages, int64_t max_gap, unsigned flags,
			     struct mck_bg_stats *stats);
/* mck_bg_begin whose D also holds extra[0..nextra) (sorted, duplicate-free,
 * each < the tracker's page count): pages a failed epoch collected, which are
 * protected already but must be in this snapshot. D is the sorted union of
 * the pages collected, extra and (with MCK_BG_POPULATED) the populated ones. */
MCK_API int64_t mck_bg_begin_ex(struct mck_tracker *t, uint64_t *pages, size_t cap, void *staging,
				size_t staging_pages, int64_t max_gap, unsigned flags,
				const uint64_t *extra, size_t nextra, struct mck_bg_stats *stats);
/* Shorten the next mck_bg_begin's pause: write-protect now, while the
 * program runs, the pages written so far (they stay dirty: the next collect
 * or mck_bg_begin still reports them), so that the pause protects only those
 * written after this call. Each page written again after it costs one more
 * fault. Returns the pages protected; -EOPNOTSUPP if not uffd-sync. */
MCK_API int64_t mck_bg_prearm(struct mck_tracker *t, int64_t max_gap);
/* Block until every page of the copy mck_bg_begin started is in staging;
 * stats (may be NULL) gets the whole record. 0, or -errno if the copy failed
 * (then staging is not a snapshot); -EINVAL if no copy was started.
 * mck_tracker_close during a copy finishes it first (waiters are released),
 * but must not race mck_bg_wait on the same tracker. */
MCK_API int mck_bg_wait(struct mck_tracker *t, struct mck_bg_stats *stats);

/* ------------------------------------------------------ measurement aids */

/* Count the pages of [addr, addr+len) in all of the PAGE_IS_* categories of
 * mask with a bare PAGEMAP_SCAN (no write-protect), asked the way a uffd-async
 * collect asks: the floor that collect is measured against. Note that
 * PAGE_IS_WRITTEN means "not write-protected", so outside a uffd range it
 * counts every page with a page-table entry. -EOPNOTSUPP without PAGEMAP_SCAN. */
MCK_API int64_t mck_pagemap_scan_count(void *addr, size_t len, uint64_t mask);

/* -------------------------------------------------------------- hashing */

/* BLAKE3 (unkeyed, 32-byte output), written from the specification. Every
 * function here is pure computation on the caller's memory: no heap, no locks,
 * no thread-local state, so a fork child or a signal handler may call them
 * (they need at most about 8 KiB of stack: gcc -fstack-usage).
 * Page digests hash several 1 KiB chunks at once across SIMD lanes: 16 with
 * AVX-512, 8 with AVX2, chosen at run time from the CPU; 4 with SSE2 (x86-64's
 * baseline) or one at a time in portable C otherwise. */
#define MCK_BLAKE3_LEN 32
#define MCK_BLAKE3_STACK 54 /* subtree CVs a 2^64-byte input can leave pending */

/* A streaming hasher: fixed size, lives on the stack, copyable. */
struct mck_blake3 {
	uint32_t cv[8];        /* chaining value of the chunk being absorbed */
	uint64_t chunk;        /* that chunk's index in the input */
	uint8_t buf[64];       /* its last, not yet compressed, block */
	uint32_t buf_len;
	uint32_t blocks;       /* blocks of that chunk already compressed */
	uint32_t stack_len;
	uint8_t stack[MCK_BLAKE3_STACK][MCK_BLAKE3_LEN]; /* complete left subtrees */
};

MCK_API void mck_blake3_init(struct mck_blake3 *h);
MCK_API void mck_blake3_update(struct mck_blake3 *h, const void *data, size_t len);
/* The digest of everything absorbed so far; h may keep absorbing after. */
MCK_API void mck_blake3_final(const struct mck_blake3 *h, uint8_t out[MCK_BLAKE3_LEN]);
/* out[i*32..] = BLAKE3 of the page at base + i*page_size, for i < n (pages
 * contiguous). Fast for page sizes that are powers of two >= 512; any other
 * size is hashed correctly, one page at a time. */
MCK_API void mck_blake3_pages(const void *base, size_t page_size, size_t n, uint8_t *out);
/* The same for the pages base + idx[i]*page_size (idx: page numbers, any order). */
MCK_API void mck_blake3_pages_at(const void *base, size_t page_size, const uint64_t *idx,
				 size_t n, uint8_t *out);
/* Which implementation the functions above use: "avx512", "avx2", "sse2" or
 * "portable". */
MCK_API const char *mck_blake3_impl(void);
/* Force one by name (for tests and benchmarks; not thread-safe against
 * concurrent hashing). -EINVAL for an unknown name, -ENOTSUP if this CPU or
 * build lacks it. NULL restores the automatic choice. */
MCK_API int mck_blake3_set_impl(const char *name);

#ifdef __cplusplus
}
#endif
#endif /* MEMCKPT_H */
