# Declarations of csrc/lazy_restore.h (the lazy restore server).
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from memckpt._epoch_reader cimport mck_read_fault, mck_read_plan, mck_read_source

cdef extern from "lazy_restore.h" nogil:
    struct mck_lazy:
        pass

    struct mck_lazy_stats:
        uint64_t npages
        uint64_t faults
        uint64_t fault_msgs
        uint64_t drained
        uint64_t served
        uint64_t eexist
        uint64_t eagain
        uint64_t removed
        uint64_t bad
        uint64_t bytes_read
        uint64_t chunk_min
        uint64_t chunk_max
        uint64_t start_ns
        uint64_t planned_ns
        uint64_t drained_ns
        int state
        int err

    struct mck_lazy_index:
        const uint8_t *data
        uint64_t size
        uint8_t digest[32]

    uint64_t MCK_LAZY_WHOLE_FILE

    enum:
        MCK_LAZY_RUNNING
        MCK_LAZY_DRAINED
        MCK_LAZY_STOPPED
        MCK_LAZY_VERIFY
        MCK_LAZY_HOLD

    int mck_lazy_start(mck_lazy **out, mck_read_plan *plan, const uint64_t *order,
                       uint64_t norder, unsigned nthreads, unsigned flags)
    int mck_lazy_open(mck_lazy **out, const mck_read_source *sources, uint32_t nsources,
                      const mck_lazy_index *indexes, void *dest, size_t page_size,
                      uint64_t npages, const uint64_t *order, uint64_t norder,
                      unsigned nthreads, unsigned flags)
    void mck_lazy_abandon(mck_lazy *l)
    int mck_lazy_index_fault(mck_lazy *l, mck_read_fault *f)
    int mck_lazy_planned(mck_lazy *l)
    void mck_lazy_release(mck_lazy *l)
    int mck_lazy_wait(mck_lazy *l, int timeout_ms)
    void mck_lazy_get_stats(mck_lazy *l, mck_lazy_stats *st)
    void mck_lazy_first_fault(mck_lazy *l, mck_read_fault *f)
    uint64_t mck_lazy_touched(mck_lazy *l, uint64_t *pages, uint64_t cap)
    uint64_t mck_lazy_latencies(mck_lazy *l, uint64_t *ns, uint64_t cap)
    int mck_lazy_fd(mck_lazy *l)
    void mck_lazy_kill_handler(mck_lazy *l)
    void mck_lazy_close(mck_lazy *l)
