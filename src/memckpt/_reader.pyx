# cython: language_level=3, boundscheck=False, wraparound=False, auto_pickle=False
"""Thin binding of the epoch reader (csrc/include/epoch_reader.h): no policy.

A ReadPlan resolves a chain's indexes to the units of a read once; run()
executes units on threads in C with the GIL released. A damaged store is a
ReadFault saying what and where (the store's layer words the error); any
other -errno is an OSError.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free

cimport memckpt._epoch_reader as c
from memckpt._check cimport check
from memckpt._read_sources cimport read_sources

import numpy as np

RECORD_SIZE = c.MCK_IDX_RECORD_SIZE
PACK_HEADER_SIZE = c.MCK_PACK_HEADER_SIZE
FLAG_ZERO = c.MCK_PAGE_ZERO
FLAG_ZSTD = c.MCK_PAGE_ZSTD
FLAG_LZ4 = c.MCK_PAGE_LZ4

FAULT_DIGEST = c.MCK_READ_FAULT_DIGEST
FAULT_SHORT = c.MCK_READ_FAULT_SHORT
FAULT_DECODE = c.MCK_READ_FAULT_DECODE
FAULT_RECORD = c.MCK_READ_FAULT_RECORD
FAULT_IO = c.MCK_READ_FAULT_IO


def codecs():
    """The compressions this build decodes in C: a subset of {'zstd', 'lz4'}."""
    cdef unsigned f = c.mck_read_codecs()
    return frozenset(name for name, bit in (("zstd", c.MCK_PAGE_ZSTD), ("lz4", c.MCK_PAGE_LZ4))
                     if f & bit)


class ReadFault(Exception):
    """What a read found wrong: kind (FAULT_*), the source (position in the
    chain), the record and page, the pack offset, how many pages of the unit
    were bad (digest), the codec's words (decode), the errno (io)."""

    def __init__(self, kind, source, record, page, offset, nbad, why, err):
        super().__init__(why or f"read fault {kind}")
        self.kind = kind
        self.source = source
        self.record = record
        self.page = page
        self.offset = offset
        self.nbad = nbad
        self.why = why
        self.err = err


cdef object _fault(c.mck_read_fault *f):
    return ReadFault(f.kind, f.source, f.record, f.page, f.offset, f.nbad,
                     f.why.decode(errors="replace"), -f.err)


cdef int _check(int rc, c.mck_read_fault *f, str what) except -1:
    if rc == 0:
        return 0
    if f.kind != c.MCK_READ_FAULT_NONE:
        raise _fault(f)
    return check(rc, what)


cdef class ReadPlan:
    """The read of one epoch into out (uint8, (npages, page_size), C-contiguous,
    writeable) from sources, oldest first: (fd, records, pack_size) with
    records the index's record array (56-byte records, page order). want:
    None, or the page numbers to read (strictly increasing). Keeps
    references to everything it reads or writes until closed.

    fill_huge (with out_is_zero): out is the whole of a fresh memckpt arena
    tracked at 4 KiB, in no one's hands yet: prefault() may back it with
    2 MiB pages, which split_huge() returns to 4 KiB page-table entries."""

    cdef c.mck_read_plan *plan
    cdef c.mck_read_source *sources
    cdef object keep
    cdef bint busy

    def __init__(self, sources, out, want=None, *, bint verify=True, bint out_is_zero=False,
                 bint defer_coded=False, bint fill_huge=False):
        cdef uint8_t[:, ::1] o = out
        cdef const uint64_t[::1] wv
        cdef const uint64_t *wp = NULL
        cdef uint64_t nwant = 0
        cdef uint32_t n = len(sources)
        cdef unsigned flags = 0
        cdef c.mck_read_fault fault
        cdef int rc
        cdef void *dest = &o[0, 0] if o.shape[0] else NULL
        cdef size_t ps = <size_t>o.shape[1]
        cdef uint64_t npages = <uint64_t>o.shape[0]
        if self.plan != NULL or self.sources != NULL:
            raise RuntimeError("a ReadPlan is planned once")
        self.keep = [out]
        self.sources = read_sources(sources, self.keep)
        if want is not None:
            w = np.ascontiguousarray(want, dtype=np.uint64)
            self.keep.append(w)
            wv = w
            nwant = <uint64_t>wv.shape[0]
            wp = &wv[0] if nwant else NULL
        if verify:
            flags |= c.MCK_READ_VERIFY
        if out_is_zero:
            flags |= c.MCK_READ_OUT_ZERO
        if defer_coded:
            flags |= c.MCK_READ_DEFER_CODED
        if fill_huge:
            if not out_is_zero:
                raise ValueError("fill_huge is for a fresh arena: it needs out_is_zero=True")
            flags |= c.MCK_READ_FILL_HUGE
        with nogil:
            rc = c.mck_read_plan_build(&self.plan, self.sources, n, dest, ps, npages,
                                       wp, nwant, flags, &fault)
        _check(rc, &fault, "planning the read")

    cdef int _planned(self) except -1:
        if self.plan == NULL:
            raise RuntimeError("this ReadPlan was not planned (its __init__ failed)")
        return 0

    def __dealloc__(self):
        c.mck_read_plan_free(self.plan)
        free(self.sources)

    @property
    def units(self):
        """Units of work in the plan."""
        self._planned()
        return c.mck_read_plan_units(self.plan)

    def pages(self, end=None):
        """Pages units [0, end) fill (default: all units)."""
        self._planned()
        cdef uint64_t e = c.mck_read_plan_units(self.plan) if end is None else end
        return c.mck_read_plan_pages(self.plan, e)

    def page_counts(self):
        """uint64 array of units + 1: [i] is the pages units [0, i) fill."""
        self._planned()
        cdef uint64_t n = c.mck_read_plan_units(self.plan), i
        out = np.empty(n + 1, dtype=np.uint64)
        cdef uint64_t[::1] ov = out
        for i in range(n + 1):
            ov[i] = c.mck_read_plan_pages(self.plan, i)
        return out

    def deferred(self):
        """The compressed pages left to the caller: (sources, records), arrays
        of the chain position (uint32) and the record index (uint64)."""
        self._planned()
        cdef uint64_t n = c.mck_read_plan_deferred(self.plan, NULL, NULL, 0)
        src = np.empty(n, dtype=np.uint32)
        rec = np.empty(n, dtype=np.uint64)
        cdef uint32_t[::1] sv = src
        cdef uint64_t[::1] rv = rec
        if n:
            c.mck_read_plan_deferred(self.plan, &sv[0], &rv[0], n)
        return src, rec

    def prefault(self, unsigned threads=0):
        """Fault in the 2 MiB blocks of out the plan fills wholly (an
        out_is_zero plan; else nothing), on `threads` threads (0: as run()),
        GIL released: (blocks, blocks asked for as 2 MiB pages)."""
        self._planned()
        cdef uint64_t huge = 0
        cdef int rc
        with nogil:
            rc = c.mck_read_plan_prefault(self.plan, threads, &huge)
        check(rc, "faulting in the arena")
        return rc, huge

    def fill_in_run(self):
        """Instead of prefault(): run() populates each whole 2 MiB block of
        out on the thread that reads into it, just before it does. The
        blocks it will populate, or 0 when that would not pay (call
        prefault() then)."""
        self._planned()
        cdef int rc
        with nogil:
            rc = c.mck_read_plan_fill_in_run(self.plan)
        check(rc, "preparing the arena's fill")
        return rc

    def huge_blocks(self):
        """The blocks run() asked for as 2 MiB pages so far (after fill_in_run())."""
        self._planned()
        return c.mck_read_plan_fill_huge_blocks(self.plan)

    def split_huge(self):
        """With fill_huge: the blocks prefault() (or run(), after fill_in_run())
        backed with 2 MiB pages are mapped by 4 KiB page-table entries again,
        out advised MADV_NOHUGEPAGE."""
        self._planned()
        cdef int rc
        with nogil:
            rc = c.mck_read_plan_split_huge(self.plan)
        check(rc, "splitting the arena's huge pages")

    def run(self, first=0, last=None, unsigned threads=0):
        """Read units [first, last) (default: to the end) on `threads` threads
        (0: the CPUs this process may use, fewer for a small read), GIL
        released throughout."""
        self._planned()
        cdef uint64_t f = first
        cdef uint64_t l = c.mck_read_plan_units(self.plan) if last is None else last
        cdef c.mck_read_fault fault
        cdef int rc
        if self.busy:
            raise RuntimeError("this ReadPlan is running in another thread")
        self.busy = True
        try:
            with nogil:
                rc = c.mck_read_plan_run(self.plan, f, l, threads, &fault)
        finally:
            self.busy = False
        _check(rc, &fault, "reading the epoch")
