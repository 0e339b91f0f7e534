# Declarations of csrc/epoch_writer.h (and the record layout of csrc/include/pack_format.h)
# for the binding memckpt._writer.
from libc.stdint cimport uint8_t, uint64_t

cdef extern from "page_codec.h" nogil:
    unsigned mck_codec_flags()

cdef extern from "epoch_writer.h" nogil:
    enum:
        MCK_IDX_RECORD_SIZE
        MCK_IDX_HEADER_SIZE
        MCK_EW_NO_EARLY_FLUSH
        MCK_EW_NO_PACK_DIGEST

    struct mck_idx_record:
        uint64_t page
        uint64_t offset
        unsigned length
        unsigned flags
        uint8_t digest[32]

    struct mck_ew:
        pass

    struct mck_ew_config:
        int pack_fd
        size_t page_size
        uint64_t npages
        int incremental
        const uint8_t *pack_header
        size_t pack_header_len
        int threads
        unsigned flags
        unsigned compress
        int level

    struct mck_ew_stats:
        uint64_t records
        uint64_t stored
        uint64_t dedup
        uint64_t zero
        uint64_t pack_size
        int threads

    int mck_cpus_available()
    int mck_cpus_idle()
    int mck_ew_open(const mck_ew_config *cfg, mck_ew **out)
    int mck_ew_add(mck_ew *w, const void *base, uint64_t nrows, const uint64_t *pages,
                   const uint64_t *rows, size_t n)
    int mck_ew_add_async(mck_ew *w, const void *base, uint64_t nrows, const uint64_t *pages,
                         const uint64_t *rows, size_t n, size_t ready, int threads)
    void mck_ew_add_ready(mck_ew *w, size_t ready, int threads)
    bint mck_ew_busy(const mck_ew *w)
    int mck_ew_wait(mck_ew *w)
    void mck_ew_cancel(mck_ew *w)
    void mck_ew_read_stats(const mck_ew *w, mck_ew_stats *st)
    const mck_idx_record *mck_ew_records(const mck_ew *w, uint64_t *n)
    int mck_ew_pack_digest(const mck_ew *w, uint8_t *out)
    int mck_ew_finish(mck_ew *w, int idx_fd, const uint8_t *idx_header, uint8_t *idx_digest,
                      uint64_t *idx_size)
    void mck_ew_close(mck_ew *w)
