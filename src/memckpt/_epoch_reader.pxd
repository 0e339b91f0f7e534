# Declarations of csrc/include/epoch_reader.h (the epoch reader) and
# csrc/include/pack_format.h (the index record it reads).
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "pack_format.h" nogil:
    enum:
        MCK_IDX_RECORD_SIZE
        MCK_PACK_HEADER_SIZE
        MCK_PAGE_ZERO
        MCK_PAGE_ZSTD
        MCK_PAGE_LZ4

cdef extern from "epoch_reader.h" nogil:
    struct mck_read_source:
        int fd
        const void *records
        uint64_t nrecords
        uint64_t pack_size

    enum:
        MCK_READ_FAULT_NONE
        MCK_READ_FAULT_DIGEST
        MCK_READ_FAULT_SHORT
        MCK_READ_FAULT_DECODE
        MCK_READ_FAULT_RECORD
        MCK_READ_FAULT_IO

    struct mck_read_fault:
        int kind
        int err
        uint32_t source
        uint64_t record
        uint64_t page
        uint64_t offset
        uint64_t nbad
        char why[112]

    enum:
        MCK_READ_VERIFY
        MCK_READ_OUT_ZERO
        MCK_READ_DEFER_CODED
        MCK_READ_FILL_HUGE

    struct mck_read_plan:
        pass

    int mck_read_plan_build(mck_read_plan **out, const mck_read_source *sources,
                            uint32_t nsources, void *dest, size_t page_size, uint64_t npages,
                            const uint64_t *want, uint64_t nwant, unsigned flags,
                            mck_read_fault *fault)
    uint64_t mck_read_plan_units(const mck_read_plan *plan)
    uint64_t mck_read_plan_pages(const mck_read_plan *plan, uint64_t end)
    uint64_t mck_read_plan_deferred(const mck_read_plan *plan, uint32_t *source,
                                    uint64_t *record, uint64_t cap)
    int mck_read_plan_run(mck_read_plan *plan, uint64_t first, uint64_t last,
                          unsigned nthreads, mck_read_fault *fault)
    int mck_read_plan_prefault(mck_read_plan *plan, unsigned nthreads, uint64_t *huge)
    int mck_read_plan_fill_in_run(mck_read_plan *plan)
    int mck_read_plan_fill_huge_blocks(const mck_read_plan *plan)
    int mck_read_plan_split_huge(mck_read_plan *plan)
    void mck_read_plan_free(mck_read_plan *plan)
    unsigned mck_read_codecs()
