# Included by _core.pyx (one module, memckpt._core): hashing, BLAKE3 of the
# core (csrc/blake3.c).
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.errno cimport EINVAL
from libc.stdint cimport uint8_t

BLAKE3_LEN = c.MCK_BLAKE3_LEN


def blake3(data):
    """The 32-byte BLAKE3 digest of any contiguous buffer (bytes, memoryview, ndarray)."""
    cdef Py_buffer view
    cdef c.mck_blake3 h
    cdef uint8_t out[32]
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            c.mck_blake3_init(&h)
            c.mck_blake3_update(&h, view.buf, <size_t>view.len)
            c.mck_blake3_final(&h, out)
    finally:
        PyBuffer_Release(&view)
    return out[:32]


cdef object _digest_out(object out, Py_ssize_t n):
    if out is None:
        return np.empty((n, 32), dtype=np.uint8)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, not {type(out).__name__}")
    if out.dtype != np.uint8 or out.shape != (n, 32):
        raise ValueError(f"out must be uint8 of shape ({n}, 32), not {out.dtype} {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writable")
    return out


cdef object _pages_arg(object data, str what):
    if not isinstance(data, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, not {type(data).__name__}")
    if data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{what} must be uint8 of shape (npages, page_size), not {data.dtype} {data.shape}")
    if data.shape[1] == 0:
        raise ValueError(f"{what} has pages of 0 bytes")
    if not data.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous (np.ascontiguousarray makes a copy)")
    return data


def hash_pages(data, out=None):
    """BLAKE3 of each row of data (uint8, (n, page_size), C-contiguous) into out (uint8, (n, 32))."""
    _pages_arg(data, "data")
    cdef Py_ssize_t n = data.shape[0]
    out = _digest_out(out, n)
    if n == 0:
        return out
    cdef const uint8_t[:, ::1] d = data
    cdef uint8_t[:, ::1] o = out
    cdef size_t ps = <size_t>d.shape[1]
    with nogil:
        c.mck_blake3_pages(&d[0, 0], ps, <size_t>n, &o[0, 0])
    return out


def hash_pages_at(base, idx, out=None):
    """BLAKE3 of the rows base[idx[i]] (base: uint8 (npages, page_size), C-contiguous;
    idx: non-negative integers, any order) into out (uint8, (len(idx), 32))."""
    _pages_arg(base, "base")
    if not isinstance(idx, np.ndarray):
        idx = np.asarray(idx)
    if idx.ndim != 1 or (idx.dtype.kind not in "ui" and idx.size):
        raise ValueError(f"idx must be a 1-D array of page numbers, not {idx.dtype} {idx.shape}")
    if idx.dtype != np.uint64:
        if idx.size and idx.min() < 0:
            raise ValueError(f"idx holds a negative page number ({int(idx.min())})")
        idx = idx.astype(np.uint64)
    cdef Py_ssize_t n = idx.shape[0]
    out = _digest_out(out, n)
    if n == 0:
        return out
    cdef const uint64_t[::1] ix = np.ascontiguousarray(idx)
    cdef const uint8_t[:, ::1] d = base
    cdef uint8_t[:, ::1] o = out
    cdef size_t ps = <size_t>d.shape[1]
    cdef uint64_t npages = <uint64_t>d.shape[0], top = 0
    cdef Py_ssize_t i
    with nogil:
        for i in range(n):
            if ix[i] > top:
                top = ix[i]
    if top >= npages:
        raise IndexError(f"idx holds page {top}, beyond base's {npages} pages")
    with nogil:
        c.mck_blake3_pages_at(&d[0, 0], ps, &ix[0], <size_t>n, &o[0, 0])
    return out


def blake3_impl():
    """The implementation the core's BLAKE3 uses: 'avx512', 'avx2', 'sse2' or 'portable'."""
    return c.mck_blake3_impl().decode()


def blake3_set_impl(name=None):
    """Force an implementation by name (tests, benchmarks); None: the best this CPU has."""
    cdef bytes b
    cdef int rc
    if name is None:
        rc = c.mck_blake3_set_impl(NULL)
    else:
        b = str(name).encode()
        rc = c.mck_blake3_set_impl(b)
    if rc == -EINVAL:
        raise ValueError(f"unknown BLAKE3 implementation {name!r}; "
                         "choose one of 'avx512', 'avx2', 'sse2', 'portable'")
    if rc < 0:
        raise ValueError(f"BLAKE3 implementation {name!r} is not available on this CPU")
