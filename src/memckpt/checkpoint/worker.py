"""The persist thread: one per checkpointer, kept between epochs.

Handing an epoch to a thread that waits for it costs microseconds; starting
a thread costs a few hundred (on a busy machine, most of a small
checkpoint's ``call_s``: ``python bench/probe_call.py``). So the thread that
persisted one epoch waits a while (``IDLE_S``) for the next before it ends.

It is not a daemon: an interpreter that exits waits for the epoch in flight
to become durable. At interpreter exit (``threading``'s own exit hook, run
before it joins non-daemon threads) and at ``stop()``, the thread ends once
the jobs before the stop are done, at once if idle.

Interrupt-safe by construction. Python runs signal handlers (which may
raise: Ctrl-C, ``sys.exit`` from a SIGTERM handler) in the main thread,
between bytecodes; an exception there may leave a lock taken by a
``with`` statement held, and a thread that then waits for that lock (the
persist thread, or the interpreter joining it) waits forever. So the
calls the main thread makes here are: ``stop()`` and the exit hook, which
only put a marker into a ``queue.SimpleQueue`` (one C call: nothing runs
between its steps), and ``submit()``, whose caller defers signal handlers
(``checkpoint()`` hands the epoch off under ``_signals.deferred()``).
"""
from __future__ import annotations

import os
import queue
import threading
import weakref
from typing import Callable

IDLE_S = 5.0

_STOP = object()  # the marker: end once nothing follows it

_threads: weakref.WeakSet[PersistThread] = weakref.WeakSet()


def _at_exit() -> None:
    pid = os.getpid()
    for t in list(_threads):
        if t.pid == pid:  # never a parent's (we may be its fork child)
            t.stop()


try:  # before the interpreter joins its threads (concurrent.futures uses it too)
    threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover (another Python; or imported at exit)
    pass


class PersistThread:
    """Runs the jobs handed to it, in order, on one thread (see the module
    docstring). A fork child makes its own (``pid``: the process it is for)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _alive: submit() (signals deferred) and the thread
        self._alive = False
        self.pid = os.getpid()
        _threads.add(self)

    def submit(self, job: Callable[[], object]) -> bool:
        """Queue ``job``; False if no thread could be started for it (it is
        then taken back: the caller runs it). An exception from
        Thread.start() after the thread started propagates: the thread runs
        the job. The caller defers signal handlers (module docstring)."""
        self._q.put(job)
        with self._lock:
            if self._alive:
                return True
            self._alive = True
        t = threading.Thread(target=self._loop, name="memckpt-persist")
        try:
            t.start()
        except RuntimeError:
            if t.ident is not None:
                raise
            with self._lock:
                self._alive = False
            self._take_back(job)
            return False
        return True

    def _take_back(self, job: Callable[[], object]) -> None:
        # no thread runs: nothing else takes from the queue
        kept = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not job and item is not _STOP:
                kept.append(item)
        for item in kept:
            self._q.put(item)

    def stop(self) -> None:
        """End the thread once the jobs queued so far are done."""
        self._q.put(_STOP)

    def _loop(self) -> None:
        while True:
            try:
                job = self._q.get(timeout=IDLE_S)
            except queue.Empty:
                job = _STOP
            if job is _STOP:
                with self._lock:
                    if self._q.empty():  # a submit() after this lock starts a new thread
                        self._alive = False
                        return
                continue
            # a job may return more work, run once the job is let go (a
            # persist lets go of its checkpointer's callbacks: InFlight.launch)
            then = job()  # type: ignore[operator]
            del job
            if callable(then):
                then()  # InFlight's: catches what it runs, and ends the epoch's count
            del then
