# Included by _core.pyx (one module, memckpt._core): Region, one page-aligned
# mapping (csrc/region.c, csrc/populated.c).
from cpython.buffer cimport (PyBuffer_FillInfo, PyObject_GetBuffer, PyBuffer_Release,
                             PyBUF_WRITABLE, PyBUF_ANY_CONTIGUOUS)


cdef class Region:
    """One page-aligned mapping between guard pages, exported as a writable buffer.

    ``Region(0, adopt=obj)`` instead covers the pages of a writable, contiguous
    buffer the program already has (held until close): ``own_offset`` and
    ``own_len`` say where its bytes are; the rest of the first and last page
    is its neighbours', which only a range tracker keeps apart."""
    cdef c.mck_region r
    cdef Py_ssize_t exports
    cdef int trackers
    cdef Py_buffer adopted_view
    cdef readonly bint adopted
    cdef readonly size_t own_offset, own_len

    def __cinit__(self, size_t nbytes, bint hugepages=False, adopt=None):
        cdef int rc
        cdef unsigned flags = c.MCK_REGION_HUGEPAGES if hugepages else 0
        cdef size_t ps = mmap.PAGESIZE, start, lo, hi
        if adopt is not None:
            PyObject_GetBuffer(adopt, &self.adopted_view, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
            if self.adopted_view.len <= 0:
                PyBuffer_Release(&self.adopted_view)
                raise ValueError("an empty buffer has nothing to track")
            self.adopted = True
            start = <size_t>self.adopted_view.buf
            lo = start // ps * ps
            hi = (start + <size_t>self.adopted_view.len + ps - 1) // ps * ps
            self.own_offset = start - lo
            self.own_len = <size_t>self.adopted_view.len
            self.r.addr = <void *>lo
            self.r.len = hi - lo
            self.r.map_base = <void *>lo  # open; never unmapped by us
            return
        with nogil:
            rc = c.mck_region_create(&self.r, nbytes, flags)
        check(rc, f"mapping {nbytes} bytes")

    def __dealloc__(self):
        # exports hold a reference to us, so none is left here
        if self.adopted:
            if self.r.map_base != NULL:
                PyBuffer_Release(&self.adopted_view)
            return
        if self.r.map_base != NULL:
            c.mck_region_destroy(&self.r)

    @property
    def address(self):
        return <size_t>self.r.addr

    @property
    def nbytes(self):
        return self.r.len

    @property
    def closed(self):
        return self.r.map_base == NULL

    @property
    def exports(self):
        return self.exports

    def close(self):
        cdef int rc
        if self.r.map_base == NULL:
            return
        if self.trackers:
            raise BufferError(f"{self.trackers} tracker(s) still open on this region; close them first")
        if self.exports:
            raise BufferError(f"{self.exports} buffer export(s) (numpy arrays, memoryviews) "
                              "still reference this region")
        if self.adopted:
            PyBuffer_Release(&self.adopted_view)
            self.r.map_base = NULL
            return
        with nogil:
            rc = c.mck_region_destroy(&self.r)
        check(rc, "unmapping region")

    def discard(self, size_t offset, size_t length):
        """Give [offset, offset+length) back to the kernel; it reads as zeros after."""
        cdef int rc
        self._check_open()
        if self.adopted:
            raise ValueError("an adopted buffer's pages are the program's: not discarded")
        with nogil:
            rc = c.mck_region_discard(&self.r, offset, length)
        check(rc, "discarding pages")

    def populated(self, bint read=False):
        """The sorted numbers (uint64) of the region's pages that may hold
        data: present and not the shared zero page, or swapped out; every
        other page reads as zero (csrc/populated.c). ``read`` asks
        /proc/self/pagemap even where PAGEMAP_SCAN works."""
        cdef int64_t n
        cdef size_t cap
        cdef uint64_t[::1] buf
        cdef void *addr
        cdef size_t length
        cdef unsigned flags = c.MCK_POPULATED_READ if read else 0
        self._check_open()
        addr, length = self.r.addr, self.r.len
        cap = length // mmap.PAGESIZE
        out = np.empty(max(cap, 1), dtype=np.uint64)
        buf = out
        with nogil:
            n = c.mck_pages_populated(addr, length, &buf[0], cap, flags)
        check(n, "listing the populated pages")
        # a mostly empty region's list is short: keep only that much
        return out[:n] if <size_t>n == cap else out[:n].copy()

    cdef int _check_open(self) except -1:
        if self.r.map_base == NULL:
            raise ValueError("region is closed")
        return 0

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        self._check_open()
        PyBuffer_FillInfo(buffer, self, self.r.addr, <Py_ssize_t>self.r.len, 0, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self.exports -= 1
