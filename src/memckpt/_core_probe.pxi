# Included by _core.pyx (one module, memckpt._core): the kernel's features and
# the tracking backends' table (csrc/probe.c, csrc/tracker.c).

PROBE_ERROR = c.MCK_PROBE_ERROR
PROBE_UNSUPPORTED = c.MCK_PROBE_UNSUPPORTED
PROBE_OK = c.MCK_PROBE_OK
PROP_EXACT = c.MCK_PROP_EXACT
PROP_KERNEL_WRITES = c.MCK_PROP_KERNEL_WRITES
PROP_CONCURRENT = c.MCK_PROP_CONCURRENT
BACKEND_COUNT = c.MCK_BACKEND_COUNT


def probe():
    """The kernel features, probed once per process (a dict; see memckpt.features())."""
    cdef c.mck_features f
    cdef int rc
    with nogil:
        rc = c.mck_probe(&f)
    check(rc, "probing kernel features")
    return f


def backend_names():
    return [c.mck_backend_name(b).decode() for b in range(c.MCK_BACKEND_COUNT)]


def backend_lookup(str name):
    cdef bytes b = name.encode()
    cdef int rc = c.mck_backend_lookup(b)
    if rc < 0:
        raise ValueError(f"unknown backend {name!r}; choose one of {backend_names()}")
    return rc


def backend_props(int backend):
    return c.mck_backend_props(backend)


def backend_status(int backend):
    """(available, reason): the reason says why not, or what it relies on."""
    cdef char reason[512]
    cdef int rc
    reason[0] = 0
    with nogil:
        rc = c.mck_backend_status(backend, reason, sizeof(reason))
    check(rc, "backend status")
    return rc == 1, reason.decode(errors="replace")


def backend_auto():
    """(backend, reason) for the best available backend; OSError(ENOTSUP) if none."""
    cdef char reason[2048]
    cdef int rc
    reason[0] = 0
    with nogil:
        rc = c.mck_backend_auto(reason, sizeof(reason))
    return rc, reason.decode(errors="replace")


def pagemap_scan_count(size_t addr, size_t length, uint64_t mask):
    """Pages of [addr, addr+length) in all PAGE_IS_* categories of mask, by a bare PAGEMAP_SCAN."""
    cdef int64_t rc
    with nogil:
        rc = c.mck_pagemap_scan_count(<void *>addr, length, mask)
    check(rc, "PAGEMAP_SCAN")
    return rc
