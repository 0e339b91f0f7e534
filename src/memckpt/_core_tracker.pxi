# Included by _core.pyx (one module, memckpt._core) after _core_region.pxi:
# Tracker, one dirty-page tracker over a Region (csrc/tracker.c), and the
# background capture over it (csrc/capture_bg.c), which its bg_* methods run.

BG_GAP_AUTO = c.MCK_BG_GAP_AUTO
BG_GAP_RUNS = c.MCK_BG_GAP_RUNS
BG_GAP_SPAN = (1 << 63) - 1


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
        if region.adopted:
            # the buffer's own bytes: its partial edge pages are compared
            addr = <void *>(<size_t>addr + region.own_offset)
            length = region.own_len
            with nogil:
                rc = c.mck_tracker_open_range(&self.t, backend, addr, length)
        else:
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
            if ok and self.region.adopted:
                why = ("an adopted buffer's edge pages are its neighbours' too and cannot be "
                       "write-protected: use mode 'copy' or 'fork'")
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
