"""Signals held back across a critical section: ``deferred()`` and ``interruptible()``.

Why: a Python signal handler runs in the main thread between two bytecodes,
wherever that thread is. KeyboardInterrupt (``default_int_handler``) or a
SIGTERM handler that calls ``sys.exit`` therefore raises an exception at an
arbitrary point: between a manifest's rename and the line that marks the epoch
committed (whose ``except`` then deletes a committed epoch's files), or
between two counters that must move together (a checkpointer that then waits
forever). ``with deferred():`` swaps every Python-level handler for a recorder
for the duration of the section; on leaving the outermost section the
program's handlers are put back and the signals that arrived are raised again
(``signal.raise_signal``), so the interrupt still reaches the program, right
after the section.

- Only Python-level handlers (``signal.getsignal`` gives a callable) are
  deferred: ``SIG_DFL`` (SIGTERM's default kills the process, like SIGKILL:
  the store is crash-safe against that) and ``SIG_IGN`` are not handlers to
  defer, and C-level handlers (the mprotect tracker's SIGSEGV) never run
  Python code. Synchronous faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL) are
  never deferred.
- Re-entrant: sections nest; only the outermost one swaps and delivers.
- Off the main thread it does nothing: Python runs signal handlers only in
  the main thread, so no other thread can be interrupted by one.
- ``interruptible()`` inside a section lets signals through again for a part
  that may be stopped safely (mode "sync"'s persist, which aborts its epoch
  on any exception), and defers them again afterwards.
- ``wait_until()`` waits on a threading primitive so that an interrupt can
  neither leave the primitive's lock held nor turn into another exception.

CPython (3.11+) runs pending handlers only at calls and backward jumps, so
the few lines between two calls here are atomic against them. Where a signal
can still land inside the swap itself, the recorder forwards to the program's
handler whenever no section is open, and the next section finishes the swap:
a signal is never lost and a handler is never left swapped out for longer
than until the next section.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from itertools import compress
from types import FrameType, TracebackType
from typing import Any, Callable

# Faults are raised by the instruction that hit them: deferring their handler
# would return to the same instruction. SIGKILL and SIGSTOP cannot be caught.
_NEVER = {getattr(signal, n) for n in ("SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE",
                                       "SIGILL") if hasattr(signal, n)}
_CANDIDATES = tuple(sorted(int(s) for s in signal.valid_signals() if s not in _NEVER))

# signal.getsignal/signal wrap handlers in enums: 2-3 us a call, where the C
# functions they wrap (CPython's _signal, which the signal module imports)
# take 0.02-0.3 us; a section checks every signal
_c: Any = getattr(signal, "_signal", signal)
_getsignal, _setsignal = _c.getsignal, _c.signal

_depth = 0                      # open deferred() sections (main thread only)
_saved: dict[int, Any] = {}     # the program's handlers while the recorder stands in
_pending: list[int] = []        # signals recorded, in arrival order, each once


def _record(signum: int, frame: FrameType | None) -> None:
    if _depth > 0:
        if signum not in _pending:
            _pending.append(signum)
        return
    # No section is open: a swap was cut short (see the module docstring).
    h = _saved.get(signum)
    if callable(h):
        h(signum, frame)


def _swap() -> None:
    """Put the recorder in place of every Python-level handler."""
    getsignal, setsignal = _getsignal, _setsignal
    # the scan runs in C (about 1 us for 56 signals); the loop sees the few handlers
    for s in compress(_CANDIDATES, map(callable, map(getsignal, _CANDIDATES))):
        h = getsignal(s)
        if h is _record:
            continue
        _saved[s] = h
        try:
            setsignal(s, _record)
        except (OSError, ValueError):  # pragma: no cover - a signal the platform refuses
            del _saved[s]


def _restore() -> None:
    """Put the program's handlers back (unless it installed others meanwhile),
    then raise the signals recorded, each handler in turn."""
    getsignal, setsignal = _getsignal, _setsignal
    while _saved:
        s = next(iter(_saved))
        if getsignal(s) is _record:
            setsignal(s, _saved[s])
        del _saved[s]
    if _pending:
        sigs = list(_pending)
        del _pending[:]
        _deliver(sigs, 0)


def _deliver(sigs: list[int], i: int) -> None:
    # every recorded signal reaches its handler, even when an earlier one raised
    if i < len(sigs):
        try:
            signal.raise_signal(sigs[i])
        finally:
            _deliver(sigs, i + 1)


def _in_main() -> bool:
    return threading.get_ident() == threading.main_thread().ident


class _Deferred:
    __slots__ = ()

    def __enter__(self) -> None:
        global _depth
        if not _in_main():
            return
        _depth += 1
        if _depth == 1:
            try:
                _swap()
            except BaseException:
                # a handler not yet swapped raised: the section never opened
                _depth -= 1
                _restore()
                raise

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        global _depth
        if not _in_main() or _depth == 0:
            return
        _depth -= 1
        if _depth == 0:
            _restore()


_DEFERRED = _Deferred()


def deferred() -> _Deferred:
    """A context manager: Python-level signal handlers are held back inside it
    (main thread only; nests) and run, in arrival order, right after it.

    An outermost section costs about 4 us (a scan of every signal's handler,
    two swaps), a nested one or one off the main thread about 0.5 us
    (``python bench/probe_deferred.py``).
    """
    return _DEFERRED


class interruptible:
    """Inside a :func:`deferred` section, let signals through again for the
    body (first raising those recorded so far); defer them again after it.
    Outside any section (or off the main thread) it does nothing."""

    __slots__ = ("_outer",)

    def __init__(self) -> None:
        self._outer = 0

    def __enter__(self) -> None:
        global _depth
        if not _in_main() or _depth == 0:
            self._outer = 0
            return
        self._outer, _depth = _depth, 0
        try:
            _restore()
        except BaseException:
            # a recorded signal's handler raised: the body will not run, and
            # the section around it is still open
            _depth = self._outer
            self._outer = 0
            _swap()
            raise

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        global _depth
        if self._outer:
            _depth, self._outer = self._outer, 0
            _swap()


def _after_fork_in_child() -> None:
    """A child forked while a section was open (from another thread, e.g. a
    multiprocessing pool started beside a checkpoint) inherits the recorder
    as its handlers and a section that never ends there: its Ctrl-C would be
    recorded for good. Give it the program's handlers back; the signals
    recorded were the parent's."""
    global _depth
    _depth = 0
    del _pending[:]
    try:
        _restore()
    except (OSError, ValueError):  # pragma: no cover - a child that cannot set handlers
        _saved.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_POLL_S = 0.05  # how late a signal may reach a caller blocked in wait_until()


def wait_until(done: Callable[[], bool], wait_some: Callable[[float | None], Any],
               timeout: float | None = None) -> bool:
    """Block until ``done()`` (True) or ``timeout`` seconds (False), calling
    ``wait_some(seconds)`` (a threading primitive's wait) meanwhile; an
    interrupt still reaches the caller, within ``_POLL_S`` of arriving.

    Why not the primitive's wait alone: ``threading.Condition`` (and the
    Event built on it) takes and re-takes its lock in Python code. A signal
    handler's exception landing there leaves the lock held for good (every
    later ``Event.set()`` or ``with cond:``, on the thread that would end the
    wait, blocks forever) or raises ``RuntimeError: release unlocked lock``
    instead of the interrupt. So in the main thread each wait runs with
    signals deferred, in short steps, and the signals are raised between
    steps. Other threads wait at once: no handler runs there."""
    deadline = None if timeout is None else time.monotonic() + timeout
    main = _in_main()
    while not done():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        if not main:
            wait_some(left)
            continue
        with _DEFERRED:
            wait_some(_POLL_S if left is None else min(_POLL_S, left))
    return True


def pending() -> tuple[int, ...]:
    """The signals recorded by the open section (for tests)."""
    return tuple(_pending)
