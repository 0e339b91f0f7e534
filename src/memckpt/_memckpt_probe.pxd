# memckpt.h, section "probe": the kernel's features, probed once (csrc/probe.c).
from libc.stdint cimport uint64_t

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
