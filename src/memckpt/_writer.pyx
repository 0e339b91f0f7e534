# cython: language_level=3, boundscheck=False, wraparound=False, auto_pickle=False
"""Thin binding of the C epoch writer (csrc/epoch_writer.c): no policy here.

PackWriter writes one epoch's pages into its pack file and, at finish(), its
index: zero pages elided, BLAKE3 digests, dedup, vectored writes, with
threads; the GIL is released for every call that does work. The store's
EpochWriter (store/packing.py, store/commit.py) drives it.
"""
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

cimport memckpt._epoch_writer as c
from memckpt._check cimport check

import numpy as np

RECORD_SIZE = c.MCK_IDX_RECORD_SIZE
NO_EARLY_FLUSH = c.MCK_EW_NO_EARLY_FLUSH
NO_PACK_DIGEST = c.MCK_EW_NO_PACK_DIGEST


def codecs():
    """The MCK_PAGE_* compression flags this build's writer encodes (and its
    reader decodes): FLAG_ZSTD, FLAG_LZ4 or both, or 0."""
    return c.mck_codec_flags()


def cpus_available():
    """The CPUs this process may run on (sched_getaffinity): the default thread count."""
    return c.mck_cpus_available()


def cpus_idle():
    """Of those, how many no runnable task holds now (/proc/loadavg's
    runnable count, the caller included), or -1 if that cannot be read:
    what a pause gives the writer's threads beside its copy."""
    cdef int n = c.mck_cpus_idle()
    return n if n >= 0 else -1


cdef const uint64_t[::1] _u64(object a, str what):
    if not isinstance(a, np.ndarray) or a.dtype != np.uint64 or a.ndim != 1:
        raise TypeError(f"{what} must be a 1-D uint64 numpy array")
    return np.ascontiguousarray(a)


cdef class PackWriter:
    """The pages of one epoch into its pack (fd open for writing, the header
    already written). Not thread-safe: one caller at a time."""
    cdef c.mck_ew *w
    cdef readonly size_t page_size
    # what an add running beyond its call reads (mck_ew_add_async): kept
    # alive until wait(), cancel() or close() has joined its threads
    cdef object _reading

    def __cinit__(self, int pack_fd, size_t page_size, uint64_t npages, bint incremental,
                  bytes pack_header not None, int threads=0, unsigned flags=0,
                  unsigned compress=0, int level=0):
        cdef c.mck_ew_config cfg
        cdef int rc
        cfg.pack_fd = pack_fd
        cfg.page_size = page_size
        cfg.npages = npages
        cfg.incremental = incremental
        cfg.pack_header = <const uint8_t *>pack_header
        cfg.pack_header_len = len(pack_header)
        cfg.threads = threads
        cfg.flags = flags
        cfg.compress = compress
        cfg.level = level
        with nogil:
            rc = c.mck_ew_open(&cfg, &self.w)
        check(rc, "epoch writer")
        self.page_size = page_size

    def __dealloc__(self):
        # a running add is cancelled and joined first, before _reading goes
        with nogil:
            c.mck_ew_close(self.w)
        self.w = NULL

    cdef int _open(self) except -1:
        if self.w == NULL:
            raise ValueError("the pack writer is closed")
        return 0

    cdef int _idle(self) except -1:
        self._open()
        if c.mck_ew_busy(self.w):
            raise ValueError("the pack writer is still adding pages (wait() first)")
        return 0

    def close(self):
        """Free the writer's memory (its records); the fds are the caller's.
        A running add (add_async) is cancelled and waited for first."""
        with nogil:
            c.mck_ew_close(self.w)
        self.w = NULL
        self._reading = None

    @property
    def busy(self):
        """Whether an add runs beyond its call (add_async, or a pause's:
        _core.pause_copy), not yet waited for."""
        return self.w != NULL and c.mck_ew_busy(self.w)

    def reading(self, base):
        """Keep ``base`` alive while the running add reads it (an add a
        pause started on this writer's address): until wait(), cancel() or
        close()."""
        self._open()
        if c.mck_ew_busy(self.w):
            self._reading = base

    def _check_base(self, base):
        if not isinstance(base, np.ndarray) or base.dtype != np.uint8 or base.ndim != 2 \
                or base.shape[1] != self.page_size or not base.flags.c_contiguous:
            raise ValueError(f"base must be C-contiguous uint8 of shape (n, {self.page_size})")

    def add_async(self, base, pages, size_t ready=0, int threads=1):
        """add() of ``pages`` from rows 0.. of ``base`` that runs beyond
        this call: ``threads`` of its threads start now, the rest at
        ready(len(pages)); rows [0, ``ready``) are in now, the others once
        ready() says so. ``base`` is kept until wait(), cancel() or close()."""
        self._idle()
        self._check_base(base)
        cdef const uint64_t[::1] p = _u64(pages, "pages")
        cdef size_t n = p.shape[0]
        if base.shape[0] < <Py_ssize_t>n:
            raise ValueError(f"base has {base.shape[0]} rows for {n} pages")
        if n == 0:
            return
        cdef const uint8_t[:, ::1] b = base
        cdef uint64_t nrows = <uint64_t>b.shape[0]
        cdef int rc
        with nogil:
            rc = c.mck_ew_add_async(self.w, &b[0, 0], nrows, &p[0], NULL, n, ready, threads)
        check(rc, "writing pages")
        self._reading = base

    def ready(self, size_t ready, int threads=1 << 30):
        """Rows [0, ready) of the running add are in; at least ``threads``
        of its threads run from now on (default: all of the writer's)."""
        self._open()
        with nogil:
            c.mck_ew_add_ready(self.w, ready, threads)

    def wait(self):
        """Wait for the running add, if any, and raise its error (an add
        whose rows were not all said to be in: ECANCELED)."""
        self._open()
        cdef int rc
        with nogil:
            rc = c.mck_ew_wait(self.w)
        if not c.mck_ew_busy(self.w):
            self._reading = None
        check(rc, "writing pages")

    def cancel(self):
        """Stop the running add, if any, and wait for its threads: the
        writer has failed unless the add had finished."""
        if self.w == NULL:
            return
        with nogil:
            c.mck_ew_cancel(self.w)
        if not c.mck_ew_busy(self.w):
            self._reading = None

    def add(self, base, pages, rows=None):
        """Add the pages `pages` (uint64, strictly increasing, above every page
        added before), page i's bytes being row rows[i] of base (uint8,
        (nrows, page_size), C-contiguous; rows None: row i)."""
        self._idle()
        self._check_base(base)
        cdef const uint64_t[::1] p = _u64(pages, "pages")
        cdef const uint64_t[::1] r
        cdef const uint64_t *rp = NULL
        cdef size_t n = p.shape[0]
        if rows is not None:
            r = _u64(rows, "rows")
            if r.shape[0] != n:
                raise ValueError(f"{r.shape[0]} rows for {n} pages")
            rp = &r[0] if n else NULL
        elif base.shape[0] < <Py_ssize_t>n:
            raise ValueError(f"base has {base.shape[0]} rows for {n} pages")
        if n == 0:
            return
        cdef const uint8_t[:, ::1] b = base
        cdef uint64_t nrows = <uint64_t>b.shape[0]
        cdef int rc
        with nogil:
            rc = c.mck_ew_add(self.w, &b[0, 0], nrows, &p[0], rp, n)
        check(rc, "writing pages")

    def address(self):
        """The C writer's address (struct mck_ew *), for a pause that adds
        pages in C with the GIL held (_core.pause_copy): valid while this
        object lives and is not closed."""
        self._open()
        return <size_t>self.w

    def stats(self):
        """{records, stored, dedup, zero, pack_size, threads}"""
        self._idle()
        cdef c.mck_ew_stats st
        c.mck_ew_read_stats(self.w, &st)
        return {"records": st.records, "stored": st.stored, "dedup": st.dedup, "zero": st.zero,
                "pack_size": st.pack_size, "threads": st.threads}

    def records(self):
        """A copy of the records so far, as bytes (RECORD_SIZE each)."""
        self._idle()
        cdef uint64_t n
        cdef const c.mck_idx_record *recs = c.mck_ew_records(self.w, &n)
        out = bytearray(n * c.MCK_IDX_RECORD_SIZE)
        cdef uint8_t[::1] o = out
        if n:
            with nogil:
                memcpy(&o[0], recs, n * c.MCK_IDX_RECORD_SIZE)
        return bytes(out)

    def pack_digest(self):
        """BLAKE3 of the pack as written so far (32 bytes); ValueError for a
        writer opened with NO_PACK_DIGEST."""
        self._idle()
        cdef uint8_t out[32]
        if c.mck_ew_pack_digest(self.w, out) < 0:
            raise ValueError("this writer keeps no pack digest (opened with NO_PACK_DIGEST)")
        return out[:32]

    def finish(self, int idx_fd, bytes idx_header not None):
        """fdatasync the pack, write the index (header + records) to idx_fd and
        fdatasync it; returns (index size, index digest)."""
        self._idle()
        if len(idx_header) != c.MCK_IDX_HEADER_SIZE:
            raise ValueError(f"the index header is {c.MCK_IDX_HEADER_SIZE} bytes, not {len(idx_header)}")
        cdef const uint8_t *hdr = <const uint8_t *>idx_header
        cdef uint8_t digest[32]
        cdef uint64_t size = 0
        cdef int rc
        with nogil:
            rc = c.mck_ew_finish(self.w, idx_fd, hdr, digest, &size)
        check(rc, "finishing the epoch's files")
        return size, digest[:32]
