# Declarations of csrc/include/memckpt.h, the C core's one public header.
from libc.stdint cimport int64_t, uint64_t
from libc.stdint cimport uint8_t  # hashing

cdef extern from "memckpt.h" nogil:
    enum:
        MCK_PROBE_ERROR
        MCK_PROBE_UNSUPPORTED
        MCK_PROBE_OK

    struct mck_features:
        size_t page_size
        int thp_mode
        int uffd
        int uffd_errno
        int uffd_user_mode_only
        int unprivileged_userfaultfd
        uint64_t uffd_features
        int uffd_wp
        int uffd_wp_async
        int uffd_wp_unpopulated
        int pagemap_scan
        int pagemap_scan_errno
        int soft_dirty
        int soft_dirty_errno

    int mck_probe(mck_features *out)

    enum:
        MCK_REGION_HUGEPAGES

    struct mck_region:
        void *addr
        size_t len
        unsigned flags
        void *map_base
        size_t map_len

    int mck_region_create(mck_region *r, size_t len, unsigned flags)
    int mck_region_destroy(mck_region *r)
    int mck_region_discard(mck_region *r, size_t off, size_t len)

    enum:
        MCK_POPULATED_READ

    int64_t mck_pages_populated(void *addr, size_t len, uint64_t *out, size_t cap, unsigned flags)

    enum:
        MCK_BACKEND_COUNT
        MCK_PROP_EXACT
        MCK_PROP_KERNEL_WRITES
        MCK_PROP_CONCURRENT

    const char *mck_backend_name(int backend)
    int mck_backend_lookup(const char *name)
    unsigned mck_backend_props(int backend)
    int mck_backend_status(int backend, char *reason, size_t len)
    int mck_backend_auto(char *reason, size_t len)

    struct mck_tracker:
        pass

    int mck_tracker_open(mck_tracker **out, int backend, void *addr, size_t len)
    int64_t mck_tracker_collect(mck_tracker *t, uint64_t *out, size_t cap)
    size_t mck_tracker_npages(const mck_tracker *t)
    int mck_tracker_backend(const mck_tracker *t)
    int mck_tracker_close(mck_tracker *t)
    int mck_tracker_detached(const mck_tracker *t)
    int mck_tracker_owner(const mck_tracker *t)

    int64_t mck_pagemap_scan_count(void *addr, size_t len, uint64_t mask)

# ---- fork snapshots (csrc/capture_fork.c)
from libc.stdint cimport int32_t, uint8_t

cdef extern from "memckpt.h" nogil:
    enum:
        MCK_FORK_RECORD_SIZE
        MCK_FORK_IDX_HEADER_SIZE
        MCK_FORK_OK
        MCK_FORK_STAGE_SETUP
        MCK_FORK_STAGE_PACK
        MCK_FORK_STAGE_INDEX
        MCK_FORK_STAGE_SYNC
        MCK_FORK_STAGE_REPORT
        MCK_FORK_STAGE_DIED

    struct mck_fork_job:
        const void *base
        size_t page_size
        size_t npages
        const uint64_t *pages
        size_t n
        int incremental
        int pack_fd
        uint64_t pack_off
        const uint8_t *pack_header
        size_t pack_header_len
        int idx_fd
        uint8_t idx_header[48]
        void *scratch
        size_t scratch_len

    struct mck_fork_child:
        int pid
        int fd
        int owner

    struct mck_fork_result:
        uint64_t records
        uint64_t stored
        uint64_t dedup
        uint64_t zero
        uint64_t pack_size
        uint64_t idx_size
        uint8_t pack_digest[32]
        uint8_t idx_digest[32]
        uint64_t extra_bytes
        double child_seconds
        int32_t error
        int32_t stage
        int32_t pid
        int32_t exit_code
        int32_t term_signal
        int32_t reported

    size_t mck_fork_scratch_size(size_t n)
    int mck_fork_start(const mck_fork_job *job, mck_fork_child *out)
    int mck_fork_wait(mck_fork_child *c, mck_fork_result *res)
    int mck_fork_read(mck_fork_child *c, mck_fork_result *res)
    int mck_fork_kill(mck_fork_child *c)

    # ---- hashing (csrc/blake3.c)
    enum:
        MCK_BLAKE3_LEN

    struct mck_blake3:
        pass

    void mck_blake3_init(mck_blake3 *h)
    void mck_blake3_update(mck_blake3 *h, const void *data, size_t len)
    void mck_blake3_final(const mck_blake3 *h, uint8_t *out)
    void mck_blake3_pages(const void *base, size_t page_size, size_t n, uint8_t *out)
    void mck_blake3_pages_at(const void *base, size_t page_size, const uint64_t *idx,
                             size_t n, uint8_t *out)
    const char *mck_blake3_impl()
    int mck_blake3_set_impl(const char *name)

    # ---- background capture (csrc/capture_bg.c) ----
    enum:
        MCK_BG_GAP_AUTO
        MCK_BG_GAP_RUNS
        MCK_BG_ALL_PAGES
        MCK_BG_POPULATED

    struct mck_bg_stats:
        uint64_t pages
        uint64_t prearmed
        uint64_t runs
        uint64_t protect_calls
        uint64_t protect_pages
        int64_t max_gap
        uint64_t faults_waited
        uint64_t copied_early
        uint64_t collect_ns
        uint64_t protect_ns
        uint64_t copy_ns

    int mck_bg_supported(int backend, char *reason, size_t len)
    int64_t mck_bg_begin(mck_tracker *t, uint64_t *pages, size_t cap, void *staging,
                         size_t staging_pages, int64_t max_gap, unsigned flags,
                         mck_bg_stats *stats)
    int64_t mck_bg_begin_ex(mck_tracker *t, uint64_t *pages, size_t cap, void *staging,
                            size_t staging_pages, int64_t max_gap, unsigned flags,
                            const uint64_t *extra, size_t nextra, mck_bg_stats *stats)
    int mck_bg_wait(mck_tracker *t, mck_bg_stats *stats)
    int64_t mck_bg_prearm(mck_tracker *t, int64_t max_gap)

# ---- pauses (csrc/pause.c)
cdef extern from "memckpt.h" nogil:
    struct mck_pause_job:
        void *base
        size_t page_size
        const uint64_t *carry
        size_t ncarry
        int full

    enum:
        MCK_PAUSE_POPULATED
        MCK_PAUSE_EVERY_PAGE

    struct mck_pause_out:
        uint64_t *dirty
        uint64_t *full
        uint64_t *tmp
        size_t cap
        size_t ndirty
        size_t reported

    int64_t mck_pause_pages(mck_tracker *t, const mck_pause_job *job, mck_pause_out *o)
    int mck_copy_pages(const void *base, size_t page_size, const uint64_t *pages, size_t n,
                       void *out)
