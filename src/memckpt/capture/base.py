"""What every capture mode shares: the hand-off from capture to persist
(:class:`Capture`), what the checkpointer hands a mode (:class:`Context`,
:class:`Collector`, :class:`Request`), and the protocol a mode implements.

A mode takes the snapshot in the pause (``capture``) and says how the epoch
is persisted afterwards (``Capture.persist``, on the persist thread). It
sees the arena's pages, the tracker and the collector, never the
checkpointer: the epoch lifecycle (kind, parent, one epoch in flight,
rollback) is ``memckpt.checkpoint``'s.
"""
from __future__ import annotations

import contextlib
import gc
import queue
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from .. import _core
from ..arena import Arena
from ..epoch import EpochInfo
from ..store.contract import EpochWriterContract
from ..tracker import DirtyTracker

NO_PAGES = np.empty(0, dtype=np.uint64)

# A full epoch's candidates are the pages that may hold data (Region.populated,
# after the collect): every other page reads as zero, and a full epoch records
# no zero page, so the epoch is the same without reading, staging or (under
# uffd-sync, whose MISSING fills give every page read a real one) populating
# them. False: every page, as before (bench/probe_sparse_full.py compares).
SKIP_UNPOPULATED = True

# How long a persist waits for checkpoint() to return before it commits
# without call_s (the return comes microseconds after the hand-off).
_CALL_WAIT_S = 10.0


class Collector:
    """The pages written since the arena last matched an epoch besides what
    the tracker will report: ``carry``, the pages of an epoch that failed (or
    of a rollback cut short), which still differ from the head and belong to
    the next epoch or rollback. Owned by the checkpointer, used by the modes
    (each pause takes it) and by rollback."""

    def __init__(self, tracker: DirtyTracker) -> None:
        self.tracker = tracker
        self.carry = NO_PAGES

    def take_carry(self) -> np.ndarray | None:
        """The carried pages, handed to a pause (None if none); the pause's
        caller gives back what it collected if the epoch fails."""
        carry, self.carry = self.carry, NO_PAGES
        return carry if carry.size else None

    def give_back(self, pages: np.ndarray) -> None:
        """Pages collected and not saved: still unsaved changes."""
        self.carry = np.union1d(self.carry, pages) if self.carry.size else pages


@dataclass
class Context:
    """What a mode works on: the arena, its pages as a (npages, page_size)
    uint8 view (None once the checkpointer lets go of the arena), its tracker
    and collector, and the staging bound in pages."""

    arena: Arena
    pages: np.ndarray | None
    tracker: DirtyTracker
    collector: Collector
    staging_pages: int

    @classmethod
    def over(cls, arena: Arena, tracker: DirtyTracker, staging: int | None) -> Context:
        """The context of a checkpointer of ``arena``: ``staging`` bytes (None:
        the arena's size) bound what a mode stages; the rest of an epoch is
        written in the pause."""
        pages = np.frombuffer(arena.buffer(), dtype=np.uint8).reshape(arena.npages, arena.page_size)
        room = arena.npages if staging is None else staging // arena.page_size
        return cls(arena, pages, tracker, Collector(tracker), room)

    @property
    def npages(self) -> int:
        return self.arena.npages

    @property
    def page_size(self) -> int:
        return self.arena.page_size

    _bufs: Any = None

    def pause_buffers(self) -> Any:
        """Where a pause writes its page lists (allocated once, before any pause)."""
        if self._bufs is None:
            self._bufs = _core.PauseBuffers(self.npages)
        return self._bufs

    def full_flag(self, kind: str) -> int:
        """How a pause lists a full epoch's pages: those that may hold data
        at the instant (the rest read as zero, which a full epoch does not
        record; they stay tracked like any page, so a write to one is in the
        next increment), or every page (SKIP_UNPOPULATED off)."""
        if kind != "full":
            return 0
        return _core.PAUSE_POPULATED if SKIP_UNPOPULATED else _core.PAUSE_EVERY_PAGE

    def candidates(self, kind: str, pages: np.ndarray) -> int:
        """pages_dirty: a full epoch's candidates are still every page (the
        ones not read are known to be zero)."""
        return self.npages if kind == "full" else int(pages.size)

    def unpopulated(self, kind: str, pages: np.ndarray) -> dict[str, Any]:
        if kind != "full":
            return {}
        return {"pages_unpopulated": self.npages - int(pages.size)}


class CallClock:
    """How long ``checkpoint()`` blocks its caller: started at its entry,
    stopped at its return. An asynchronous mode's persist waits for the stop
    before it commits (it comes right after the hand-off), so that the
    manifest records ``call_s``; a caller that waits for the persist (mode
    "sync") is blocked until durable, which the commit measures itself.

    stop() runs in the caller's thread, where a signal handler's exception
    (Ctrl-C) may land between any two bytecodes: it takes no lock (an
    ``Event.set()`` cut short there left the event's lock held, and the
    persist waiting for the stop hung for good, as did the exit that waited
    for the persist: the interrupt fuzz). One ``SimpleQueue.put``, a single
    C call, says it is done; a stop cut short before it leaves the persist
    to commit without ``call_s`` after its timeout."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.s: float | None = None
        self._done: queue.SimpleQueue[bool] = queue.SimpleQueue()

    def stop(self) -> float:
        s = self.s = time.perf_counter() - self.started
        self._done.put(True)
        return s

    def wait(self, timeout: float) -> float | None:
        if self.s is None:
            try:
                self._done.get(timeout=timeout)
            except queue.Empty:
                pass
        return self.s


@dataclass(frozen=True)
class Request:
    """One epoch to capture: its kind and parent (the checkpointer's call),
    its label, its writer (begun before the pause) and the clock of the
    checkpoint() call taking it."""

    kind: str
    parent: int | None
    label: str | None
    writer: EpochWriterContract
    call: CallClock


@dataclass
class Capture:
    """The handoff from capture to persist: everything persist needs, owned by it.

    ``pages`` and ``data`` are the page numbers (sorted uint64) and their
    content as the mode snapshot them (in mode "copy", the staged ones).
    ``dirty`` is what the tracker reported (all of the pages in an
    increment): if the epoch fails, those pages are still unsaved changes.
    ``persist`` writes and commits the capture (on the persist thread);
    ``release`` gives back what the capture holds (staging, a child process),
    whatever happened.
    """

    kind: str
    parent: int | None
    epoch: int
    writer: EpochWriterContract
    pages: np.ndarray
    dirty: np.ndarray
    data: Any
    pages_dirty: int
    pause_s: float
    started: float  # perf_counter() at the start of capture
    label: str | None
    mode: str
    persist: Callable[[Capture], EpochInfo]
    call: CallClock
    release: Callable[[], None] = lambda: None
    extra: dict[str, Any] = field(default_factory=dict)


class CaptureMode(Protocol):
    """One capture mode (see memckpt.capture's table)."""

    name: str

    def capture(self, req: Request) -> Capture:
        """Take the snapshot (the pause). On failure the collected pages are
        given back to the collector and the writer is left to the caller."""
        ...

    def prepare(self) -> int:
        """Work that shortens the next pause, done while the program runs."""
        ...

    def close(self) -> None:
        """Let go of what the mode keeps between epochs (staging, scratch)."""
        ...


def commit(cap: Capture, backend: str, *, caller_waits: bool = False) -> EpochInfo:
    """Commit a capture whose pages are in its writer; total_s runs from the
    pause. ``caller_waits`` (mode "sync"): the program is stopped, and
    checkpoint() blocked, until the epoch is durable."""
    if caller_waits:
        return cap.writer.commit(pages_dirty=cap.pages_dirty, pause_s=None, label=cap.label,
                                 tracker=backend, mode=cap.mode, extra=cap.extra,
                                 started=cap.started, call_started=cap.call.started)
    call_s = cap.call.wait(_CALL_WAIT_S)
    return cap.writer.commit(pages_dirty=cap.pages_dirty, pause_s=cap.pause_s, label=cap.label,
                             tracker=backend, mode=cap.mode, extra=cap.extra,
                             started=cap.started, call_s=call_s)


def abort_quietly(writer: EpochWriterContract) -> None:
    """Abort after an error: the first error is the one to see (abort() is
    idempotent and keeps an epoch whose manifest is in place)."""
    try:
        writer.abort()
    except Exception:
        pass


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """No cyclic collection inside a pause: a collection runs finalizers,
    i.e. Python code, at an allocation, and Python code may hand the
    interpreter to another thread in the middle of the instant."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
