# memckpt.h, section "fork snapshots" (csrc/capture_fork.c).
from libc.stdint cimport int32_t, uint8_t, uint64_t

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
