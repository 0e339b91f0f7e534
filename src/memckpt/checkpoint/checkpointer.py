"""Checkpointer: the epoch lifecycle of one arena over one store.

A checkpoint is two steps with one object (a :class:`memckpt.capture.Capture`)
handed between them:

- **capture** (the program is paused): collect the pages the tracker saw
  written and take the snapshot. Its cost is ``pause_s``.
- **persist** (the program runs again): hash, compress, write, fsync and
  commit the epoch. ``total_s`` runs from the start of the pause until the
  epoch is durable.

The capture mode (:mod:`memckpt.capture`, one module per mode) says how the
snapshot is taken and where persist runs: ``"copy"`` (the default: staged,
persisted on a thread), ``"fork"`` (a child writes from its copy-on-write
image), ``"background"`` (pages write-protected and copied by a thread),
``"sync"`` (persisted in the caller: the baseline).

One epoch is in flight at a time: a checkpoint taken while the previous one
is still persisting first waits for it (backpressure; ``extra["wait_s"]``).
Persists run on the checkpointer's persist thread (checkpoint/worker.py: not
a daemon, so an interpreter that exits lets the last epoch become durable
first), which waits a few seconds for the next epoch before it ends.
"""
from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from .. import _forksafe, _signals
from ..arena import Arena
from ..capture import MODES, CallClock, Capture, CaptureMode, Context, Request, tracker_for
from ..epoch import EpochInfo
from ..restore import StoreLike, open_store
from ..store.contract import StoreContract
from ..tracker import DirtyTracker
from .auto import choose
from .head import Head
from .options import check_args
from .aftercommit import AfterCommit
from .pending import InFlight, PendingEpoch
from .resume import resume
from .rollback import RollbackInfo, rollback
from .schedule import Schedule
from .stats import Overhead, stats_of
from .view import CheckpointerView

if TYPE_CHECKING:
    from ..preempt import Preemption


class Checkpointer(CheckpointerView):
    """Checkpoint ``arena`` into ``store`` (a :class:`memckpt.Store` or a path,
    created if missing), tracking its writes with a :class:`DirtyTracker`
    (``tracker`` is a backend name or ``"auto"``).

    The first epoch is ``full``: every page of the arena is a candidate (the
    store does not keep all-zero pages). Each later epoch is ``incremental``
    and holds the pages written since its parent, the epoch before it, unless
    ``full_every=N`` asks for a new full epoch once a chain holds N epochs.
    ``compress`` is ``None``, ``"zstd"`` or ``"lz4"``, per page. ``keep_last=N``
    keeps only the last N epochs after each commit, rebasing a long chain
    (:class:`memckpt.checkpoint.retention.Retention`): disk stays bounded.
    ``replicate_to`` (an ``s3://`` URL, ``storage_options`` for it) copies each
    committed epoch there in the background (docs/object-store.md).

    Over a store that holds epochs, numbering continues, from a full epoch;
    :meth:`resume` restores one into a new arena and continues its chain.

    ``mode`` is the capture mode (see the module docstring): ``"copy"`` (the
    default), ``"fork"``, ``"background"``, ``"sync"``, or ``"auto"``: the pair
    ``calibration`` (a :class:`memckpt.Calibration`, the path of one saved as
    JSON, or the step, calibrated briefly first) measured cheapest, else mode
    copy; the choice and why go into each epoch's ``extra["auto"]``
    (:attr:`auto`; checkpoint/auto.py, docs/tuning.md). ``staging`` bounds
    the bytes mode ``"copy"`` stages per epoch (default: the arena's size,
    i.e. at most one copy of the arena); the dirty pages beyond it are
    written during the pause instead. ``threads``: the threads writing an
    epoch's pages (default: the CPUs the process may use).

    One checkpointer per arena. Each epoch is one instant of every Python
    writer (docs/checkpointing.md: native threads); :meth:`rollback` expects
    the writers paused. :meth:`wait` returns once every epoch is durable;
    :meth:`close` (or a ``with`` block's end) waits too, then closes the
    tracker; the arena stays open.

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
                 mode: str = "copy", staging: int | None = None,
                 keep_last: int | None = None, threads: int | None = None,
                 replicate_to: Any = None, storage_options: dict[str, Any] | None = None,
                 calibration: Any = None) -> None:
        # the interval's arguments first: a mistake there costs no tracker or store
        self._schedule = Schedule(interval, mtbf, rpo, restart)
        if not isinstance(arena, Arena):
            raise TypeError(f"arena must be a memckpt.Arena, not {type(arena).__name__}")
        check_args(mode, compress, full_every, staging, keep_last, threads)
        if arena.closed:
            raise ValueError("the arena is closed")
        tracker, mode, self._auto = choose(arena, tracker, mode, calibration, compress)
        tracker = tracker_for(mode, tracker)
        self._owner_pid = os.getpid()  # the process whose epochs these are: see _detach_in_child
        self._store: StoreContract
        self._store, self._owns_store = open_store(store, create=True)
        self._after = AfterCommit(self._store, keep_last, replicate_to, storage_options)
        self._arena = arena
        self._mode = mode
        self._tracker = DirtyTracker(arena, tracker)
        if self._auto is not None and self._auto["source"] == "default":
            self._auto.update(tracker=self._tracker.backend, tracker_why=self._tracker.reason)
        self._preempt: Preemption | None = None  # memckpt.on_preemption's, at maybe_checkpoint
        try:
            self._ctx = Context.over(arena, self._tracker, staging)
        except BaseException:
            self._tracker.close()
            raise
        self._capturer: CaptureMode = MODES[mode](self._ctx)
        self._head = Head(self._store, full_every, compress=compress, threads=threads)
        self._inflight = InFlight()
        inflight = self._inflight  # not self: the clock must not keep the checkpointer alive
        self._schedule.steps.busy = lambda: inflight.count > 0
        self._lock = threading.RLock()
        self._closed = False
        _forksafe.register(self)

    def _detach_in_child(self) -> None:
        """In a child of fork() (memckpt._forksafe): the epochs, persist thread and
        lock are the parent's. Renew the locks and let go of the arena's buffer;
        from here on it refuses to act and :meth:`close` only lets go."""
        self._lock = threading.RLock()
        self._inflight.renew_after_fork()
        self._let_go()

    def _let_go(self) -> None:
        self._inflight.close()  # the persist thread ends
        self._ctx.pages = None  # lets the arena close
        self._capturer.close()

    @classmethod
    def resume(cls, store: StoreLike, epoch: int | None = None, *, tracker: str = "auto",
               compress: str | None = None, full_every: int | None = None,
               interval: float | str | None = None, mtbf: float | str | None = None,
               rpo: float | str | None = None, restart: float | str = 0,
               mode: str = "copy", staging: int | None = None,
               keep_last: int | None = None, threads: int | None = None,
               replicate_to: Any = None, storage_options: dict[str, Any] | None = None,
               lazy: bool = False, calibration: Any = None) -> Checkpointer:
        """Restore ``epoch`` (default: the latest) of ``store`` into a new arena
        (:attr:`arena`, the caller's like any arena) and continue checkpointing
        it: the next epoch is an increment on ``epoch`` (a checkpointer handed
        an arena from :func:`memckpt.restore` starts with a full epoch: it
        cannot know nothing wrote to it). ``lazy``: restored lazily, pages
        served on first touch (memckpt.restore(lazy=True)). ``mode="auto"`` and
        ``calibration``: as the constructor's. The interval and
        the rest: see :func:`memckpt.checkpoint.resume.resume`."""
        return resume(cls, store, epoch, tracker=tracker, compress=compress,
                      full_every=full_every, interval=interval, mtbf=mtbf, rpo=rpo,
                      restart=restart, mode=mode, staging=staging, keep_last=keep_last,
                      threads=threads, replicate_to=replicate_to,
                      storage_options=storage_options, lazy=lazy, calibration=calibration)

    # -- checkpoint ------------------------------------------------------------------
    def maybe_checkpoint(self, label: str | None = None) -> PendingEpoch | None:
        """Checkpoint if one is due, for a loop to call every step: the new epoch's
        :class:`PendingEpoch`, or None (one clock read and one comparison) when the last
        checkpoint is more recent than :attr:`interval`. The first call checkpoints, and
        so does the first with "auto" before a cost is measured; any :meth:`checkpoint`
        restarts the interval. ValueError if made without ``interval``."""
        if self._preempt is not None:  # a step boundary: memckpt.on_preemption's final epoch
            self._preempt.at_boundary()
        if not self._schedule.is_due():
            return None
        if not self._schedule.enabled:
            raise ValueError("maybe_checkpoint() needs an interval: make the Checkpointer with "
                             "interval=SECONDS (or a duration such as '5m'), or "
                             "interval='auto' and mtbf=...; or call checkpoint() yourself")
        return self.checkpoint(label)

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
        clock = CallClock(time.perf_counter())
        if label is not None and not isinstance(label, str):
            raise TypeError(f"label must be a str or None, not {type(label).__name__}")
        with self._lock:
            self._check_open()
            self._inflight.wait()
            waited = time.perf_counter() - clock.started
            self._inflight.raise_unreported()
            # A signal handler's exception (Ctrl-C) from the collect to the hand-off
            # would lose the collected pages, leave the writer holding the store lock
            # or miscount the epochs in flight: it lands right after. (The wait above
            # stays interruptible: nothing changes while it waits.)
            try:
                with _signals.deferred():
                    return self._take(label, waited, clock)
            finally:
                clock.stop()  # the persist commits once it has call_s

    def _take(self, label: str | None, waited: float, clock: CallClock) -> PendingEpoch:
        """Capture an epoch and hand it to its persist (signals deferred)."""
        cap = self._capture(label, clock)
        cap.extra["wait_s"] = waited  # before PendingEpoch(cap), which reads it
        if (steps := self._schedule.steps.take()) is not None:  # the overhead account's
            cap.extra["steps"] = steps
        if self._auto is not None:
            cap.extra["auto"] = self._auto
        pending = PendingEpoch(cap)
        # the pending holds the capture from here: a traceback through this frame
        # (mode "sync" raises here) must not keep the writer alive
        del cap
        # the interval runs from the end of the pause; "auto" moves it once the cost is known
        pending._resumed = self._schedule.clock()
        self._schedule.restart(pending._resumed)
        self._inflight.launch(pending, self._committed, self._failed,
                              here=self._mode == "sync", then=self._head.prepare)
        return pending

    def _capture(self, label: str | None, clock: CallClock) -> Capture:
        """Begin the epoch (before the pause) and take the snapshot the mode takes."""
        w, kind, parent = self._head.begin(self._arena)  # store metadata: before the pause
        w.handed_off = True  # the persist thread finishes it (a prune here waits for it)
        try:
            return self._capturer.capture(Request(kind, parent, label, w, clock))
        except BaseException:
            w.abort()
            raise

    def _committed(self, info: EpochInfo, cap: Capture, resumed: float) -> None:
        self._head.committed(info.epoch, cap.kind)
        self._after.committed(info)
        self._schedule.measured(info, resumed)

    def _failed(self, cap: Capture) -> None:  # its pages are unsaved: the next epoch's
        self._ctx.collector.give_back(cap.dirty)
        self._schedule.steps.durable()  # nothing in flight: the steps from here are idle ones

    def prepare(self) -> int:
        """Shorten the next pause, in mode ``"background"``: write-protect now, while
        the program runs, the pages written so far (they stay in the next epoch; each
        written again costs one more fault, a few µs). Call it a little before a
        checkpoint is due. Returns the pages protected (0 in the other modes)."""
        with self._lock:
            self._check_open()
            return self._capturer.prepare()

    def wait(self) -> None:
        """Return once every epoch taken so far is durable; raise (once) the
        error of one that failed, unless its :meth:`PendingEpoch.result`
        already did."""
        if self._owner_pid != os.getpid():
            self._check_open()  # the parent's epochs: nothing in this process to wait for
        self._inflight.wait()
        self._inflight.raise_unreported()

    def stats(self, **kw: Any) -> Overhead:
        """The overhead account of the epochs this checkpointer wrote: ``stats_of``
        (checkpoint/stats.py: ``now``, ``mtbf``, ``tracking_slowdown``; ``.to_dict()``)."""
        kw.setdefault("mtbf", self._schedule._mtbf)
        return stats_of(self, first_epoch=self._after.first_epoch, **kw)

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
            self._inflight.wait()  # a failed epoch's pages are carried: written back too
            return rollback(self._store, self._ctx, self._head, epoch)

    # -- lifetime ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._owner_pid != os.getpid():
            raise _forksafe.refusal(f"this Checkpointer of {os.fspath(self._store.path)}",
                                    self._owner_pid, "checkpoint, roll back or wait")
        if self._closed:
            raise ValueError("the checkpointer is closed")

    def close(self) -> None:
        """Wait for every epoch to be durable, then close the tracker (the arena stays
        open: it is the caller's); then raise a last epoch's unseen error (see :meth:`wait`).
        In a child of fork() it only lets go of the child's references."""
        if self._owner_pid != os.getpid():
            self._closed = True
            self._detach_in_child()  # again: idempotent, and the hook may not have run
            self._inflight.current = None
            return
        with self._lock:
            if self._closed:
                return
            self._inflight.wait()  # interruptible: nothing is closed yet
            self._after.close()  # the replica, if any, gets every epoch first
            with _signals.deferred():  # closed whole, or not at all
                self._closed = True
                self._head.close()  # a prepared writer: its spare file, before the store goes
                self._let_go()
                self._tracker.close()
                if self._owns_store:
                    self._store.close()
            self._inflight.raise_unreported()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"head {self._head.epoch}"
        return (f"<memckpt.Checkpointer {self._tracker.backend} -> {os.fspath(self._store.path)}, "
                f"{state}>")

