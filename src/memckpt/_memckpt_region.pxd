# memckpt.h, section "regions": mappings between guard pages and the pages of
# one that may hold data (csrc/region.c, csrc/populated.c).
from libc.stdint cimport int64_t, uint64_t

cdef extern from "memckpt.h" nogil:
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
