"""Modes "copy" and "sync": the dirty pages copied into staging in the pause.

"copy": staging of at most ``staging`` bytes; persist runs on its own thread.
Pages that do not fit are written in the pause instead (the pause grows,
memory does not). "sync": every page written in the pause, straight from the
arena, and committed in the caller, which waits until the epoch is durable
(no staging).

The collect, the copy and the pages written in the pause are one call with
the GIL held (``_core.pause_copy``, the epoch's C writer as its sink; the
writer's threads need no GIL): no other Python thread runs between them, so
an epoch is one instant of every Python writer. A native thread that writes
with the GIL released is never stopped: use mode fork or background, or
quiesce it (docs/checkpointing.md). An epoch whose pages the C writer cannot
take (compressed, in a build without that codec) writes the pages beyond
``staging`` after the call, with the GIL released: they are of the instant
only if the program's other threads are stopped; mode sync then stages like
copy.

The write starts from the pause: an epoch that stages at least
ASYNC_MIN_BYTES (a full epoch, a dense increment) hands its staged pages to
the C writer as an add that runs beyond the pause (mck_ew_add_async):
the writer's threads start in C the instant the copy ends (PAUSE_THREADS,
0 by default, may start some beside the copy, on CPUs idle at the pause,
each taking 8 MiB of staging as the copy fills it: measured here, such a
thread took CPU from the copy and the pause grew), and they go on after
checkpoint() returned; the persist thread only waits for them, then
commits (docs/benchmarks.md, "Mode copy's staged epochs written while the
pause copies", has the measurements). The writer keeps the staging buffer
alive until its threads are done; commit waits for them (and raises their
error: the epoch is aborted, the next one works),
abort() stops them before the pack is closed, a fork child never touches
them, and a staging buffer still read is never recycled. Smaller epochs
(the usual increment) stage, then write on the persist thread, as before:
their copy is a few milliseconds, and their pause stays what it was.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from ..epoch import EpochInfo
from ..store.contract import EpochWriterContract
from .base import Capture, Context, Request, abort_quietly, commit, no_gc
from .fork import ForkMode, ForkRefused

# a full epoch of mode copy is taken by fork() when the process's resident
# pages are at most this many times the arena's: the fork copies their page
# tables (~0.1 µs a page here), the staging copy the epoch's pages (~0.7 µs
# a page, faults included); python bench/probe_fork_pause.py
FORK_RSS_RATIO = 4
# with the default staging a full epoch is taken by fork while the staged
# epoch's writer would run on no more threads than this: 2 for the processes
# that hash a fork child's epoch (the child and, from 128 MiB, one helper:
# csrc/capture_fork.c). 0, the default: never (measured on 2 CPUs, the fork's
# pause is 5-10x shorter but the staged epoch is durable 1.05-1.5x sooner at
# 1 GiB: bench/bench_write.py, docs/benchmarks.md "Full epochs of mode copy
# by fork")
FORK_PROCESSES = 0
# an epoch that stages at least this many bytes is written while the pause
# copies it (see the module docstring); 0: never. Below it, the copy is too
# short to hide anything behind
ASYNC_MIN_BYTES = 32 << 20
# the writer's threads that run beside the pause's copy (the rest start when
# it ends), at most, and only as many as CPUs are idle at the pause (no
# runnable task on them: /proc/loadavg). 0, the default: none (the writer
# starts, in C, the instant the copy ends). On these 2 CPUs a thread beside
# the copy took from it: quiet (load 0.8-1.7), the first full epoch's pause
# at 1 GiB was 345 ms with one beside against 136 ms with none, durable no
# sooner (874 / 813 ms); busy, a dense 1 GiB increment's pause grew 1.5-2.6x
# (bench/bench_write.py, bench/probe_copy_overlap.py; docs/benchmarks.md
# "Mode copy's staged epochs written while the pause copies")
PAUSE_THREADS = 0


class CopyMode:
    name = "copy"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._spare: np.ndarray | None = None  # a staging buffer kept for the next capture
        self._forker: ForkMode | None = None   # full epochs, see _by_fork
        self.fork_refused: str | None = None   # why fork() failed once: full epochs staged since

    def _by_fork(self, req: Request) -> bool:
        """Whether mode copy takes this epoch by fork(): a full epoch written
        by a child from its copy-on-write image, as mode fork does (the
        pause: the collect and the fork; no staging), rather than a staging
        copy of the whole arena in the pause and a threaded write after it.
        Only where the child can write it (uncompressed), where the fork
        costs less than the copy (FORK_RSS_RATIO), never again after a fork
        failed, and where either ``staging=`` cannot hold the epoch or the
        staged epoch's writer would run on no more threads than
        FORK_PROCESSES (0 by default: the staged epoch is durable sooner)
        and the caller is the main thread (the child dies with the thread that forked it: a
        thread of the program's that ends before the epoch is durable would
        fail it, where the staged epoch does not care)."""
        if self.name != "copy" or req.kind != "full" or req.writer.compress is not None \
                or self.fork_refused is not None:
            return False
        if self.ctx.staging_pages >= self.ctx.npages and (
                req.writer.threads > FORK_PROCESSES
                or threading.current_thread() is not threading.main_thread()):
            return False
        return _resident_pages() <= FORK_RSS_RATIO * self.ctx.npages

    def _fork_full(self, req: Request) -> Capture:
        if self._forker is None:
            self._forker = ForkMode(self.ctx)
        cap = self._forker.capture(req)
        cap.mode = self.name
        cap.extra["full_by"] = "fork"
        return cap

    def capture(self, req: Request) -> Capture:
        """Collect, copy into staging and write what staging cannot hold, in
        one instant of every Python thread (tracker.pause_copy, GIL held):
        the part of a checkpoint the program waits for (see the module
        docstring)."""
        ctx, w, kind = self.ctx, req.writer, req.kind
        if self._by_fork(req):
            try:
                return self._fork_full(req)
            except ForkRefused as exc:  # no child ran: stage this epoch and every later one
                self.fork_refused = str(exc)
                w.take_back()
        sink = w.native_writer()
        # sync: the caller waits for the epoch anyway, so with a C writer every
        # page is written in the pause, straight from the arena: no staging
        room = 0 if sink and self.name == "sync" else ctx.staging_pages
        buf = self._staging(room)  # before the pause: virtual until the copy touches it
        bufs = ctx.pause_buffers()
        carry = ctx.collector.take_carry()
        async_min = -(-ASYNC_MIN_BYTES // ctx.page_size) if sink and ASYNC_MIN_BYTES > 0 else 0
        t0 = time.perf_counter()
        with no_gc():
            try:
                pages, dirty, reported, nstaged, nsunk, held_s, err, staged_async, beside = \
                    ctx.tracker.pause_copy(carry, ctx.full_flag(kind), bufs, buf, room, sink,
                                           async_min, PAUSE_THREADS)
            except BaseException:
                if carry is not None:  # nothing was collected: the carry is still unsaved
                    ctx.collector.give_back(carry)
                raise
        t1 = time.perf_counter()
        try:
            if staged_async:  # all of them, the staged ones still being written from buf
                w.added_natively(pages, None, reading=buf)
            elif nsunk or err is not None:
                w.added_natively(pages[:nsunk], err)  # err: aborts, raises it named
            overflow = int(pages.size) - nstaged - nsunk
            if overflow:  # no C writer (compressed in Python): after the pause, from the arena
                src = ctx.pages
                assert src is not None
                w.add_pages_from(src, pages[:overflow])
        except BaseException:
            ctx.collector.give_back(dirty)  # collected, not saved: the next epoch needs them
            abort_quietly(w)
            raise
        # the program was stopped while the GIL was held, and the caller
        # while it wrote the pages beyond staging without a C writer
        pause = held_s + (time.perf_counter() - t1 if overflow else 0.0)
        data = buf[:nstaged]
        extra: dict[str, Any] = {"tracker_reported": reported, "staging_bytes": int(data.nbytes),
                                 "pages_in_pause": nsunk + overflow, "writer_threads": w.threads}
        if kind == "full" and self.fork_refused is not None:
            extra["fork_refused"] = self.fork_refused
        if staged_async:
            extra["written_from_pause"] = True
            extra["writer_threads_in_pause"] = beside
        extra.update(ctx.unpopulated(kind, pages))
        # written from the pause on: nothing left for persist to add
        rest = pages[:0] if staged_async else pages[nsunk + overflow:]
        return Capture(kind=kind, parent=req.parent, epoch=w.epoch, writer=w,
                       pages=rest, dirty=dirty, data=data[:rest.size],
                       pages_dirty=ctx.candidates(kind, pages), pause_s=pause, started=t0,
                       label=req.label, mode=self.name, extra=extra, persist=self.persist, call=req.call,
                       release=lambda: self._recycle(buf, kind, nstaged,
                                                     w if staged_async else None))

    def persist(self, cap: Capture) -> EpochInfo:
        """Write a staged capture to its epoch and commit it (on the persist thread)."""
        return persist_staged(cap, self.ctx.tracker.backend, caller_waits=self.name == "sync")

    def _staging(self, rows: int) -> np.ndarray:
        spare, self._spare = self._spare, None
        if spare is not None and spare.shape[0] >= rows:
            return spare
        # virtual until written: only the pages an epoch stages take memory,
        # and they stay resident for the next epoch that reuses the buffer
        return np.empty((rows, self.ctx.page_size), dtype=np.uint8)

    def _recycle(self, buf: np.ndarray, kind: str, nstaged: int,
                 w: EpochWriterContract | None = None) -> None:
        # Keep the staging buffer for the next epoch: its pages are resident,
        # and a fresh buffer costs a page fault per page in the pause (50% of
        # 1 GiB dirty: 436 ms against 75 ms reused). A buffer a full epoch
        # filled is let go unless small: the arena's size, held for good
        # after the first epoch, is what staging= is there to bound. A
        # buffer the epoch's C writer (w: given when it took the staged
        # pages from the pause on) still reads, not yet waited for or
        # stopped, is never reused: the writer keeps it alive until its
        # threads are done.
        if w is not None and w.native_busy():
            return
        if kind == "full" and nstaged * self.ctx.page_size > max(64 << 20, self.ctx.arena.nbytes // 8):
            return
        self._spare = buf

    def prepare(self) -> int:
        return 0

    def close(self) -> None:
        self._spare = None
        if self._forker is not None:
            self._forker.close()


def _resident_pages() -> int:
    """The process's resident pages (/proc/self/statm), or 0 if unreadable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0


class SyncMode(CopyMode):
    """Mode "sync": the caller persists (see the module docstring)."""

    name = "sync"


def persist_staged(cap: Capture, backend: str, *, caller_waits: bool = False) -> EpochInfo:
    """Hand a capture's staged pages to its writer and commit (modes copy,
    sync and background)."""
    w = cap.writer
    cap.extra["writer_threads"] = w.threads
    try:
        # whole: the store chunks what it must. None left when all were
        # written in the pause or from it on: it then waits for the latter
        w.add_pages(cap.pages, cap.data)
        return commit(cap, backend, caller_waits=caller_waits)
    except BaseException:
        abort_quietly(w)  # the store sweeps leftovers on open
        raise
