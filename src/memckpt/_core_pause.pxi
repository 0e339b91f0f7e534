# ---- the snapshot of a pause (csrc/pause.c) ------------------------------------------
# Included by _core.pyx after _core_fork.pxi. Each call below is the whole instant of a pause, made
# with the GIL held and no Python code run between its steps: no other Python
# thread runs from the collect to the end of the copy (or the fork), so the
# epoch is one instant of every Python writer. (A native thread that writes
# with the GIL released is not stopped: docs/checkpointing.md.)

from libc.string cimport memcpy, strerror


cdef class PauseBuffers:
    """What a pause writes its page lists into, allocated before the pause
    (an allocation in it could run a finalizer, i.e. Python code)."""
    cdef uint64_t[::1] dirty
    cdef uint64_t[::1] full
    cdef uint64_t[::1] tmp
    cdef object _dirty, _full, _tmp

    def __cinit__(self, size_t npages):
        self._dirty = np.empty(max(npages, 1), dtype=np.uint64)
        self._full = np.empty(max(npages, 1), dtype=np.uint64)
        self._tmp = np.empty(max(npages, 1), dtype=np.uint64)
        self.dirty, self.full, self.tmp = self._dirty, self._full, self._tmp


PAUSE_POPULATED = c.MCK_PAUSE_POPULATED
PAUSE_EVERY_PAGE = c.MCK_PAUSE_EVERY_PAGE


cdef int64_t _pause_pages(Tracker tracker, Region region, size_t page_size, carry, int full,
                          PauseBuffers b, c.mck_pause_out *o) except -2:
    cdef const uint64_t[::1] cv
    cdef c.mck_pause_job job
    cdef int64_t n
    tracker._check_usable()
    region._check_open()
    if <size_t>b.dirty.shape[0] < c.mck_tracker_npages(tracker.t):
        raise ValueError("the pause buffers are smaller than the tracker's pages")
    job.base = region.r.addr
    job.page_size = page_size
    job.full = full
    job.carry = NULL
    job.ncarry = 0
    if carry is not None and len(carry):
        cv = carry
        job.carry = &cv[0]
        job.ncarry = cv.shape[0]
    o.dirty = &b.dirty[0]
    o.full = &b.full[0]
    o.tmp = &b.tmp[0]
    o.cap = b.dirty.shape[0]
    n = c.mck_pause_pages(tracker.t, &job, o)   # the GIL held: the instant
    if n == -EINVAL:
        raise ValueError("pause: the carried pages must be sorted, unique and within the arena")
    check(n, f"collecting dirty pages ({tracker.backend})")  # nothing collected (see pause.c)
    return n


cdef tuple _pause_lists(PauseBuffers b, int64_t n, int full, c.mck_pause_out *o):
    dirty = b._dirty[:o.ndirty].copy()
    pages = b._full[:n].copy() if full else dirty
    return pages, dirty, o.reported


# the pieces a pause copies before telling an asynchronous add they are in:
# the epoch writer's window (8 MiB), the unit its threads take up
_PIECE_BYTES = 8 << 20


def pause_copy(Tracker tracker not None, Region region not None, size_t page_size, carry,
               int full, PauseBuffers bufs not None, unsigned char[:, ::1] staging not None,
               size_t room, size_t sink=0, size_t async_min=0, int pause_threads=1):
    """The pause of modes copy and sync: collect (plus ``carry``, the sorted
    pages of a failed epoch; ``full``: 0, or for a full epoch PAUSE_POPULATED
    (the pages that may hold data) or PAUSE_EVERY_PAGE), then, if ``sink``
    (the address of an epoch's C writer, PackWriter.address()), add the
    epoch's pages beyond the last ``min(n, room)`` to it straight from the
    region, and copy those last pages into ``staging`` rows 0..; all with
    the GIL held (the writer's own threads need no GIL).

    With a sink and at least ``async_min`` pages staged (0: never), the
    staged pages go to the sink too, as an add that runs beyond this call
    (mck_ew_add_async): ``pause_threads`` of its threads start at once and
    take each piece of staging as the copy fills it, the rest of its threads
    start at the end of the copy, and the add keeps going after the return:
    the caller waits for it (PackWriter.wait()) before the writer's next
    use, and keeps ``staging`` untouched until then. ``pause_threads`` is
    lowered to the CPUs idle at that instant (mck_cpus_idle).

    Returns (pages, dirty, reported, nstaged, nsunk, held_s, error,
    staged_async, pause_writers): the epoch's pages (sorted), what was collected with the
    carry, the tracker's own count, how many of the pages' tail are staged,
    how many of their head went to the sink (without a sink the caller
    writes pages[:len(pages) - nstaged] itself), how long the GIL was held
    from the collect to the end of the copy and the sink's write (no other
    Python thread ran: the program's pause), the sink's failure as an
    OSError (not raised: the pages were collected) or None, whether the
    staged pages went to the sink (asynchronously), and how many of the
    sink's threads ran beside the copy."""
    cdef c.mck_pause_out o
    cdef int64_t n
    cdef size_t nstaged, nsunk = 0, lo, hi, piece
    cdef const uint64_t *all_pages
    cdef const uint64_t *tail
    cdef int rc = 0
    cdef bint staged_async = False
    cdef int idle
    cdef double t0, t1
    if staging.shape[1] != page_size or <size_t>staging.shape[0] < room:
        raise ValueError(f"staging must hold {room} pages of {page_size} bytes, "
                         f"not {staging.shape[0]} of {staging.shape[1]}")
    t0 = _monotonic()
    n = _pause_pages(tracker, region, page_size, carry, full, bufs, &o)
    nstaged = min(<size_t>n, room)
    all_pages = &bufs.full[0] if full else &bufs.dirty[0]
    if sink and <size_t>n > nstaged:
        nsunk = <size_t>n - nstaged
        # rows are page numbers: the region's pages, no copy
        rc = ew.mck_ew_add(<ew.mck_ew *>sink, region.r.addr, region.r.len // page_size,
                           all_pages, all_pages, nsunk)
    if nstaged:
        tail = all_pages + (<size_t>n - nstaged)
        if sink and rc == 0 and async_min and nstaged >= async_min:
            if pause_threads > 0:
                # only CPUs no one else wants: a thread beside the copy on a
                # busy machine takes CPU from the copy, and the pause grows
                idle = ew.mck_cpus_idle()
                if 0 <= idle < pause_threads:
                    pause_threads = idle
            # rows: staging's, 0.. (NULL)
            staged_async = ew.mck_ew_add_async(<ew.mck_ew *>sink, &staging[0, 0],
                                               staging.shape[0], tail, NULL, nstaged, 0,
                                               pause_threads) == 0
        if staged_async:
            piece = max(<size_t>1, _PIECE_BYTES // page_size)
            lo = 0
            while lo < nstaged:
                hi = min(lo + piece, nstaged)
                c.mck_copy_pages(region.r.addr, page_size, tail + lo, hi - lo, &staging[lo, 0])
                lo = hi
                ew.mck_ew_add_ready(<ew.mck_ew *>sink, lo,
                                    pause_threads if lo < nstaged else 1 << 30)
        else:
            c.mck_copy_pages(region.r.addr, page_size, tail, nstaged, &staging[0, 0])
    t1 = _monotonic()
    # the instant is over: from here Python may run
    pages, dirty, reported = _pause_lists(bufs, n, full, &o)
    err = None
    if rc < 0:
        err = OSError(-rc, strerror(-rc).decode())
        nsunk = 0
    return (pages, dirty, reported, nstaged, nsunk, t1 - t0, err, staged_async,
            pause_threads if staged_async else 0)


def pause_fork(Tracker tracker not None, Region region not None, size_t page_size, carry,
               int full, PauseBuffers bufs not None, bint incremental, int pack_fd,
               uint64_t pack_offset, bytes pack_header not None, int idx_fd,
               bytes idx_header not None, scratch not None):
    """The pause of mode fork: collect as pause_copy() does, then fork the
    child that writes the epoch's pages (see fork_snapshot), with the GIL
    held from the collect to the fork. Returns (pages, dirty, reported,
    child, collect_s, fork_s, error): a fork that failed is ``error`` (an
    OSError; child None), not raised, since its pages were collected."""
    cdef c.mck_pause_out o
    cdef c.mck_fork_job job
    cdef unsigned char[::1] sc = scratch
    cdef ForkChild child = ForkChild.__new__(ForkChild)
    cdef int64_t n
    cdef int rc
    cdef double t0, t1, t2
    if len(idx_header) != c.MCK_FORK_IDX_HEADER_SIZE:
        raise ValueError(f"idx_header must be {c.MCK_FORK_IDX_HEADER_SIZE} bytes, not {len(idx_header)}")
    if len(pack_header) != pack_offset:
        raise ValueError(f"pack_offset {pack_offset} must be the pack header's length ({len(pack_header)})")
    if page_size == 0 or region.r.len % page_size:
        raise ValueError(f"page_size {page_size} does not divide the region's {region.r.len} bytes")
    if <size_t>sc.shape[0] < c.mck_fork_scratch_size(c.mck_tracker_npages(tracker.t)):
        raise ValueError("scratch is smaller than a full epoch of the region needs")
    t0 = _monotonic()
    n = _pause_pages(tracker, region, page_size, carry, full, bufs, &o)
    t1 = _monotonic()
    job.base = region.r.addr
    job.page_size = page_size
    job.npages = region.r.len // page_size
    job.pages = (&bufs.full[0] if full else &bufs.dirty[0]) if n else NULL
    job.n = <size_t>n
    job.incremental = incremental
    job.pack_fd = pack_fd
    job.pack_off = pack_offset
    job.pack_header = <const uint8_t *><const char *>pack_header
    job.pack_header_len = len(pack_header)
    job.idx_fd = idx_fd
    memcpy(job.idx_header, <const char *>idx_header, c.MCK_FORK_IDX_HEADER_SIZE)
    job.scratch = &sc[0]
    job.scratch_len = sc.shape[0]
    rc = c.mck_fork_start(&job, &child.ch)      # the GIL still held: the child's image is the instant
    t2 = _monotonic()
    pages, dirty, reported = _pause_lists(bufs, n, full, &o)
    if rc < 0:
        return pages, dirty, reported, None, t1 - t0, t2 - t1, OSError(
            -rc, f"forking the snapshot child: {strerror(-rc).decode()}")
    child.pid = child.ch.pid
    child.scratch = scratch
    return pages, dirty, reported, child, t1 - t0, t2 - t1, None


from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9
