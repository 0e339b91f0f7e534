"""Checkpoint on preemption: :func:`on_preemption` (docs/preemption.md).

A scheduler that preempts a job (Slurm, Kubernetes, a cloud's spot
instances) sends SIGTERM (or a signal the job asked for, such as SIGUSR1),
waits a grace period, then kills. :func:`on_preemption` makes that signal
end the program with a final epoch committed:

1. the signal is noted (a Python handler that never raises) and a watchdog
   thread is woken at once by CPython's C-level handler, which writes the
   signal number into a pipe (``signal.set_wakeup_fd``) whatever the main
   thread is doing;
2. at the program's next step boundary (:meth:`Checkpointer.maybe_checkpoint`,
   or :meth:`Preemption.at_boundary`) the epoch in flight is waited for, a
   final epoch is taken and made durable, and ``SystemExit(status)`` is raised
   in the main thread (``finally`` blocks, ``with`` blocks and atexit run);
3. if no boundary comes within ``step_wait`` seconds (a long native step that
   never returns to Python), the watchdog takes the final epoch itself, with
   the checkpointer's own mode, from its thread, then ends the process with
   ``os._exit(status)`` (the main thread is in native code: nothing else can
   end it).

Why a thread and a pipe: Python runs signal handlers only in the main thread,
between bytecodes; a native step that runs for minutes (with or without the
GIL) never lets the handler run. The C handler still runs, and writes the
pipe. A thread needs the GIL: with a step that *releases* it the watchdog
runs (and captures the arena as it is then: Python threads are stopped by the
GIL during the capture, native threads writing with the GIL released are not,
docs/checkpointing.md); with a step that *holds* it no Python thread runs
until it returns, so the final epoch waits for that (or the scheduler's kill
comes first and the store keeps its last committed epoch: crash-safe).

The exit status is ``128 + signum`` (what a shell reports for a process the
signal killed; 143 for SIGTERM) unless ``exit_code`` says otherwise. With
``requeue=True`` and ``SLURM_JOB_ID`` set, ``scontrol requeue $SLURM_JOB_ID``
is run before exiting (the requeue hint).

A second signal only notes again: the final epoch is taken once, under the
checkpointer's own lock, whose critical sections defer signal handlers
(memckpt/_signals.py): committed means committed.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable

from . import _forksafe

if TYPE_CHECKING:
    from .checkpoint import Checkpointer
    from .epoch import EpochInfo

__all__ = ["Preemption", "on_preemption"]

_POLL_S = 0.005  # how often the watchdog looks for the main thread's final epoch


def on_preemption(checkpointer: Checkpointer,
                  signals: Iterable[int] = (signal.SIGTERM, signal.SIGUSR1),
                  grace: float = 30.0, *, step_wait: float | None = None,
                  exit_code: int | None = None, requeue: bool = False,
                  label: str = "preempted", hard_exit: bool = True) -> Preemption:
    """On any of ``signals``, take a final epoch of ``checkpointer`` and exit
    (module docstring). ``grace`` is the seconds the scheduler allows between
    the signal and its kill (Slurm's KillWait and Kubernetes' default are 30 s).
    ``step_wait`` (default: a third of the grace) is how long the program may
    take to reach a step boundary before the watchdog checkpoints itself;
    ``hard_exit``: the watchdog ends the process with ``os._exit`` a little
    before the grace runs out if it is still alive (a caught SystemExit, a
    hung cleanup). Call from the main thread; returns the installed
    :class:`Preemption` (``close()`` uninstalls it)."""
    return Preemption(checkpointer, signals, grace, step_wait=step_wait, exit_code=exit_code,
                      requeue=requeue, label=label, hard_exit=hard_exit)


class Preemption:
    """An installed preemption handler (see :func:`on_preemption`).

    ``signum`` is the signal noted (None before any), ``final`` the final
    epoch's :class:`~memckpt.EpochInfo` once durable, ``taken_by`` who took it
    (``"step"``: at a boundary of the main thread; ``"watchdog"``),
    ``requeued`` the outcome of the Slurm requeue hint (None if not asked)."""

    def __init__(self, checkpointer: Checkpointer, signals: Iterable[int], grace: float, *,
                 step_wait: float | None, exit_code: int | None, requeue: bool, label: str,
                 hard_exit: bool) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("on_preemption() must be called from the main thread "
                               "(Python sets signal handlers only there)")
        sigs = tuple(dict.fromkeys(int(s) for s in signals))
        if not sigs:
            raise ValueError("on_preemption() needs at least one signal")
        for s in sigs:
            if s in (signal.SIGKILL, signal.SIGSTOP) or s not in signal.valid_signals():
                raise ValueError(f"signal {s} cannot be caught: give catchable signals such "
                                 f"as SIGTERM or SIGUSR1")
        if not (isinstance(grace, (int, float)) and 0 < grace < float("inf")):
            raise ValueError(f"grace must be a number of seconds above zero, not {grace!r}")
        step_wait = grace / 3 if step_wait is None else float(step_wait)
        if not 0 <= step_wait < grace:
            raise ValueError(f"step_wait must be within [0, grace={grace}), not {step_wait!r}")
        if exit_code is not None and not (isinstance(exit_code, int) and 0 <= exit_code < 256):
            raise ValueError(f"exit_code must be an int in [0, 255] or None, not {exit_code!r}")
        self.checkpointer = checkpointer
        self.signals = sigs
        self.grace = float(grace)
        self.step_wait = step_wait
        self.exit_code = exit_code
        self.requeue = requeue
        self.label = label
        self.hard_exit = hard_exit
        self.signum: int | None = None
        self.noted_at: float | None = None  # time.monotonic() when the signal was first seen
        self.final: EpochInfo | None = None
        self.taken_by: str | None = None
        self.requeued: subprocess.CompletedProcess[str] | BaseException | None = None
        self._pid = os.getpid()
        self._claim = threading.Lock()  # whoever acquires it takes the final epoch
        self._done = threading.Event()
        self._closed = False
        self._install()

    # -- install / uninstall --------------------------------------------------------
    def _install(self) -> None:
        if self.checkpointer._preempt is not None:
            raise RuntimeError(f"{self.checkpointer!r} already has a preemption handler "
                               f"({self.checkpointer._preempt!r}): close() it first")
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old_handlers: dict[int, Any] = {}
        try:
            for s in self.signals:
                self._old_handlers[s] = signal.signal(s, self._on_signal)
            self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        except BaseException:
            self._restore_handlers()
            os.close(self._r)
            os.close(self._w)
            raise
        # the step boundary: Checkpointer.maybe_checkpoint calls at_boundary() first
        self.checkpointer._preempt = self
        self._thread = threading.Thread(target=self._watch, name="memckpt-preempt", daemon=True)
        self._thread.start()
        _forksafe.register(self)

    def _restore_handlers(self) -> None:
        for s, h in self._old_handlers.items():
            if signal.getsignal(s) == self._on_signal:
                signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._old_handlers = {}

    def close(self) -> None:
        """Uninstall: the program's handlers and wakeup fd come back, and
        ``maybe_checkpoint`` is no longer a boundary."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._pid and threading.current_thread() is threading.main_thread():
            self._restore_handlers()
            self._put_back_wakeup_fd()
        try:
            os.write(self._w, b"\0")  # wakes the watchdog, which sees _closed and ends
        except OSError:
            pass
        if self.checkpointer._preempt is self:
            self.checkpointer._preempt = None
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(1.0)
        if not self._thread.is_alive():
            os.close(self._r)
            os.close(self._w)

    def _put_back_wakeup_fd(self) -> None:
        cur = signal.set_wakeup_fd(self._old_fd)
        if cur != self._w:  # the program set its own since: keep that one
            signal.set_wakeup_fd(cur)

    def _detach_in_child(self) -> None:
        """In a child of fork(): the watchdog is the parent's; put the program's
        handlers back (the child's own SIGTERM must not look like a preemption)."""
        self._closed = True
        try:
            self._restore_handlers()
            self._put_back_wakeup_fd()
        except (OSError, ValueError):  # pragma: no cover - not the child's main thread
            pass

    def __enter__(self) -> Preemption:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def status(self) -> int:
        """The exit status the process ends with (once a signal is noted)."""
        if self.exit_code is not None:
            return self.exit_code
        return 128 + (self.signum or signal.SIGTERM)

    # -- the signal -----------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        # main thread, between two bytecodes of whatever ran: note it, never raise
        self._note(signum)

    def _note(self, signum: int) -> None:
        if self.signum is None and not self._closed:
            self.signum = signum
            self.noted_at = time.monotonic()

    # -- the main thread's way -------------------------------------------------------
    def at_boundary(self) -> None:
        """A step boundary (``maybe_checkpoint()`` calls it): if a preemption
        signal came, take the final epoch, wait until it is durable, and raise
        SystemExit(:attr:`status`). Does nothing otherwise (one attribute read)."""
        if self.signum is None or self._closed:
            return
        if not self._claim.acquire(blocking=False):
            # the watchdog is taking it and ends the process; a boundary that
            # comes meanwhile waits for that rather than writing more steps
            while True:
                time.sleep(0.05)
        self.taken_by = "step"
        try:
            self.final = self.checkpointer.checkpoint(self.label).result()
        except BaseException as e:
            print(f"memckpt: the final epoch on signal {self.signum} failed: {e!r}; "
                  f"the store keeps its last committed epoch", file=sys.stderr)
        finally:
            self._done.set()
        self._requeue()
        # From here the program winds down (finally blocks, atexit, the interpreter's
        # finalization, which puts SIG_DFL back in place of Python handlers): a second
        # signal must not kill it with a different status. SIG_IGN stays as it is.
        for s in self.signals:
            signal.signal(s, signal.SIG_IGN)
        raise SystemExit(self.status)

    # -- the watchdog -----------------------------------------------------------------
    def _watch(self) -> None:
        while not self._closed:
            try:
                data = os.read(self._r, 256)
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if not data or self._closed:
                return
            if self._old_fd >= 0:  # the wakeup fd of the program (asyncio): keep it informed
                try:
                    os.write(self._old_fd, data)
                except OSError:
                    pass
            hits = [b for b in data if b in self.signals]
            if hits:
                self._note(hits[0])
                if self.signum is not None:
                    self._preempted()
                    return

    def _preempted(self) -> None:
        t0 = self.noted_at if self.noted_at is not None else time.monotonic()
        boundary = t0 + self.step_wait
        end = t0 + self.grace - min(1.0, 0.05 * self.grace)
        while time.monotonic() < boundary and not self._claim.locked():
            time.sleep(_POLL_S)
        if self._claim.acquire(blocking=False):
            self.taken_by = "watchdog"
            try:
                pending = self.checkpointer.checkpoint(self.label + " (watchdog)")
                self.final = pending.result(timeout=max(0.0, end - time.monotonic()))
            except BaseException as e:
                print(f"memckpt: the watchdog's final epoch on signal {self.signum} failed: "
                      f"{e!r}; the store keeps its last committed epoch", file=sys.stderr)
            self._done.set()
            self._requeue()
            self._exit()
        # the main thread took it and raises SystemExit: the process should end
        # well before the grace; if it does not (a caught SystemExit, a hung cleanup)
        if not self.hard_exit:
            return
        while time.monotonic() < end:
            time.sleep(0.05)
        if not self._done.is_set():
            print(f"memckpt: the final epoch is not durable {self.grace:g} s after signal "
                  f"{self.signum}; exiting with the last committed epoch", file=sys.stderr)
        self._exit()

    def _exit(self) -> None:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        os._exit(self.status)

    def _requeue(self) -> None:
        job = os.environ.get("SLURM_JOB_ID")
        if not self.requeue or not job or self.requeued is not None:
            return
        left = 5.0 if self.noted_at is None else self.noted_at + self.grace - time.monotonic()
        try:
            self.requeued = subprocess.run(["scontrol", "requeue", job], capture_output=True,
                                           text=True, timeout=max(0.5, left / 2))
        except (OSError, subprocess.SubprocessError) as e:
            self.requeued = e
            print(f"memckpt: scontrol requeue {job} failed: {e!r}", file=sys.stderr)

    def __repr__(self) -> str:
        state = "closed" if self._closed else (f"signal {self.signum}" if self.signum else "armed")
        return (f"<memckpt.Preemption {'/'.join(signal.Signals(s).name for s in self.signals)} "
                f"grace {self.grace:g} s, {state}>")
