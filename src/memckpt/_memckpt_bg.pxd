# memckpt.h, section "background capture" (csrc/capture_bg.c): over a tracker.
from libc.stdint cimport int64_t, uint64_t

from memckpt._memckpt_tracker cimport mck_tracker

cdef extern from "memckpt.h" nogil:
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
