# memckpt.h, sections "trackers" (the backends' table and a tracker's life,
# csrc/tracker.c, csrc/track_*.c) and "measurement aids".
from libc.stdint cimport int64_t, uint64_t

cdef extern from "memckpt.h" nogil:
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
    int mck_tracker_open_range(mck_tracker **out, int backend, void *start, size_t len)
    int64_t mck_tracker_collect(mck_tracker *t, uint64_t *out, size_t cap)
    size_t mck_tracker_npages(const mck_tracker *t)
    int mck_tracker_backend(const mck_tracker *t)
    int mck_tracker_close(mck_tracker *t)
    int mck_tracker_detached(const mck_tracker *t)
    int mck_tracker_owner(const mck_tracker *t)

    # ---- measurement aids
    int64_t mck_pagemap_scan_count(void *addr, size_t len, uint64_t mask)
