# cython: language_level=3, boundscheck=False, wraparound=False, auto_pickle=False
"""Thin binding of the lazy restore server (csrc/lazy_restore.h): no policy.

A LazyServer plans the read of an epoch into a fresh arena (every page
missing), registers the arena with userfaultfd and starts the C handler and
drain threads; the constructor returns at once. Damage found is kept in C and
read back as a memckpt._reader.ReadFault (the store's layer words it)."""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, strerror

cimport memckpt._epoch_reader as r
cimport memckpt._lazy_restore as c
from memckpt._read_sources cimport read_sources

import numpy as np

from memckpt._reader import RECORD_SIZE, ReadFault  # noqa: F401 (RECORD_SIZE: re-exported)

RUNNING = c.MCK_LAZY_RUNNING
DRAINED = c.MCK_LAZY_DRAINED
STOPPED = c.MCK_LAZY_STOPPED
WHOLE_FILE = c.MCK_LAZY_WHOLE_FILE


cdef class LazyServer:
    """Serve ``sources`` (oldest first: (fd, records, pack_size), as for
    _reader.ReadPlan) into ``out`` (uint8 (npages, page_size), the arena's
    pages, none touched yet), at once: faults are resolved in the records
    while a thread of the server checks ``indexes`` (None: checked already;
    else one (buffer, digest) a source: the whole index file's bytes and its
    BLAKE3) and plans the drain. ``order``: pages whose units drain first.
    ``threads``: drain threads (0: the CPUs). ``hold``: the drain waits for
    release() (tests)."""

    cdef r.mck_read_source *sources
    cdef c.mck_lazy_index *indexes
    cdef c.mck_lazy *lazy
    cdef object keep

    def __init__(self, sources, out, order=None, *, indexes=None, bint verify=True,
                 unsigned threads=0, bint hold=False):
        cdef uint8_t[:, ::1] o = out
        cdef const uint8_t[::1] iv
        cdef const uint64_t[::1] ov
        cdef const uint64_t *op = NULL
        cdef uint64_t norder = 0
        cdef uint32_t n = len(sources), i
        cdef int rc
        cdef unsigned flags = (c.MCK_LAZY_VERIFY if verify else 0) | (c.MCK_LAZY_HOLD if hold else 0)
        cdef void *dest = &o[0, 0] if o.shape[0] else NULL
        cdef size_t ps = <size_t>o.shape[1]
        cdef uint64_t npages = <uint64_t>o.shape[0]
        if self.sources != NULL:
            raise RuntimeError("a LazyServer starts once")
        self.keep = [out]
        self.sources = read_sources(sources, self.keep)
        if indexes is not None:
            if len(indexes) != n:
                raise ValueError(f"{len(indexes)} indexes for {n} sources")
            self.indexes = <c.mck_lazy_index *>calloc(n if n else 1, sizeof(c.mck_lazy_index))
            if self.indexes == NULL:
                raise MemoryError()
            for i in range(n):
                data, digest = indexes[i]
                if len(digest) != 32:
                    raise ValueError(f"index {i}: a BLAKE3 digest is 32 bytes")
                memcpy(self.indexes[i].digest, <const char *>digest, 32)
                if data is None:
                    continue  # checked already: its records are, again, in C
                self.keep.append(data)
                iv = data
                self.indexes[i].data = &iv[0] if iv.shape[0] else NULL
                self.indexes[i].size = <uint64_t>iv.shape[0]
        if order is not None:
            w = np.ascontiguousarray(order, dtype=np.uint64)
            ov = w
            norder = <uint64_t>ov.shape[0]
            op = &ov[0] if norder else NULL
        with nogil:
            rc = c.mck_lazy_open(&self.lazy, self.sources, n, self.indexes, dest, ps, npages,
                                 op, norder, threads, flags)
        if rc != 0:
            raise OSError(-rc, f"starting the lazy restore: {strerror(-rc).decode()}")

    def __dealloc__(self):
        with nogil:
            c.mck_lazy_close(self.lazy)
        free(self.sources)
        free(self.indexes)

    cdef int _live(self) except -1:
        if self.lazy == NULL:
            raise RuntimeError("this LazyServer is closed")
        return 0

    def wait(self, timeout=None):
        """Wait for the drain (timeout in seconds, None: for ever): True once
        every page is mapped (or the server stopped), False on timeout."""
        self._live()
        cdef int ms = -1 if timeout is None else max(0, int(timeout * 1000))
        cdef int rc
        with nogil:
            rc = c.mck_lazy_wait(self.lazy, ms)
        return rc == 0

    def release(self):
        """Let a held drain begin."""
        self._live()
        c.mck_lazy_release(self.lazy)

    def stats(self):
        """The counters (see lazy_restore.h) as a dict."""
        self._live()
        cdef c.mck_lazy_stats st
        c.mck_lazy_get_stats(self.lazy, &st)
        return dict(npages=st.npages, faults=st.faults, fault_msgs=st.fault_msgs,
                    drained=st.drained, served=st.served, eexist=st.eexist, eagain=st.eagain,
                    removed=st.removed, bad=st.bad, bytes_read=st.bytes_read,
                    chunk_min=st.chunk_min, chunk_max=st.chunk_max, start_ns=st.start_ns,
                    planned_ns=st.planned_ns, drained_ns=st.drained_ns, state=st.state, err=-st.err)

    def first_fault(self):
        """A ReadFault for the first damaged page found, or None."""
        self._live()
        cdef r.mck_read_fault f
        c.mck_lazy_first_fault(self.lazy, &f)
        return None if f.kind == r.MCK_READ_FAULT_NONE else _fault(&f)

    def index_fault(self):
        """A ReadFault for an index found damaged in the background (record
        WHOLE_FILE: its digest), or None (none, or not checked yet)."""
        self._live()
        cdef r.mck_read_fault f
        if not c.mck_lazy_index_fault(self.lazy, &f):
            return None
        return _fault(&f)

    @property
    def planned(self):
        """True once the indexes are checked and the drain planned."""
        self._live()
        return bool(c.mck_lazy_planned(self.lazy))

    def touched(self):
        """uint64 array: the pages the program touched, in order of first touch."""
        self._live()
        return self._copy(0)

    def latencies(self):
        """uint64 array: each first touch's fault latency in ns (message read to page mapped)."""
        self._live()
        return self._copy(1)

    cdef object _copy(self, int which):
        cdef uint64_t n, got
        while True:
            n = c.mck_lazy_touched(self.lazy, NULL, 0) if which == 0 else \
                c.mck_lazy_latencies(self.lazy, NULL, 0)
            out = np.empty(n + 64, dtype=np.uint64)
            got = self._fill(which, out)
            if got <= n + 64:
                return out[:got]

    cdef uint64_t _fill(self, int which, object out):
        cdef uint64_t[::1] ov = out
        if which == 0:
            return c.mck_lazy_touched(self.lazy, &ov[0], <uint64_t>ov.shape[0])
        return c.mck_lazy_latencies(self.lazy, &ov[0], <uint64_t>ov.shape[0])

    @property
    def fd(self):
        """The handler's userfaultfd (closing it kills the handler: tests)."""
        self._live()
        return c.mck_lazy_fd(self.lazy)

    def kill_handler(self):
        """Tests: make the handler thread exit as if it had died."""
        self._live()
        c.mck_lazy_kill_handler(self.lazy)

    def close(self):
        """Finish the drain, join the threads, free (the arena stays mapped)."""
        cdef c.mck_lazy *l = self.lazy
        self.lazy = NULL
        with nogil:
            c.mck_lazy_close(l)
        if l != NULL:
            self.keep = None  # the arena's pages: it may be closed now


cdef object _fault(r.mck_read_fault *f):
    return ReadFault(f.kind, f.source, f.record, f.page, f.offset, f.nbad,
                     f.why.decode(errors="replace"), -f.err)
