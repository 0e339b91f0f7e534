# memckpt.h, section "pauses" (csrc/pause.c).
from libc.stdint cimport int64_t, uint64_t

from memckpt._memckpt_tracker cimport mck_tracker

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
