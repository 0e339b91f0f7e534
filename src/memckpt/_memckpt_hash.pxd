# memckpt.h, section "hashing": BLAKE3 (csrc/blake3.c).
from libc.stdint cimport uint8_t, uint64_t

cdef extern from "memckpt.h" nogil:
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
