# Included by _core.pyx (one module, memckpt._core) after _core_region.pxi:
# fork snapshots (csrc/capture_fork.c).
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
        "idx_digest": bytes(r.idx_digest[:32]),
        "extra_bytes": r.extra_bytes, "child_s": r.child_seconds,
        "pid": r.pid, "exit_code": r.exit_code, "signal": r.term_signal,
        "reported": bool(r.reported),
    }


cdef class ForkChild:
    """A child forked by fork_snapshot(), writing one epoch's files.

    read() (GIL released) waits for the child's result and returns it as a
    dict: ok, error (errno), stage ("ok", "setup", "pack", "index", "sync",
    "report", or "died": no whole result came), the counts (records, stored,
    dedup, zero), pack_size/idx_size, idx_digest (32 bytes),
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
