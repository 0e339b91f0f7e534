"""DirtyTracker: which pages of an arena were written since the last collect."""
from __future__ import annotations

import errno
import os
import threading
from typing import Any

import numpy as np

from . import _core, _forksafe
from .arena import Arena
from .errors import TrackerBusy, TrackerUnavailable
from .arena_grow import warn_reservation
from .kernel import TrackerInfo, backend_names, tracker_info
from .track import check_map_count

_BUSY = {
    # clear_refs resets the soft-dirty bits of the whole process
    "soft-dirty": "a soft-dirty tracker is already open in this process, and clear_refs "
                  "would erase its record of writes; close it first",
}

class DirtyTracker:
    """Track writes to every page of ``arena``.

    ``backend`` is ``"auto"`` (the best one available; :attr:`reason` says why
    it was picked) or one of ``memckpt.trackers()``' names. A backend that
    cannot work here raises :class:`TrackerUnavailable` with the reason.

    Backends differ in what they see (see ``docs/backends.md``): ``mprotect``
    makes the kernel's own writes into the arena (``read(2)``,
    ``file.readinto``) fail with ``EFAULT``, and ``soft-dirty`` needs other
    threads to stop writing while :meth:`collect` runs.
    """

    def __init__(self, arena: Arena, backend: str = "auto") -> None:
        if not isinstance(arena, Arena):
            raise TypeError(f"arena must be a memckpt.Arena, not {type(arena).__name__}")
        if arena.closed:
            raise ValueError("the arena is closed")
        if arena.tracker is not None:
            raise TrackerBusy(f"the arena already has an open {arena.tracker.backend} tracker; close it first")
        if backend == "auto":
            num, why = _core.backend_auto()
            if num < 0:
                raise TrackerUnavailable(why)
            self.reason: str = why
        else:
            if backend not in backend_names():
                raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {backend_names()}")
            num = _core.backend_lookup(backend)
            available, why = _core.backend_status(num)
            if not available:
                raise TrackerUnavailable(f"backend {backend!r} is unavailable here: {why}")
            self.reason = f"{backend}: asked for ({why})" if why else f"{backend}: asked for"
        self.info: TrackerInfo = tracker_info(num)
        warn_reservation(arena, self.info.name)
        if arena.adopted:
            check_map_count(arena, self.info.name)
        self._lock = threading.Lock()
        self._arena = arena
        try:
            self._t = _core.Tracker(arena._region, num)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise TrackerBusy(_BUSY.get(self.info.name, "another tracker already watches "
                                            "these pages; close it first")) from exc
            raise
        arena.tracker = self
        self._owner_pid = os.getpid()
        _forksafe.register(self)

    def _detach_in_child(self) -> None:
        """In a child of fork() (memckpt._forksafe): free the child's copy of
        the tracker, with no ioctl on the parent's userfaultfd and no join of
        the parent's threads (the core's forget), and leave the child's copy
        of the arena untracked, free for a tracker of the child's own."""
        self._lock = threading.Lock()  # a thread of the parent may have held it at the fork
        self._t.close()
        if self._arena.tracker is self:
            self._arena.tracker = None

    def _refuse_in_child(self, action: str) -> None:
        if self._owner_pid != os.getpid():
            raise _forksafe.refusal(f"this {self.backend} DirtyTracker", self._owner_pid, action)

    @property
    def backend(self) -> str:
        return self.info.name

    @property
    def exact(self) -> bool:
        return self.info.exact

    @property
    def closed(self) -> bool:
        return bool(self._t.closed)

    @property
    def npages(self) -> int:
        return int(self._t.npages)

    def collect(self) -> np.ndarray:
        """The sorted, duplicate-free indices (uint64, counted from the arena's
        first page) of the pages written since the last collect, or since the
        tracker started; re-arms in the same step."""
        self._refuse_in_child("collect")
        with self._lock:
            return self._t.collect()

    # -- the pause of modes copy, sync and fork (one call: docs/checkpointing.md) ----
    def pause_copy(self, carry: np.ndarray | None, full: int, bufs: Any, staging: np.ndarray,
                   room: int, sink: int = 0, async_min: int = 0,
                   pause_threads: int = 1) -> tuple[Any, ...]:
        """Collect, copy and write in one instant of every Python thread
        (``_core.pause_copy``; ``sink``: an epoch's C writer, see
        EpochWriter.native_writer; ``async_min``, ``pause_threads``: when
        the staged pages go to it too, written while they are copied)."""
        self._refuse_in_child("collect")
        with self._lock:
            return _core.pause_copy(self._t, self._arena._region, self._arena.page_size, carry,
                                    full, bufs, staging, room, sink, async_min, pause_threads)

    def pause_fork(self, carry: np.ndarray | None, full: int, bufs: Any, incremental: bool,
                   target: tuple[int, int, bytes, int, bytes], scratch: Any) -> tuple[Any, ...]:
        """Collect and fork in one instant of every Python thread (``_core.pause_fork``)."""
        self._refuse_in_child("collect")
        pack_fd, off, phdr, idx_fd, ihdr = target
        with self._lock:
            return _core.pause_fork(self._t, self._arena._region, self._arena.page_size, carry,
                                    full, bufs, incremental, pack_fd, off, phdr, idx_fd, ihdr,
                                    scratch)

    # -- background capture (copy-before-write; uffd-sync only) ------------------
    def bg_begin(self, staging: np.ndarray, max_gap: int = _core.BG_GAP_AUTO,
                 all_pages: bool = False, populated: bool = False,
                 extra: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Collect as :meth:`collect` does, write-protect those pages and start
        copying them, in a background thread, into ``staging`` (a writable,
        C-contiguous array of whole pages: page ``pages[i]`` goes to its i-th
        page). A write to one of them waits until it is copied. Returns
        ``(pages, stats)``; call :meth:`bg_wait` before touching ``staging`` or
        starting another copy. Needs the ``uffd-sync`` backend (``OSError``
        with ``errno.EOPNOTSUPP`` and the reason otherwise). ``max_gap``: runs
        of pages closer than this are protected by one ioctl (``-1``: auto).
        ``all_pages`` snapshots every page of the arena; ``populated`` adds
        every page that may hold data at the instant (a full epoch: the others
        read as zero, and are neither read nor staged); ``extra`` adds those
        sorted page numbers (a failed epoch's pages, protected already)."""
        self._refuse_in_child("begin a background copy")
        with self._lock:
            return self._t.bg_begin(staging, max_gap, all_pages, populated, extra)

    def bg_prearm(self, max_gap: int = _core.BG_GAP_AUTO) -> int:
        """Write-protect, now and outside any pause, the pages written so
        far: they stay dirty (the next :meth:`collect` or :meth:`bg_begin`
        still reports them), but :meth:`bg_begin` then protects only the
        pages written after this call. Each of those pages written again
        costs one more fault. Returns the pages protected (uffd-sync only)."""
        self._refuse_in_child("pre-arm")
        with self._lock:
            return int(self._t.bg_prearm(max_gap))

    def bg_wait(self) -> dict[str, Any]:
        """Block until the copy :meth:`bg_begin` started is complete; its figures."""
        self._refuse_in_child("wait for a background copy")
        return self._t.bg_wait()

    def close(self) -> None:
        with self._lock:
            if self._t.closed:
                return
            self._t.close()
            if self._arena.tracker is self:
                self._arena.tracker = None

    def __enter__(self) -> DirtyTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<memckpt.DirtyTracker {self.backend} over {self.npages} pages{' (closed)' if self.closed else ''}>"
