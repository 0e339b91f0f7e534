# cython: language_level=3, boundscheck=False, wraparound=False, auto_pickle=False
"""Thin binding of the C core (csrc/include/memckpt.h): no policy here.

Every call that may enter the kernel runs with the GIL released, and every
-errno the core returns becomes an OSError subclass through one helper.
"""
from cpython.buffer cimport PyBuffer_FillInfo
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport strerror

cimport memckpt._memckpt as c

import errno
import mmap

import numpy as np

PROBE_ERROR = c.MCK_PROBE_ERROR
PROBE_UNSUPPORTED = c.MCK_PROBE_UNSUPPORTED
PROBE_OK = c.MCK_PROBE_OK
PROP_EXACT = c.MCK_PROP_EXACT
PROP_KERNEL_WRITES = c.MCK_PROP_KERNEL_WRITES
PROP_CONCURRENT = c.MCK_PROP_CONCURRENT
BACKEND_COUNT = c.MCK_BACKEND_COUNT
BG_GAP_AUTO = c.MCK_BG_GAP_AUTO
BG_GAP_RUNS = c.MCK_BG_GAP_RUNS
BG_GAP_SPAN = (1 << 63) - 1


cdef int check(int64_t rc, str what) except -1:
    """Turn a -errno from the core into the OSError subclass for that errno."""
    if rc < 0:
        err = <int>-rc
        raise OSError(err, f"{what}: {strerror(err).decode()}")
    return 0


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


# ---- background capture (csrc/capture_bg.c) ----

def bg_supported(int backend):
    """(supported, reason): can this backend's tracker do background capture."""
    cdef char reason[512]
    cdef int rc
    reason[0] = 0
    with nogil:
        rc = c.mck_bg_supported(backend, reason, sizeof(reason))
    check(rc, "background capture status")
    return rc == 1, reason.decode(errors="replace")


cdef dict _bg_stats(c.mck_bg_stats *st):
    return {"pages": st.pages, "prearmed": st.prearmed, "runs": st.runs, "protect_calls": st.protect_calls,
            "protect_pages": st.protect_pages, "max_gap": st.max_gap,
            "faults_waited": st.faults_waited, "copied_early": st.copied_early,
            "collect_s": st.collect_ns * 1e-9, "protect_s": st.protect_ns * 1e-9,
            "copy_s": st.copy_ns * 1e-9}


cdef class Region:
    """One page-aligned mapping between guard pages, exported as a writable buffer."""
    cdef c.mck_region r
    cdef Py_ssize_t exports
    cdef int trackers

    def __cinit__(self, size_t nbytes, bint hugepages=False):
        cdef int rc
        cdef unsigned flags = c.MCK_REGION_HUGEPAGES if hugepages else 0
        with nogil:
            rc = c.mck_region_create(&self.r, nbytes, flags)
        check(rc, f"mapping {nbytes} bytes")

    def __dealloc__(self):
        # exports hold a reference to us, so none is left here
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
        with nogil:
            rc = c.mck_region_destroy(&self.r)
        check(rc, "unmapping region")

    def discard(self, size_t offset, size_t length):
        """Give [offset, offset+length) back to the kernel; it reads as zeros after."""
        cdef int rc
        self._check_open()
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


cdef class Tracker:
    """One dirty-page tracker over a whole Region."""
    cdef c.mck_tracker *t
    cdef Region region
    cdef uint64_t[::1] scratch
    cdef readonly str backend
    # background capture: what the pending copy reads and writes, kept alive
    # until bg_wait; the stats of a copy that close() finished
    cdef object bg_pages
    cdef object bg_staging
    cdef int bg_waiters
    cdef object bg_closed

    def __cinit__(self, Region region not None, int backend):
        cdef int rc
        cdef void *addr
        cdef size_t length
        region._check_open()
        addr = region.r.addr
        length = region.r.len
        with nogil:
            rc = c.mck_tracker_open(&self.t, backend, addr, length)
        check(rc, f"opening the {c.mck_backend_name(backend).decode()} tracker")
        self.region = region
        region.trackers += 1
        self.backend = c.mck_backend_name(backend).decode()
        self.scratch = np.empty(c.mck_tracker_npages(self.t), dtype=np.uint64)

    def __dealloc__(self):
        if self.t != NULL:
            c.mck_tracker_close(self.t)
            self.region.trackers -= 1

    @property
    def closed(self):
        return self.t == NULL

    @property
    def npages(self):
        return c.mck_tracker_npages(self.t) if self.t != NULL else 0

    @property
    def detached(self):
        """True in a child of fork(): the tracker is the parent's; here it
        refuses everything (ECHILD) and close() only frees this process's copy."""
        return self.t != NULL and c.mck_tracker_detached(self.t) == 1

    @property
    def owner(self):
        """The pid of the process that opened the tracker (0 once closed)."""
        return c.mck_tracker_owner(self.t) if self.t != NULL else 0

    cdef int _check_usable(self) except -1:
        if self.t == NULL:
            raise ValueError("tracker is closed")
        if c.mck_tracker_detached(self.t) == 1:
            raise OSError(errno.ECHILD, f"the {self.backend} tracker belongs to process "
                          f"{c.mck_tracker_owner(self.t)}, and this is a child of its fork(): "
                          "here it is detached and can only be closed")
        return 0

    def collect(self):
        """The sorted indices of the pages written since the last collect, as uint64."""
        cdef int64_t n
        cdef uint64_t *buf = &self.scratch[0]
        cdef size_t cap = self.scratch.shape[0]
        self._check_usable()
        with nogil:
            n = c.mck_tracker_collect(self.t, buf, cap)
        check(n, f"collecting dirty pages ({self.backend})")
        return np.asarray(self.scratch)[:n].copy()

    # ---- background capture ----
    def bg_begin(self, staging, long long max_gap=c.MCK_BG_GAP_AUTO, bint all_pages=False,
                 bint populated=False, extra=None):
        """Collect the dirty pages (every page with ``all_pages``; with
        ``populated`` also every page that may hold data; and the sorted
        page numbers ``extra``), write-protect them and start copying them
        into ``staging`` (a writable C-contiguous buffer of whole pages; page
        ``pages[i]`` goes to its i-th page). Returns (pages, stats): the sorted
        page numbers (read-only uint64) and the pause's figures. ``staging``
        must not be touched until :meth:`bg_wait` returns."""
        cdef int64_t n
        cdef c.mck_bg_stats st
        cdef uint64_t[::1] pages
        cdef const uint64_t[::1] more
        cdef const uint64_t *more_p = NULL
        cdef size_t cap, addr, nstaging, page_size, nmore = 0
        cdef unsigned flags = ((c.MCK_BG_ALL_PAGES if all_pages else 0)
                               | (c.MCK_BG_POPULATED if populated else 0))
        self._check_usable()
        if extra is not None:
            more = np.ascontiguousarray(extra, dtype=np.uint64)
            nmore = more.shape[0]
            if nmore:
                more_p = &more[0]
        arr = np.asarray(staging)
        if not arr.flags.c_contiguous or not arr.flags.writeable:
            raise ValueError("staging must be a writable C-contiguous buffer")
        page_size = self.region.r.len // c.mck_tracker_npages(self.t)
        if arr.nbytes % page_size:
            raise ValueError(f"staging holds {arr.nbytes} bytes, not a whole number of "
                             f"{page_size}-byte pages")
        nstaging = arr.nbytes // page_size
        addr = arr.ctypes.data
        out = np.empty(c.mck_tracker_npages(self.t), dtype=np.uint64)
        pages = out
        cap = pages.shape[0]
        with nogil:
            n = c.mck_bg_begin_ex(self.t, &pages[0], cap, <void *>addr, nstaging, max_gap,
                                  flags, more_p, nmore, &st)
        if n == -errno.EOPNOTSUPP:
            ok, why = bg_supported(c.mck_tracker_backend(self.t))
            raise OSError(errno.EOPNOTSUPP, why)
        if n == -errno.ENOBUFS and nstaging < c.mck_tracker_npages(self.t):
            raise OSError(errno.ENOBUFS, f"staging holds {nstaging} pages, fewer than the "
                          "pages written (nothing was lost: they stay dirty)")
        if n == -errno.EBUSY:
            raise OSError(errno.EBUSY, "a background copy is already pending on this "
                          "tracker: bg_wait() for it first")
        check(n, f"starting the background copy ({self.backend})")
        self.bg_pages = out
        self.bg_staging = arr
        self.bg_closed = None
        view = out[:n]
        view.flags.writeable = False
        return view, _bg_stats(&st)

    def bg_prearm(self, long long max_gap=c.MCK_BG_GAP_AUTO):
        """Write-protect now the pages written so far (they stay dirty), so
        that the next bg_begin protects only the pages written after this:
        a shorter pause. Returns how many pages it protected."""
        cdef int64_t n
        self._check_usable()
        with nogil:
            n = c.mck_bg_prearm(self.t, max_gap)
        if n == -errno.EOPNOTSUPP:
            ok, why = bg_supported(c.mck_tracker_backend(self.t))
            raise OSError(errno.EOPNOTSUPP, why)
        check(n, f"pre-arming ({self.backend})")
        return n

    def bg_wait(self):
        """Block (GIL released) until every page of the pending copy is in
        staging; returns the copy's figures."""
        cdef c.mck_bg_stats st
        cdef int rc
        if self.t == NULL:
            if self.bg_closed is not None:
                done, self.bg_closed = self.bg_closed, None
                return done
            raise ValueError("tracker is closed")
        self._check_usable()
        if self.bg_pages is None:
            raise ValueError("no background copy is pending: bg_begin() first")
        self.bg_waiters += 1
        try:
            with nogil:
                rc = c.mck_bg_wait(self.t, &st)
        finally:
            self.bg_waiters -= 1
        self.bg_pages = self.bg_staging = None
        check(rc, f"background copy ({self.backend})")
        return _bg_stats(&st)

    @property
    def bg_pending(self):
        return self.bg_pages is not None

    def close(self):
        cdef c.mck_tracker *t = self.t
        cdef c.mck_bg_stats st
        cdef int rc
        if t == NULL:
            return
        if c.mck_tracker_detached(t) == 1:
            # a fork child's copy: the copy and its waiter are the parent's
            # threads, not in this process; the core only frees our copy
            self.bg_pages = self.bg_staging = None
            self.bg_waiters = 0
            self.t = NULL
            c.mck_tracker_close(t)
            self.region.trackers -= 1
            return
        if self.bg_waiters:
            raise RuntimeError("bg_wait() is running in another thread; close after it returns")
        if self.bg_pages is not None:
            # the copy is finished, not abandoned: its staging stays a snapshot
            with nogil:
                rc = c.mck_bg_wait(t, &st)
            self.bg_closed = _bg_stats(&st) if rc == 0 else None
            self.bg_pages = self.bg_staging = None
        self.t = NULL
        with nogil:
            c.mck_tracker_close(t)
        self.region.trackers -= 1


# ---- fork snapshots (csrc/capture_fork.c) -------------------------------------------
from libc.errno cimport ECHILD, EINVAL
from libc.stdint cimport uint8_t
from libc.string cimport memcpy, memset
from posix.signal cimport kill as _kill
from posix.unistd cimport getpid

import mmap as _mmap

_FORK_STAGES = {
    c.MCK_FORK_OK: "ok", c.MCK_FORK_STAGE_SETUP: "setup", c.MCK_FORK_STAGE_PACK: "pack",
    c.MCK_FORK_STAGE_INDEX: "index", c.MCK_FORK_STAGE_SYNC: "sync",
    c.MCK_FORK_STAGE_REPORT: "report", c.MCK_FORK_STAGE_DIED: "died",
}
FORK_IDX_HEADER_SIZE = c.MCK_FORK_IDX_HEADER_SIZE


def fork_scratch_size(size_t n):
    """Bytes of scratch a fork snapshot of n pages needs."""
    return c.mck_fork_scratch_size(n)


cdef dict _fork_result(c.mck_fork_result *r, int rc):
    return {
        "ok": rc == 0, "error": -rc if rc < 0 else 0,
        "stage": _FORK_STAGES.get(r.stage, str(r.stage)),
        "records": r.records, "stored": r.stored, "dedup": r.dedup, "zero": r.zero,
        "pack_size": r.pack_size, "idx_size": r.idx_size,
        "pack_digest": bytes(r.pack_digest[:32]), "idx_digest": bytes(r.idx_digest[:32]),
        "extra_bytes": r.extra_bytes, "child_s": r.child_seconds,
        "pid": r.pid, "exit_code": r.exit_code, "signal": r.term_signal,
        "reported": bool(r.reported),
    }


cdef class ForkChild:
    """A child forked by fork_snapshot(), writing one epoch's files.

    read() (GIL released) waits for the child's result and returns it as a
    dict: ok, error (errno), stage ("ok", "setup", "pack", "index", "sync",
    "report", or "died": no whole result came), the counts (records, stored,
    dedup, zero), pack_size/idx_size, pack_digest/idx_digest (32 bytes each),
    extra_bytes, child_s, pid, exit_code (-1 if killed or not yet reaped),
    signal, reported. A child that reported is left to exit on its own (its
    files are durable already); one that did not is reaped by read().
    wait() reads if needed, then reaps, and returns the same dict with the
    exit fields. Later calls return the same dict. kill() sends SIGKILL and
    reaps (from another thread while read()/wait() blocks: only sends, and
    they reap). A ForkChild dropped unreaped is killed and reaped."""
    cdef c.mck_fork_child ch
    cdef c.mck_fork_result res
    cdef object scratch   # the child writes it (shared memory): held until it reported
    cdef dict report      # after read()
    cdef dict result      # after the reap
    cdef bint waiting
    cdef readonly int pid

    def __cinit__(self):
        self.ch.pid = -1
        self.ch.fd = -1
        self.pid = -1

    def __dealloc__(self):
        if self.ch.pid >= 0 or self.ch.fd >= 0:
            c.mck_fork_kill(&self.ch)

    @property
    def running(self):
        """True until the child is reaped (by read() of a dead child, wait() or kill())."""
        return self.result is None

    cdef int _enter(self) except -1:
        if self.waiting:
            raise RuntimeError(f"another thread is already waiting for fork child {self.pid}")
        self.waiting = True
        return 0

    cdef int _check_owner(self) except -1:
        if self.ch.owner != 0 and self.ch.owner != getpid():
            c.mck_fork_kill(&self.ch)  # inherited: closes only our copy of the pipe
            raise OSError(ECHILD, f"fork child {self.pid} belongs to process {self.ch.owner}; "
                          "this is a child of its fork(), which must not read, reap or kill it")
        return 0

    def read(self):
        cdef int rc
        if self.result is not None:
            return dict(self.result)
        if self.report is not None:
            return dict(self.report)
        self._check_owner()
        self._enter()
        try:
            with nogil:
                rc = c.mck_fork_read(&self.ch, &self.res)
        finally:
            self.waiting = False
        self.scratch = None  # it reported, or it is gone: the child no longer writes it
        self.report = _fork_result(&self.res, rc)
        if self.ch.pid < 0:
            self.result = self.report
        return dict(self.report)

    def wait(self):
        cdef int rc
        if self.result is not None:
            return dict(self.result)
        self._check_owner()
        self._enter()
        try:
            with nogil:
                rc = c.mck_fork_wait(&self.ch, &self.res)
        finally:
            self.waiting = False
        self.scratch = None
        self.result = _fork_result(&self.res, rc)
        return dict(self.result)

    def kill(self):
        cdef int rc
        if self.result is not None:
            return
        self._check_owner()
        if self.waiting:
            if self.ch.pid >= 0:
                _kill(self.ch.pid, 9)
            return
        with nogil:
            rc = c.mck_fork_kill(&self.ch)
        check(rc, f"killing fork child {self.pid}")
        self.scratch = None
        if self.report is not None:  # it had reported: what it reported stands
            self.result = dict(self.report, signal=9, exit_code=-1)
            return
        memset(&self.res, 0, sizeof(self.res))
        self.res.stage = c.MCK_FORK_STAGE_DIED
        self.res.pid = self.pid
        self.res.exit_code = -1
        self.res.term_signal = 9  # SIGKILL, ours
        self.result = _fork_result(&self.res, -ECHILD)  # it left no result


def fork_snapshot(Region region not None, size_t page_size, const uint64_t[::1] pages not None,
                  bint incremental, int pack_fd, uint64_t pack_offset, bytes pack_header not None,
                  int idx_fd, bytes idx_header not None, scratch=None):
    """Fork a child that writes region's pages `pages` (sorted page numbers) as
    one epoch: the pages to pack_fd from pack_offset on (pack_header, already in
    the file, is what the pack's digest starts with), header and records to
    idx_fd. scratch: a writable buffer of fork_scratch_size(len(pages)) bytes
    the caller does not touch until the child is reaped (best: an anonymous
    mmap touched once, so the child's writes to it copy nothing); None
    allocates one. Returns a ForkChild; the parent continues at once."""
    cdef c.mck_fork_job job
    cdef ForkChild child
    cdef unsigned char[::1] sc
    cdef size_t need = c.mck_fork_scratch_size(pages.shape[0])
    cdef int rc
    region._check_open()
    if len(idx_header) != c.MCK_FORK_IDX_HEADER_SIZE:
        raise ValueError(f"idx_header must be {c.MCK_FORK_IDX_HEADER_SIZE} bytes, not {len(idx_header)}")
    if len(pack_header) != pack_offset:
        raise ValueError(f"pack_offset {pack_offset} must be the pack header's length ({len(pack_header)})")
    if page_size == 0 or region.r.len % page_size:
        raise ValueError(f"page_size {page_size} does not divide the region's {region.r.len} bytes")
    if scratch is None:
        scratch = _mmap.mmap(-1, max(need, 1))
    sc = scratch
    if <size_t>sc.shape[0] < need:
        raise ValueError(f"scratch of {sc.shape[0]} bytes is smaller than the {need} needed")
    job.base = region.r.addr
    job.page_size = page_size
    job.npages = region.r.len // page_size
    job.pages = &pages[0] if pages.shape[0] else NULL
    job.n = pages.shape[0]
    job.incremental = incremental
    job.pack_fd = pack_fd
    job.pack_off = pack_offset
    job.pack_header = <const uint8_t *><const char *>pack_header
    job.pack_header_len = len(pack_header)
    job.idx_fd = idx_fd
    memcpy(job.idx_header, <const char *>idx_header, c.MCK_FORK_IDX_HEADER_SIZE)
    job.scratch = &sc[0]
    job.scratch_len = sc.shape[0]
    child = ForkChild.__new__(ForkChild)
    with nogil:
        rc = c.mck_fork_start(&job, &child.ch)
    if rc == -EINVAL:
        raise ValueError("fork_snapshot: pages must be strictly increasing page numbers "
                         f"below the region's {job.npages} pages")
    check(rc, "forking the snapshot child")
    child.pid = child.ch.pid
    child.scratch = scratch
    return child

# ---- hashing (BLAKE3 of the core, csrc/blake3.c) ------------------------------------
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
include "_core_pause.pxi"
