"""Checkpointer: the epoch lifecycle of one arena over one store.

A checkpoint is two steps with one object (a :class:`_Capture`) handed
between them:

- **capture** (the program is paused): collect the pages the tracker saw
  written and take the snapshot. Its cost is ``pause_s``.
- **persist** (the program runs again): hash, compress, write, fsync and
  commit the epoch. ``total_s`` runs from the start of the pause until the
  epoch is durable.

The capture mode says how the snapshot is taken and where persist runs:

- ``"copy"`` (default): the dirty pages are copied into a staging buffer of
  at most ``staging`` bytes; persist runs on a thread of its own. Pages that
  do not fit are written in the pause instead (the pause grows, memory
  does not).
- ``"fork"``: a ``fork()`` child writes the pages from its copy-on-write
  image; the parent resumes right after the fork.
- ``"background"``: the dirty pages are write-protected and copied by a
  thread; a write to a page not yet copied waits for its copy.
- ``"sync"``: the copy, then persist in the caller: :meth:`Checkpointer.checkpoint`
  returns once the epoch is durable (the baseline the other modes are
  measured against).

One epoch is in flight at a time: a checkpoint taken while the previous one
is still persisting first waits for it (backpressure; ``extra["wait_s"]``).
Each persist runs on its own non-daemon thread, which ends with the epoch,
so an interpreter that exits lets the last epoch become durable first.
"""
from __future__ import annotations

import collections
import math
import os
import statistics
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import _forksafe, _signals
from .arena import Arena
from .epoch import EpochInfo
from .errors import MemckptError, TrackerUnavailable
from .forksnap import ForkScratch, ForkSnapshot
from .restore import StoreLike, open_store, restore
from .tracker import DirtyTracker
from .tuning import Recommendation, parse_duration, recommend

COMPRESSORS = (None, "zstd", "lz4")
MODES = ("copy", "sync", "background", "fork")  # each mode: a _capture_<mode> method; see the module docstring

# Pages handed to the store per add_pages call: bounds the store's working set
# (digests, compression) without making the call overhead visible.
_ADD_CHUNK_PAGES = 8192

_NO_PAGES = np.empty(0, dtype=np.uint64)

# Epochs whose total_s make the measured checkpoint cost of interval="auto":
# the median of the last few increments (or of the last full epochs while
# there are no increments yet).
_COST_EPOCHS = 5

# A full epoch's candidates are the pages that may hold data (Region.populated,
# after the collect): every other page reads as zero, and a full epoch records
# no zero page, so the epoch is the same without reading, staging or (under
# uffd-sync, whose MISSING fills give every page read a real one) populating
# them. False: every page, as before (bench/probe_sparse_full.py compares).
_SKIP_UNPOPULATED = True

# Mode "sync" stages at most this many pages: its caller waits until the epoch
# is durable anyway, so the rest is written straight from the arena in the
# same call, in chunks, and a dense full epoch needs no arena-sized buffer.
_SYNC_STAGING_PAGES = _ADD_CHUNK_PAGES

# Average run of consecutive dirty pages from which copy_pages copies slices
# rather than np.take (the two cost the same at 64-page runs, 1% of 1 GiB).
_RUN_PAGES = 64


def copy_pages(src: np.ndarray, pages: np.ndarray, out: np.ndarray) -> None:
    """out[i] = src[pages[i]] for sorted, duplicate-free ``pages``."""
    n = pages.size
    if not n:
        return
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    if (breaks.size + 1) * _RUN_PAGES <= n:
        # long runs (a full epoch is one): a slice copy is a memcpy, where take
        # copies row by row (measured 2-4x slower over 1 GiB)
        bounds = [0, *breaks.tolist(), n]
        for s, e in zip(bounds[:-1], bounds[1:]):
            first = int(pages[s])
            out[s:e] = src[first:first + (e - s)]
        return
    # mode="clip" lets take write straight into `out` (the default mode
    # buffers through a temporary to stay safe on a bad index)
    np.take(src, pages.view(np.int64), axis=0, out=out, mode="clip")


@dataclass(frozen=True)
class RollbackInfo:
    """What :meth:`Checkpointer.rollback` did: the epoch the arena now holds,
    how many pages it wrote back (out of ``npages``), and how long it took."""

    epoch: int
    pages_written: int
    npages: int
    seconds: float


@dataclass
class _Capture:
    """The handoff from capture to persist: everything persist needs, owned by it.

    ``writer`` is the epoch's open :class:`memckpt.store.EpochWriter` (begun
    before the pause). ``pages`` and ``data`` are the page numbers (sorted
    uint64) and their content as the mode snapshot them (in mode "copy", the
    staged ones). ``dirty`` is what the tracker reported (all of the pages in
    an increment): if the epoch fails, those pages are still unsaved changes.
    ``persist`` writes and commits the capture (on the persist thread);
    ``release`` gives back what the capture holds (staging, a child process),
    whatever happened.
    """

    kind: str
    parent: int | None
    epoch: int
    writer: Any
    pages: np.ndarray
    dirty: np.ndarray
    data: Any
    pages_dirty: int
    pause_s: float
    started: float  # perf_counter() at the start of capture
    label: str | None
    mode: str
    persist: Callable[[_Capture], EpochInfo]
    release: Callable[[], None] = lambda: None
    extra: dict[str, Any] = field(default_factory=dict)


class PendingEpoch:
    """An epoch whose snapshot is taken and whose persist may still run:
    what :meth:`Checkpointer.checkpoint` returns.

    ``epoch``, ``kind``, ``parent``, ``mode``, ``label``, ``pages_dirty``,
    ``pause_s`` (how long the snapshot stopped the program) and ``wait_s``
    (how long :meth:`Checkpointer.checkpoint` first waited for the epoch
    before it to be durable) are known at once.
    :meth:`result` waits until the epoch is durable and returns its
    :class:`EpochInfo`, or raises why it could not be committed (the store is
    then left at its last committed epoch, and the epoch's pages go into the
    next one).
    """

    def __init__(self, cap: _Capture) -> None:
        self._cap: _Capture | None = cap
        self.epoch: int = cap.epoch
        self.kind: str = cap.kind
        self.parent: int | None = cap.parent
        self.mode: str = cap.mode
        self.label: str | None = cap.label
        self.pages_dirty: int = cap.pages_dirty
        self.pause_s: float = cap.pause_s
        self.wait_s: float = float(cap.extra.get("wait_s", 0.0))
        self._done = threading.Event()
        self._info: EpochInfo | None = None
        self._error: BaseException | None = None
        self._reported = False
        self._resumed = 0.0  # the checkpointer's clock when checkpoint() returned

    def _finish(self, info: EpochInfo | None, error: BaseException | None) -> None:
        self._info, self._error = info, error
        self._done.set()

    def done(self) -> bool:
        """True once the epoch is durable or has failed."""
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> EpochInfo:
        """Wait until the epoch is durable and return its :class:`EpochInfo`;
        raise its error if it failed, or TimeoutError after ``timeout`` seconds."""
        if not _signals.wait_until(self._done.is_set, self._done.wait, timeout):
            raise TimeoutError(f"epoch {self.epoch} is not durable after {timeout} s")
        if self._error is not None:
            self._reported = True
            raise self._error
        assert self._info is not None
        return self._info

    def __repr__(self) -> str:
        state = ("failed" if self._error is not None else "durable") if self.done() else "persisting"
        return (f"<memckpt.PendingEpoch {self.epoch} {self.kind} mode={self.mode} "
                f"pause {self.pause_s * 1e3:.3g} ms, {state}>")


class Checkpointer:
    """Checkpoint ``arena`` into ``store`` (a :class:`memckpt.Store` or a path,
    created if missing), tracking its writes with a :class:`DirtyTracker`
    (``tracker`` is a backend name or ``"auto"``).

    The first epoch is ``full``: every page of the arena is a candidate (the
    store does not keep all-zero pages). Each later epoch is ``incremental``
    and holds the pages written since its parent, the epoch before it, unless
    ``full_every=N`` asks for a new full epoch once a chain holds N epochs.
    ``compress`` is ``None``, ``"zstd"`` or ``"lz4"``, per page.

    Over a store that already holds epochs, numbering continues, but the
    first epoch is full: nothing says the arena holds what the latest epoch
    does. :meth:`resume` restores an epoch into a new arena and continues its
    chain incrementally.

    ``mode`` is the capture mode (see the module docstring): ``"copy"`` (the
    default), ``"fork"``, ``"background"`` or ``"sync"``. ``staging`` bounds
    the bytes mode ``"copy"`` stages per epoch (default: the arena's size,
    i.e. at most one copy of the arena); the dirty pages beyond it are
    written during the pause instead.

    One checkpointer per arena; :meth:`checkpoint` and :meth:`rollback`
    expect the arena's writers to be paused while they run (the snapshot and
    the write-back are not atomic against concurrent writes); the writers may
    go on as soon as :meth:`checkpoint` returns, while the epoch persists.
    :meth:`wait` returns once every epoch is durable. :meth:`close` (or
    leaving a ``with`` block) waits for that too and closes the tracker; the
    arena stays open.

    ``interval`` is for :meth:`maybe_checkpoint`, called every step of a loop:
    ``None`` (the default: only explicit :meth:`checkpoint` calls), seconds of
    wall time (a number or a duration such as ``"5m"``) between the end of one
    checkpoint and the next, or ``"auto"``: the interval
    :func:`memckpt.tuning.recommend` gives for the measured checkpoint cost
    and ``mtbf`` (required), ``rpo`` and ``restart`` (seconds or durations
    such as ``"6h"``), re-tuned after every checkpoint. ``mtbf``, ``rpo`` and
    ``restart`` apply only to ``interval="auto"``.
    """

    def __init__(self, arena: Arena, store: StoreLike, *, tracker: str = "auto",
                 compress: str | None = None, full_every: int | None = None,
                 interval: float | str | None = None, mtbf: float | str | None = None,
                 rpo: float | str | None = None, restart: float | str = 0,
                 mode: str = "copy", staging: int | None = None) -> None:
        # the interval's arguments first: a mistake there costs no tracker or store
        fixed, auto, mtbf_s, rpo_s, restart_s = _interval_args(interval, mtbf, rpo, restart)
        if not isinstance(arena, Arena):
            raise TypeError(f"arena must be a memckpt.Arena, not {type(arena).__name__}")
        _check_mode(mode, compress)
        if mode == "background":
            tracker = _background_tracker(tracker)
        if staging is not None and (isinstance(staging, bool) or not isinstance(staging, int)
                                    or staging < 0):
            raise ValueError(f"staging must be a number of bytes (0 or more) or None, not {staging!r}")
        if compress not in COMPRESSORS:
            raise ValueError(f"compress must be one of {COMPRESSORS}, not {compress!r}")
        if full_every is not None and (isinstance(full_every, bool) or not isinstance(full_every, int)
                                       or full_every < 1):
            raise ValueError(f"full_every must be a positive int or None, not {full_every!r}")
        if arena.closed:
            raise ValueError("the arena is closed")
        self._owner_pid = os.getpid()  # the process whose epochs these are: see _detach_in_child
        self._store, self._owns_store = open_store(store, create=True)
        self._arena = arena
        self._compress = compress
        self._full_every = full_every
        self._page_size = arena.page_size
        self._npages = arena.npages
        self._mode = mode
        self._capture_fn: Callable[[Any, str, int | None, str | None], _Capture] = getattr(
            self, "_capture_" + ("copy" if mode == "sync" else mode))
        # pages mode "copy" may stage; the rest of an epoch is written in the pause
        self._staging_pages = self._npages if staging is None else staging // self._page_size
        self._tracker = DirtyTracker(arena, tracker)
        try:
            self._pages: np.ndarray | None = np.frombuffer(arena.buffer(), dtype=np.uint8).reshape(
                self._npages, self._page_size)
        except BaseException:
            self._tracker.close()
            raise
        self._lock = threading.RLock()
        # The epoch the arena held at the tracker's last collect, or None when
        # unknown (then the next epoch must be full and a rollback writes every page).
        self._base: int | None = None
        self._chain_len = 0  # epochs in the base's chain, for full_every
        # Pages collected for an epoch that failed to commit: still different
        # from the base, so they belong to the next epoch or rollback.
        self._carry = _NO_PAGES
        self._spare: np.ndarray | None = None  # a staging buffer kept for the next capture
        self._bg_buf: np.ndarray | None = None  # mode "background": the staging of every epoch
        self._inflight = 0  # epochs taken and not yet durable or failed: 0 or 1
        self._current: PendingEpoch | None = None  # the last epoch taken
        self._idle = threading.Condition()
        self._closed = False
        # maybe_checkpoint: a checkpoint is due once self._clock() >= self._due
        # (-inf: at the next call). time.monotonic; tests replace it.
        self._clock: Callable[[], float] = time.monotonic
        self._auto = auto
        self._interval: float | None = fixed
        self._mtbf, self._rpo, self._restart = mtbf_s, rpo_s, restart_s
        self._recommendation: Recommendation | None = None
        self._full_costs: collections.deque[float] = collections.deque(maxlen=_COST_EPOCHS)
        self._incr_costs: collections.deque[float] = collections.deque(maxlen=_COST_EPOCHS)
        self._due = -math.inf
        _forksafe.register(self)

    def _detach_in_child(self) -> None:
        """In a child of fork() (memckpt._forksafe): the epochs, the persist
        thread and the store's lock are the parent's. Renew the locks (a
        thread of the parent may have held them at the fork) and let go of
        the arena's buffer, so that the child may close its copy of the
        arena or track it itself; from here on the checkpointer refuses to
        act (:meth:`_check_open`) and :meth:`close` only lets go."""
        self._lock = threading.RLock()
        self._idle = threading.Condition()
        self._pages = None
        self._spare = None
        self._bg_buf = None

    # -- construction from a store ----------------------------------------------
    @classmethod
    def resume(cls, store: StoreLike, epoch: int | None = None, *, tracker: str = "auto",
               compress: str | None = None, full_every: int | None = None,
               interval: float | str | None = None, mtbf: float | str | None = None,
               rpo: float | str | None = None, restart: float | str = 0,
               mode: str = "copy", staging: int | None = None) -> Checkpointer:
        """Restore ``epoch`` (default: the latest) of ``store`` into a new arena
        and continue checkpointing it: the next epoch is an increment whose
        parent is ``epoch``. The arena is :attr:`arena` (its arrays:
        ``arena.arrays()``); it is the caller's, like any arena.

        This is the way to continue a chain in a new process. An arena
        restored with :func:`memckpt.restore` and handed to the constructor
        starts with a full epoch, since the checkpointer cannot know that
        nothing wrote to it in between; here the tracker starts right after
        the restore.

        With an ``interval``, the first :meth:`maybe_checkpoint` is due one
        interval after the resume (the epoch resumed from is the last
        checkpoint); with ``"auto"``, the cost is first measured from the
        store's latest increments, if it holds any (else the first call
        checkpoints, to measure it).
        """
        _interval_args(interval, mtbf, rpo, restart)  # before the restore, which may be long
        _check_mode(mode, compress)
        if mode == "background":
            tracker = _background_tracker(tracker)
        st, owns = open_store(store, create=False)
        if epoch is None:
            epoch = st.latest()
            if epoch is None:
                raise MemckptError(f"store {st.path} holds no committed epoch to resume from")
        arena = restore(st, epoch)
        try:
            ck = cls(arena, st, tracker=tracker, compress=compress, full_every=full_every,
                     interval=interval, mtbf=mtbf, rpo=rpo, restart=restart, mode=mode,
                     staging=staging)
        except BaseException:
            arena.close()
            raise
        ck._owns_store = owns
        try:
            ck._tracker.collect()  # nothing should be there: the tracker began after the restore
            ck._base = epoch
            ck._chain_len = len(st.chain(epoch))
            if ck._auto:
                for e in st.epochs():
                    (ck._incr_costs if e.kind == "incremental" else ck._full_costs).append(e.total_s)
                if ck._incr_costs:  # a full epoch's cost alone does not say what the next ones cost
                    ck._retune()
                else:
                    ck._full_costs.clear()
            if ck._interval is not None:
                ck._due = ck._clock() + ck._interval
        except BaseException:
            ck.close()
            raise
        return ck

    # -- properties ----------------------------------------------------------------
    @property
    def arena(self) -> Arena:
        return self._arena

    @property
    def store(self) -> Any:
        return self._store

    @property
    def tracker(self) -> DirtyTracker:
        return self._tracker

    @property
    def head(self) -> int | None:
        """The epoch the arena held at the last checkpoint or rollback (the
        next epoch's parent), or None when no epoch is known to match it."""
        return self._base

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def mode(self) -> str:
        """The capture mode: "copy", "fork", "background" or "sync"."""
        return self._mode

    @property
    def interval(self) -> float | None:
        """Seconds between the end of a checkpoint and the next one
        :meth:`maybe_checkpoint` takes; None without ``interval``, and with
        ``"auto"`` until a checkpoint has measured the cost."""
        return self._interval

    @property
    def recommendation(self) -> Recommendation | None:
        """With ``interval="auto"``, the :class:`memckpt.tuning.Recommendation`
        :attr:`interval` comes from; None before the first checkpoint, without
        ``"auto"``, or while the RPO is shorter than the measured cost."""
        return self._recommendation

    @property
    def checkpoint_cost(self) -> float | None:
        """The measured checkpoint cost ``interval="auto"`` tunes for: the
        median ``total_s`` of the last few incremental epochs, or of the last
        full epochs while there are no increments; None before any epoch (or
        without ``"auto"``)."""
        costs = self._incr_costs or self._full_costs
        return float(statistics.median(costs)) if costs else None

    # -- checkpoint ------------------------------------------------------------------
    def maybe_checkpoint(self, label: str | None = None) -> PendingEpoch | None:
        """Checkpoint if one is due, for a loop to call every step: returns the
        new epoch's :class:`EpochInfo`, or None (at the cost of one clock read
        and one comparison) when the last checkpoint is more recent than
        :attr:`interval`. The first call checkpoints (a full epoch), and so
        does the first with ``interval="auto"`` before any cost is measured.
        Any :meth:`checkpoint` restarts the interval. Raises ValueError when
        the checkpointer was made without ``interval``.
        """
        if self._clock() < self._due:
            return None
        if self._interval is None and not self._auto:
            raise ValueError("maybe_checkpoint() needs an interval: make the Checkpointer with "
                             "interval=SECONDS (or a duration such as '5m'), or "
                             "interval='auto' and mtbf=...; or call checkpoint() yourself")
        return self.checkpoint(label)

    def _after(self, info: EpochInfo, resumed: float) -> None:
        """After a committed epoch: measure it, re-tune, and restart the interval
        from ``resumed``, the clock when its checkpoint() returned."""
        if self._auto:
            (self._full_costs if info.kind == "full" else self._incr_costs).append(info.total_s)
            self._retune()
        if self._interval is not None:
            self._due = resumed + self._interval

    def _retune(self) -> None:
        cost = self.checkpoint_cost
        assert cost is not None and self._mtbf is not None
        cost = max(cost, 1e-6)  # recommend() needs a cost above zero; a coarse clock can give 0
        try:
            rec = recommend(cost, self._mtbf, self._rpo, self._restart)
        except ValueError as e:
            # The RPO is not longer than a checkpoint: back to back is the closest to it.
            # Raising here would lose the epoch just committed; the loop goes on.
            warnings.warn(f"interval='auto' checkpoints at every call: {e}", RuntimeWarning,
                          stacklevel=4)
            self._recommendation = None
            self._interval = 0.0
            return
        self._recommendation = rec
        self._interval = rec.interval_s

    def checkpoint(self, label: str | None = None) -> PendingEpoch:
        """Take an epoch of the arena as it is now. Returns once the snapshot
        is taken (the pause), with a :class:`PendingEpoch`: its ``epoch``,
        ``kind`` and ``pause_s`` are known at once, ``result()`` waits until
        the epoch is durable and returns its :class:`EpochInfo`. In mode
        ``"sync"`` the epoch is durable on return.

        The arena's writers must not write while this runs (see the class
        docstring); they may write as soon as it returns. A previous epoch
        that is still persisting is waited for first; if it failed, its error
        is raised here (once) and no new epoch is taken: its pages belong to
        the next checkpoint, which a new call takes.
        """
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a str or None, not {type(label).__name__}")
        with self._lock:
            self._check_open()
            t_wait = time.perf_counter()
            self._wait_inflight()
            waited = time.perf_counter() - t_wait
            self._raise_unreported()
            # From the collect to the hand-off, an exception from a signal
            # handler (Ctrl-C, sys.exit in a SIGTERM handler) would lose the
            # collected pages, leave the epoch's writer holding the store
            # lock, or miscount the epochs in flight (a later wait that never
            # ends): it lands right after the section instead. The wait above
            # stays interruptible: nothing changes while it waits.
            with _signals.deferred():
                return self._take(label, waited)

    def _take(self, label: str | None, waited: float) -> PendingEpoch:
        """Capture an epoch and hand it to its persist (signals deferred)."""
        cap = self._capture(label)
        cap.extra["wait_s"] = waited  # before PendingEpoch(cap), which reads it
        pending = PendingEpoch(cap)
        # the pending holds the capture from here: a traceback through this
        # frame (mode "sync" raises here) must not keep the writer alive
        del cap
        # the interval runs from here, the end of the pause; "auto" moves it
        # once the epoch's cost is known
        pending._resumed = self._clock()
        if self._interval is not None:
            self._due = pending._resumed + self._interval
        with self._idle:
            self._inflight += 1
            self._current = pending
        if self._mode == "sync":
            self._run_persist(pending)
            pending._reported = True
            if pending._error is not None:
                raise pending._error
            return pending
        t = threading.Thread(target=self._run_persist, args=(pending,),
                             name=f"memckpt-persist-e{pending.epoch}")
        try:
            t.start()
        except RuntimeError:
            # "can't start new thread": persist here rather than lose the epoch.
            # Any other exception comes after the thread started, and the
            # thread persists the epoch: persisting it here too would commit
            # it twice and count it done twice.
            self._run_persist(pending)
        return pending

    def _run_persist(self, pending: PendingEpoch) -> None:
        """Persist one capture (on its own thread except in mode "sync"), then
        do the checkpointer's bookkeeping and wake whoever waits.

        In the caller (mode "sync"), a signal handler's exception (Ctrl-C)
        may stop the persist itself: the epoch is aborted (or, if it got past
        its commit point, stays committed) and its pages go to the next epoch,
        as for any failed epoch. The bookkeeping after it is never torn."""
        with _signals.deferred():  # on the persist thread it does nothing (no handler runs there)
            self._persist_and_account(pending)

    def _persist_and_account(self, pending: PendingEpoch) -> None:
        cap = pending._cap
        assert cap is not None
        info: EpochInfo | None = None
        error: BaseException | None = None
        try:
            with _signals.interruptible():
                info = cap.persist(cap)
        except BaseException as e:  # noqa: B902 - handed to the waiter, raised there
            error = e
            # The error lives on in the PendingEpoch, in a reference cycle with
            # this frame: the persist's frames must not keep the capture (its
            # staging, its writer) alive with it. A writer freed later by the
            # cycle collector would run its __del__ wherever the main thread
            # is, and CPython drops a signal handler's exception raised there.
            traceback.clear_frames(e.__traceback__)
            try:
                # the persist aborts its writer, unless an interrupt landed in
                # its own error handling; abort() is idempotent and keeps an
                # epoch whose manifest is in place
                cap.writer.abort()
            except Exception:
                pass
        try:
            cap.release()
        except Exception as e:  # the epoch's outcome stands; the count below must move
            warnings.warn(f"memckpt: releasing epoch {cap.epoch}'s capture failed: {e!r}",
                          RuntimeWarning)
        if info is not None:
            self._base = info.epoch
            self._chain_len = 1 if cap.kind == "full" else self._chain_len + 1
            try:
                self._after(info, pending._resumed)
            except BaseException as e:  # retuning must not lose a committed epoch
                warnings.warn(f"interval='auto' could not re-tune: {e!r}", RuntimeWarning)
        else:
            # still unsaved changes against the base: the next epoch or rollback needs them
            self._carry = np.union1d(self._carry, cap.dirty) if self._carry.size else cap.dirty
        pending._cap = None  # let the pages and the staging buffer go
        cap = None
        with self._idle:
            pending._finish(info, error)
            self._inflight -= 1
            self._idle.notify_all()

    def _wait_inflight(self) -> None:
        # interruptible, and an interrupt cannot leave _idle's lock held (which
        # would block the persist thread's bookkeeping for good): see wait_until
        _signals.wait_until(lambda: not self._inflight, self._wait_idle)

    def _wait_idle(self, timeout: float | None) -> None:
        with self._idle:
            if self._inflight:
                self._idle.wait(timeout)

    def _raise_unreported(self) -> None:
        """Raise (once) the error of the last epoch if nobody has seen it yet."""
        cur = self._current
        if cur is not None and cur._error is not None and not cur._reported:
            cur._reported = True
            raise cur._error

    def _next_kind(self) -> tuple[str, int | None]:
        """The next epoch's kind and parent. A full epoch's parent is only its
        lineage (the chain walk stops at it): the epoch the arena held before."""
        parent = self._base
        if parent is not None and not self._has_epoch(parent):
            parent = None  # retired by compaction or pruned: its content is gone
        if parent is None or (self._full_every is not None and self._chain_len >= self._full_every):
            return "full", parent
        return "incremental", parent

    def _has_epoch(self, epoch: int) -> bool:
        try:
            self._store.info(epoch)
        except (MemckptError, KeyError, FileNotFoundError):
            return False
        return True

    def _begin(self, kind: str, parent: int | None) -> Any:
        return self._store.begin(kind=kind, parent=parent, layout=self._arena.layout(),
                                 page_size=self._page_size, npages=self._npages,
                                 compress=self._compress)

    def _collect(self) -> tuple[np.ndarray, int]:
        """The pages written since the last collect, plus those of a failed
        epoch; and how many the tracker itself reported."""
        dirty = self._tracker.collect()
        reported = int(dirty.size)
        if self._carry.size:
            dirty = np.union1d(dirty, self._carry)
        self._carry = _NO_PAGES  # the capture's now (and back if it fails)
        return dirty, reported

    def _capture(self, label: str | None) -> _Capture:
        """Begin the epoch (before the pause) and take the snapshot the mode takes."""
        kind, parent = self._next_kind()  # store metadata: before the pause, not part of it
        w = self._begin(kind, parent)
        if hasattr(w, "handed_off"):
            # finished by the persist thread: this thread may prune or compact
            # the same Store meanwhile, waiting for the epoch rather than failing
            w.handed_off = True
        try:
            cap = self._capture_fn(w, kind, parent, label)
        except BaseException:
            w.abort()
            raise
        return cap

    # -- mode "copy" (and "sync") --------------------------------------------------------
    def _capture_copy(self, w: Any, kind: str, parent: int | None, label: str | None) -> _Capture:
        """Collect and copy into staging: the part of a checkpoint the program
        waits for. Pages beyond the staging bound are written to the epoch
        here, in the pause, straight from the arena."""
        assert self._pages is not None
        t0 = time.perf_counter()
        dirty, reported = self._collect()
        try:
            pages = self._full_pages() if kind == "full" else dirty
            room = self._staging_pages
            if self._mode == "sync":
                room = min(room, _SYNC_STAGING_PAGES)
            overflow = max(0, int(pages.size) - room)
            if overflow:
                # the lowest pages go first: the writer takes pages in increasing order
                scratch = np.empty((min(overflow, _ADD_CHUNK_PAGES), self._page_size), np.uint8)
                for s in range(0, overflow, _ADD_CHUNK_PAGES):
                    part = pages[s:min(s + _ADD_CHUNK_PAGES, overflow)]
                    copy_pages(self._pages, part, scratch[:part.size])
                    w.add_pages(part, scratch[:part.size])
                del scratch
            staged = pages[overflow:]
            buf = self._staging(staged.size)
            data = buf[:staged.size]
            copy_pages(self._pages, staged, data)
        except BaseException:
            self._carry = dirty  # collected, not saved: the next epoch or rollback needs them
            raise
        pause = time.perf_counter() - t0
        extra: dict[str, Any] = {"tracker_reported": reported, "staging_bytes": int(data.nbytes),
                                 "pages_in_pause": overflow}
        extra.update(self._unpopulated(kind, pages))
        return _Capture(kind=kind, parent=parent, epoch=w.epoch, writer=w, pages=staged,
                        dirty=dirty, data=data, pages_dirty=self._candidates(kind, pages),
                        pause_s=pause,
                        started=t0, label=label, mode=self._mode, extra=extra,
                        persist=self._persist_copy, release=lambda: self._recycle(buf, kind))

    def _persist_copy(self, cap: _Capture) -> EpochInfo:
        """Write a staged capture to its epoch and commit it. Touches no
        checkpointer state: it runs on the persist thread."""
        w = cap.writer
        try:
            for s in range(0, cap.pages.size, _ADD_CHUNK_PAGES):
                w.add_pages(cap.pages[s:s + _ADD_CHUNK_PAGES], cap.data[s:s + _ADD_CHUNK_PAGES])
            return w.commit(pages_dirty=cap.pages_dirty, pause_s=cap.pause_s, label=cap.label,
                            tracker=self._tracker.backend, mode=cap.mode, extra=cap.extra,
                            started=cap.started)  # total_s: from the pause to durable
        except BaseException:
            try:
                w.abort()
            except Exception:
                pass  # the first error is the one to see; the store sweeps leftovers on open
            raise

    # -- mode "fork" ----------------------------------------------------------------------
    _fork_scratch: ForkScratch | None = None  # the child's working memory, reused

    def _capture_fork(self, w: Any, kind: str, parent: int | None, label: str | None) -> _Capture:
        """Collect, then fork a child that writes the pages from its
        copy-on-write image (memckpt.forksnap): the pause is the collect and
        the fork. The child comes from the calling thread and dies with it
        (PR_SET_PDEATHSIG): that thread must outlive the epoch's persist."""
        if self._fork_scratch is None:
            self._fork_scratch = ForkScratch()
        # before the pause: the scratch (sized for a full epoch, allocated and
        # touched once) and the epoch's index file
        scratch = self._fork_scratch.get(self._npages)
        target = w.external_target()
        t0 = time.perf_counter()
        dirty, reported = self._collect()
        try:
            # the child hashes only these: a page absent now reads as zero in
            # its image too, unless written between here and the fork, which
            # the tracker reports to the next epoch (as for any page written
            # after the collect)
            pages = self._full_pages() if kind == "full" else dirty
            t1 = time.perf_counter()
            snap = ForkSnapshot(w, self._arena._region, self._page_size, pages, scratch=scratch,
                                target=target)
        except BaseException:
            self._carry = dirty  # collected, not saved: the next epoch or rollback needs them
            raise
        pause = time.perf_counter() - t0
        extra: dict[str, Any] = {"tracker_reported": reported, "collect_s": t1 - t0,
                                 "fork_s": snap.fork_s, "child_pid": snap.pid}
        extra.update(self._unpopulated(kind, pages))
        return _Capture(kind=kind, parent=parent, epoch=w.epoch, writer=w, pages=pages,
                        dirty=dirty, data=snap, pages_dirty=self._candidates(kind, pages),
                        pause_s=pause,
                        started=t0, label=label, mode=self._mode, extra=extra,
                        persist=self._persist_fork, release=snap.release)

    def _persist_fork(self, cap: _Capture) -> EpochInfo:
        """Wait for the child (GIL released), adopt its files, commit. A child
        that failed or died raises ForkChildError; its epoch is dropped."""
        snap: ForkSnapshot = cap.data
        w = cap.writer
        try:
            res = snap.finish()
            cap.extra["child_s"] = res["child_s"]
            cap.extra["extra_bytes"] = res["extra_bytes"]
            return w.commit(pages_dirty=cap.pages_dirty, pause_s=cap.pause_s, label=cap.label,
                            tracker=self._tracker.backend, mode=cap.mode, extra=cap.extra,
                            started=cap.started)
        except BaseException:
            try:
                snap.release()
                w.abort()
            except Exception:
                pass  # the first error is the one to see
            raise

    def _full_pages(self) -> np.ndarray:
        """A full epoch's pages: those that may hold data now (called after
        the collect, in the pause). The rest read as zero, which a full epoch
        does not record; they stay tracked like any page, so a write to one
        is in the next increment."""
        if _SKIP_UNPOPULATED:
            try:
                return self._arena._region.populated()
            except OSError:
                pass  # no pagemap to read (a sandbox without /proc): every page, as before
        return np.arange(self._npages, dtype=np.uint64)

    def _candidates(self, kind: str, pages: np.ndarray) -> int:
        # a full epoch's candidates are still every page: the ones not read
        # are known to be zero
        return self._npages if kind == "full" else int(pages.size)

    def _unpopulated(self, kind: str, pages: np.ndarray) -> dict[str, Any]:
        if kind != "full":
            return {}
        return {"pages_unpopulated": self._npages - int(pages.size)}

    def _staging(self, npages: int) -> np.ndarray:
        spare, self._spare = self._spare, None
        if spare is not None and spare.shape[0] >= npages:
            return spare
        # A quarter more than asked (within the staging bound): a program whose
        # dirty set wobbles around one size reuses one buffer instead of paying
        # the page faults of a fresh one at every slightly larger epoch.
        rows = min(max(npages, self._staging_pages), npages + npages // 4 + 256)
        return np.empty((rows, self._page_size), dtype=np.uint8)

    def _recycle(self, buf: np.ndarray, kind: str) -> None:
        # Keep the staging buffer of an incremental epoch for the next one: its
        # pages are resident, and a fresh buffer costs a page fault per page in
        # the pause (50% of 1 GiB dirty: 436 ms against 75 ms reused). A full
        # epoch's is let go unless small: the arena's size, held for good
        # after the first epoch, is what staging= is there to bound.
        if kind == "full" and buf.nbytes > max(64 << 20, self._arena.nbytes // 8):
            return
        if self._spare is None or self._spare.shape[0] < buf.shape[0]:
            self._spare = buf

    # -- mode "background" ----------------------------------------------------------------
    def prepare(self) -> int:
        """Shorten the next checkpoint's pause, in mode ``"background"``:
        write-protect now, while the program runs, the pages written so far,
        so that the pause protects only the pages written after this call.
        They stay in the next epoch. Each page written again afterwards costs
        one more fault (a few microseconds, in the writer). Call it a little
        before a checkpoint is due. Returns the pages protected (0 in the
        other modes, where it does nothing)."""
        with self._lock:
            self._check_open()
            if self._mode != "background":
                return 0
            return self._tracker.bg_prearm()

    def _capture_background(self, w: Any, kind: str, parent: int | None,
                            label: str | None) -> _Capture:
        """Collect and write-protect the dirty pages, and start their copy on
        the core's copier thread: the pause. A write to a page not copied yet
        waits for its copy. A full epoch, and an epoch that must also hold a
        failed epoch's pages, snapshot every page the same way."""
        t0 = time.perf_counter()
        if self._bg_buf is None:
            # virtual until written: only the most pages ever staged take memory
            self._bg_buf = np.empty((self._npages, self._page_size), dtype=np.uint8)
        carry = self._carry
        every = kind == "full" or bool(carry.size)
        # on failure nothing was collected: the pages stay dirty in the tracker
        if _SKIP_UNPOPULATED:
            # a full epoch: the pages that may hold data at the instant (the
            # others are neither read, nor staged, nor filled by the handler);
            # a failed epoch's pages are protected already and join as they are
            pages, st = self._tracker.bg_begin(self._bg_buf, populated=kind == "full",
                                               extra=carry if carry.size else None)
        else:
            pages, st = self._tracker.bg_begin(self._bg_buf, all_pages=every)
        self._carry = _NO_PAGES
        pause = time.perf_counter() - t0
        # if the epoch fails, all it snapshot counts as unsaved (a superset)
        dirty = pages
        extra: dict[str, Any] = {"tracker_reported": int(pages.size) if not every else None,
                                 "staging_bytes": int(pages.size) * self._page_size,
                                 "collect_s": st["collect_s"], "protect_s": st["protect_s"],
                                 "prearmed": st["prearmed"],
                                 "protect_calls": st["protect_calls"], "runs": st["runs"],
                                 "max_gap": st["max_gap"]}
        extra.update(self._unpopulated(kind, pages))
        return _Capture(kind=kind, parent=parent, epoch=w.epoch, writer=w, pages=pages,
                        dirty=dirty, data=self._bg_buf, pages_dirty=self._candidates(kind, pages),
                        pause_s=pause, started=t0, label=label, mode=self._mode, extra=extra,
                        persist=self._persist_background,
                        release=lambda: self._bg_recycle(kind, int(pages.size)))

    def _bg_recycle(self, kind: str, npages: int) -> None:
        # As _recycle does for mode "copy": the staging a full epoch touched is
        # let go unless small, or a dense arena's first epoch would hold a
        # second arena's worth of memory for good. (A copy still running keeps
        # the buffer alive through the tracker until bg_wait.)
        if kind == "full" and npages * self._page_size > max(64 << 20, self._arena.nbytes // 8):
            self._bg_buf = None

    def _persist_background(self, cap: _Capture) -> EpochInfo:
        """On the persist thread: wait for the copy (GIL released), then write
        the staged pages as mode "copy" does."""
        t0 = time.perf_counter()
        try:
            st = self._tracker.bg_wait()
        except BaseException:
            try:
                cap.writer.abort()
            except Exception:
                pass
            raise
        cap.extra.update(copy_s=st["copy_s"], copy_wait_s=time.perf_counter() - t0,
                         faults_waited=st["faults_waited"], copied_early=st["copied_early"])
        cap.data = cap.data[:cap.pages.size]
        return self._persist_copy(cap)

    def wait(self) -> None:
        """Return once every epoch taken so far is durable; raise (once) the
        error of one that failed, unless its :meth:`PendingEpoch.result`
        already did."""
        if self._owner_pid != os.getpid():
            self._check_open()  # the parent's epochs: nothing in this process to wait for
        self._wait_inflight()
        self._raise_unreported()

    # -- rollback --------------------------------------------------------------------
    def rollback(self, epoch: int | None = None) -> RollbackInfo:
        """Make the arena's content exactly ``epoch``'s (default: :attr:`head`,
        the last checkpoint or rollback, i.e. undo the writes since; with no
        head, the store's latest epoch).

        Only the pages that may differ are written: those written since the
        last checkpoint and those the store's indexes say changed between
        ``epoch`` and the head (every page when they share no chain, or when
        no head is known). The next checkpoint is an increment on ``epoch``:
        history branches there.

        The epoch's arrays must be the arena's (arrays the arena made since
        come back zero). Writers must be paused.
        """
        with self._lock:
            self._check_open()
            assert self._pages is not None
            self._wait_inflight()  # a failed epoch's pages are in _carry: written back too
            t0 = time.perf_counter()
            target = epoch if epoch is not None else self._base
            if target is None:
                target = self._store.latest()
                if target is None:
                    raise MemckptError(f"store {self._store.path} holds no epoch to roll back to")
            self._check_layout(target)
            # Signals deferred from the collect on: pages collected and then
            # dropped by an interrupt would be missing from the next epoch.
            # The write-back itself may be interrupted (it ends with no head).
            with _signals.deferred():
                pages = self._roll_back_to(target)
            n = self._npages if pages is None else int(pages.size)
            return RollbackInfo(epoch=target, pages_written=n, npages=self._npages,
                                seconds=time.perf_counter() - t0)

    def _roll_back_to(self, target: int) -> np.ndarray | None:
        """rollback()'s collect, write-back and bookkeeping; the pages written
        (None: all)."""
        written = self._tracker.collect()
        if self._carry.size:
            written = np.union1d(written, self._carry)
        self._carry = written  # collected, not yet written back: kept if what follows fails
        pages: np.ndarray | None = None
        if self._base is not None:
            try:
                changed = self._store.changed_pages(target, self._base)
            except MemckptError:
                changed = None  # the base is gone (compacted away, pruned)
            if changed is not None:
                pages = np.union1d(written, np.asarray(changed, dtype=np.uint64))
        try:
            with _signals.interruptible():
                self._write_back(target, pages)
        except BaseException:
            # Partly written back: the arena matches no epoch now.
            self._base = None
            self._carry = _NO_PAGES
            self._tracker.collect()
            raise
        self._tracker.collect()  # the write-backs were tracked writes; the arena is `target` now
        self._base = target
        self._carry = _NO_PAGES
        self._chain_len = len(self._store.chain(target))
        return pages

    def _check_layout(self, epoch: int) -> None:
        want = self._store.layout(epoch)
        have = self._arena.layout()
        if want["page_size"] != have["page_size"] or want["nbytes"] != have["nbytes"]:
            raise MemckptError(
                f"epoch {epoch} is of an arena of {want['nbytes']} bytes in pages of "
                f"{want['page_size']}, not this one ({have['nbytes']} in {have['page_size']})")
        n = len(want["arrays"])
        if have["arrays"][:n] != want["arrays"]:
            raise MemckptError(f"epoch {epoch} holds other arrays than this arena: "
                               f"{_names(want)} against {_names(have)}")

    def _write_back(self, epoch: int, pages: np.ndarray | None) -> None:
        assert self._pages is not None
        if self._tracker.info.kernel_writes:
            self._store.read_into(epoch, self._pages, pages=pages)
            return
        # The store may read(2) straight into `out`, which fails with EFAULT on
        # pages this tracker protects: read into scratch memory, then copy.
        # The scratch is virtual until written: only the pages read take memory.
        scratch = np.empty_like(self._pages)
        self._store.read_into(epoch, scratch, pages=pages)
        if pages is None:
            self._pages[...] = scratch
        else:
            idx = pages.view(np.int64)
            self._pages[idx] = scratch[idx]

    # -- lifetime ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._owner_pid != os.getpid():
            raise _forksafe.refusal(f"this Checkpointer of {os.fspath(self._store.path)}",
                                    self._owner_pid, "checkpoint, roll back or wait")
        if self._closed:
            raise ValueError("the checkpointer is closed")

    def close(self) -> None:
        """Wait for every epoch to be durable, then close the tracker. The
        arena stays open (it is the caller's). Raises, after closing, the
        error of a last epoch that failed unseen (see :meth:`wait`).

        In a child of fork() it only lets go of the child's references: the
        epochs in flight, the tracker and the store are the parent's."""
        if self._owner_pid != os.getpid():
            self._closed = True
            self._detach_in_child()  # again: idempotent, and the hook may not have run
            self._current = None
            self._fork_scratch = None
            return
        with self._lock:
            if self._closed:
                return
            self._wait_inflight()  # interruptible: nothing is closed yet
            with _signals.deferred():  # closed whole, or not at all
                self._closed = True
                self._pages = None  # lets the arena close
                self._spare = None
                self._bg_buf = None
                self._fork_scratch = None  # mode "fork": its mapping goes with the last reference
                self._tracker.close()
                if self._owns_store and hasattr(self._store, "close"):
                    self._store.close()
            self._raise_unreported()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"head {self._base}"
        return (f"<memckpt.Checkpointer {self._tracker.backend} -> {os.fspath(self._store.path)}, "
                f"{state}>")


def _seconds(name: str, value: float | str, *, zero_ok: bool = False) -> float:
    """Seconds from a number or a duration such as ``"6h"``, checked."""
    if isinstance(value, str):
        try:
            v = parse_duration(value)
        except ValueError as e:
            also = " (or 'auto')" if name == "interval" else ""
            raise ValueError(f"{name}{also}: {e}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be seconds (a number) or a duration such as '5m', "
                        f"not {type(value).__name__}")
    else:
        v = float(value)
    if math.isnan(v) or math.isinf(v) or v < 0 or (v == 0 and not zero_ok):
        need = "zero or more" if zero_ok else "more than zero"
        raise ValueError(f"{name} must be a finite number of seconds, {need}, not {value!r}")
    return v


def _interval_args(interval: float | str | None, mtbf: float | str | None,
                   rpo: float | str | None, restart: float | str,
                   ) -> tuple[float | None, bool, float | None, float | None, float]:
    """Check the interval arguments: (fixed interval, auto, mtbf, rpo, restart) in seconds."""
    auto = isinstance(interval, str) and interval.strip().lower() == "auto"
    if not auto:
        given = [n for n, v in (("mtbf", mtbf is not None), ("rpo", rpo is not None),
                                ("restart", not (isinstance(restart, (int, float)) and restart == 0)))
                 if v]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with interval='auto' "
                             f"(interval is {interval!r})")
        fixed = None if interval is None else _seconds("interval", interval)
        return fixed, False, None, None, 0.0
    if mtbf is None:
        raise ValueError("interval='auto' needs mtbf= (the job's mean time between failures, "
                         "in seconds or a duration such as '6h') to choose the interval from")
    mtbf_s = _seconds("mtbf", mtbf)
    rpo_s = None if rpo is None else _seconds("rpo", rpo)
    restart_s = _seconds("restart", restart, zero_ok=True)
    return None, True, mtbf_s, rpo_s, restart_s


def _check_mode(mode: object, compress: str | None) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if mode == "fork" and compress is not None:
        raise ValueError(f"mode='fork' cannot compress (compress={compress!r}): the fork child "
                         "may not allocate memory, which zstd and lz4 need; use mode='copy' "
                         "to compress, or compress=None with mode='fork'")


def _background_tracker(tracker: str) -> str:
    """The tracker mode "background" runs on: uffd-sync, whose handler thread
    can hold a writer until its page is copied. Raises TrackerUnavailable
    (no userfaultfd write-protect here) or ValueError (another tracker asked
    for), naming the modes to use instead."""
    from . import _core
    if tracker not in ("auto", "uffd-sync"):
        if tracker not in _core.backend_names():
            raise ValueError(f"unknown tracker {tracker!r}; choose 'auto' or one of "
                             f"{_core.backend_names()}")
        _, why = _core.bg_supported(_core.backend_lookup(tracker))
        raise ValueError(f"mode='background' needs tracker='uffd-sync' (or 'auto'), not "
                         f"{tracker!r}: {why}")
    ok, why = _core.bg_supported(_core.backend_lookup("uffd-sync"))
    if not ok:
        raise TrackerUnavailable(f"mode='background' needs userfaultfd write-protect (the "
                                 f"uffd-sync tracker), unavailable here: {why}; use "
                                 f"mode='copy' or mode='fork' instead")
    return "uffd-sync"


def _names(layout: dict[str, Any]) -> list[str]:
    return [a["name"] for a in layout["arrays"]]
