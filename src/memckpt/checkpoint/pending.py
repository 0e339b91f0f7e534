"""One epoch in flight: :class:`PendingEpoch` (what ``checkpoint()``
returns) and :class:`InFlight` (the count the checkpointer waits on, and the
persist of a capture with its bookkeeping)."""
from __future__ import annotations

import functools
import threading
import traceback
import warnings
from typing import Callable

from .. import _signals
from ..capture import Capture
from ..epoch import EpochInfo
from .worker import PersistThread


class PendingEpoch:
    """An epoch whose snapshot is taken and whose persist may still run:
    what :meth:`Checkpointer.checkpoint` returns.

    ``epoch``, ``kind``, ``parent``, ``mode``, ``label``, ``pages_dirty``,
    ``pause_s`` (how long the snapshot stopped the program; in mode "sync",
    until the epoch was durable), ``call_s`` (how long
    :meth:`Checkpointer.checkpoint` blocked its caller, all included) and
    ``wait_s`` (how much of it went to waiting for the epoch before to be
    durable) are known at once.
    :meth:`result` waits until the epoch is durable and returns its
    :class:`EpochInfo`, or raises why it could not be committed (the store is
    then left at its last committed epoch, and the epoch's pages go into the
    next one).
    """

    def __init__(self, cap: Capture) -> None:
        self._cap: Capture | None = cap
        self.epoch: int = cap.epoch
        self.kind: str = cap.kind
        self.parent: int | None = cap.parent
        self.mode: str = cap.mode
        self.label: str | None = cap.label
        self.pages_dirty: int = cap.pages_dirty
        self.pause_s: float = cap.pause_s
        self.wait_s: float = float(cap.extra.get("wait_s", 0.0))
        self._call = cap.call
        self._done = threading.Event()
        self._info: EpochInfo | None = None
        self._error: BaseException | None = None
        self._reported = False
        self._resumed = 0.0  # the checkpointer's clock when checkpoint() returned

    @property
    def call_s(self) -> float | None:
        """How long checkpoint() blocked its caller (None until it returned)."""
        return self._call.s

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


class InFlight:
    """The epochs taken and not yet durable or failed (0 or 1: a checkpoint
    waits for the one before), and the last one taken."""

    def __init__(self) -> None:
        self.count = 0
        self.current: PendingEpoch | None = None
        self.idle = threading.Condition()
        self._thread = PersistThread()

    def close(self) -> None:
        """No more epochs: the persist thread ends (at once, if idle)."""
        self._thread.stop()

    def renew_after_fork(self) -> None:
        """In a child of fork(): a parent's thread may have held the lock,
        and the persist thread is the parent's."""
        self.idle = threading.Condition()
        self._thread = PersistThread()

    def start(self, pending: PendingEpoch) -> None:
        with self.idle:
            self.count += 1
            self.current = pending

    def wait(self) -> None:
        # interruptible, and an interrupt cannot leave the lock held (which
        # would block the persist thread's bookkeeping for good): see wait_until
        _signals.wait_until(lambda: not self.count, self._wait_some)

    def _wait_some(self, timeout: float | None) -> None:
        with self.idle:
            if self.count:
                self.idle.wait(timeout)

    def raise_unreported(self) -> None:
        """Raise (once) the error of the last epoch if nobody has seen it yet."""
        cur = self.current
        if cur is not None and cur._error is not None and not cur._reported:
            cur._reported = True
            raise cur._error

    def launch(self, pending: PendingEpoch, committed: Callable[[EpochInfo, Capture, float], None],
               failed: Callable[[Capture], None], *, here: bool,
               then: Callable[[], None] | None = None) -> None:
        """Count ``pending`` in flight and persist it: ``here`` (mode "sync":
        raises its error) or on the persist thread (checkpoint/worker.py),
        where ``then()`` runs once the epoch committed and its waiters
        (result()) were woken: work for the next epoch, off its caller's
        path; the epoch counts as in flight until it is done (the next
        checkpoint waits for it). The persist thread runs it after letting
        go of the persist job (and so of ``committed`` and ``failed``: a
        Checkpointer dropped unclosed is not kept alive by it); its errors
        are dropped (it is an optimisation)."""
        self.start(pending)
        if here:
            self.persist(pending, committed, failed)
            pending._reported = True
            if pending._error is not None:
                raise pending._error
            assert pending._info is not None
            pending.pause_s = pending._info.pause_s  # the caller was stopped until durable
            return
        if not self._thread.submit(functools.partial(self.persist, pending, committed, failed, then)):
            # "can't start new thread": persist here rather than lose the epoch.
            # (Any other exception from the start comes after the thread
            # started, and it persists the epoch: persisting it here too would
            # commit it twice and count it done twice.)
            after = self.persist(pending, committed, failed, then)
            if after is not None:
                after()

    def persist(self, pending: PendingEpoch, committed: Callable[[EpochInfo, Capture, float], None],
                failed: Callable[[Capture], None],
                then: Callable[[], None] | None = None) -> Callable[[], None] | None:
        """Persist one capture (on its own thread except in mode "sync"), then
        the checkpointer's bookkeeping (``committed(info, capture, resumed)``,
        resumed being the clock when checkpoint() returned, or
        ``failed(capture)``), then wake
        whoever waits.

        In the caller (mode "sync"), a signal handler's exception (Ctrl-C)
        may stop the persist itself: the epoch is aborted (or, if it got past
        its commit point, stays committed) and its pages go to the next epoch,
        as for any failed epoch. The bookkeeping after it is never torn.
        With ``then`` and a commit it returns what to run next (then(), and
        the end of the count): the caller runs it, once (launch())."""
        with _signals.deferred():  # on the persist thread it does nothing (no handler runs there)
            ok = self._persist(pending, committed, failed, then is not None)
        if not ok:
            return None
        assert then is not None

        def after() -> None:  # see launch(); holds this InFlight and then(), nothing else
            try:
                then()
            except Exception:
                pass
            finally:
                self._done_one()
        return after

    def _done_one(self) -> None:
        with self.idle:
            self.count -= 1
            self.idle.notify_all()

    def _persist(self, pending: PendingEpoch, committed: Callable[[EpochInfo, Capture, float], None],
                 failed: Callable[[Capture], None], then: bool) -> bool:
        """Persist, bookkeeping, wake the waiters; True if the epoch
        committed and ``then`` (the caller runs work after it, then
        _done_one): it still counts as in flight."""
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
        try:
            if info is not None:
                committed(info, cap, pending._resumed)
            else:
                failed(cap)
        except BaseException as e:  # a committed epoch stays committed; the count must move
            warnings.warn(f"memckpt: the bookkeeping after epoch {cap.epoch} failed: {e!r}",
                          RuntimeWarning)
        pending._cap = None  # let the pages and the staging buffer go
        cap = None
        keep = then and info is not None
        with self.idle:
            pending._finish(info, error)
            if not keep:
                self.count -= 1
                self.idle.notify_all()
        return keep
