"""Modes "copy" and "sync": the dirty pages copied into staging in the pause.

"copy": staging of at most ``staging`` bytes; persist runs on its own thread.
Pages that do not fit are written in the pause instead (the pause grows,
memory does not). "sync": the same copy, persisted in the caller, which
waits until the epoch is durable anyway: it stages at most one chunk and
writes the rest straight from the arena, so a dense full epoch needs no
arena-sized buffer.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..epoch import EpochInfo
from .base import ADD_CHUNK_PAGES, Capture, Context, Request, abort_quietly, commit

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


class CopyMode:
    name = "copy"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._spare: np.ndarray | None = None  # a staging buffer kept for the next capture

    def _room(self) -> int:
        return self.ctx.staging_pages

    def capture(self, req: Request) -> Capture:
        """Collect and copy into staging: the part of a checkpoint the program
        waits for. Pages beyond the staging bound are written to the epoch
        here, in the pause, straight from the arena."""
        ctx, w = self.ctx, req.writer
        src = ctx.pages
        assert src is not None
        t0 = time.perf_counter()
        dirty, reported = ctx.collector.collect()
        try:
            pages = ctx.full_pages() if req.kind == "full" else dirty
            overflow = max(0, int(pages.size) - self._room())
            if overflow:
                # the lowest pages go first: the writer takes pages in increasing order
                scratch = np.empty((min(overflow, ADD_CHUNK_PAGES), ctx.page_size), np.uint8)
                for s in range(0, overflow, ADD_CHUNK_PAGES):
                    part = pages[s:min(s + ADD_CHUNK_PAGES, overflow)]
                    copy_pages(src, part, scratch[:part.size])
                    w.add_pages(part, scratch[:part.size])
                del scratch
            staged = pages[overflow:]
            buf = self._staging(staged.size)
            data = buf[:staged.size]
            copy_pages(src, staged, data)
        except BaseException:
            ctx.collector.give_back(dirty)  # collected, not saved: the next epoch needs them
            raise
        pause = time.perf_counter() - t0
        extra: dict[str, Any] = {"tracker_reported": reported, "staging_bytes": int(data.nbytes),
                                 "pages_in_pause": overflow}
        extra.update(ctx.unpopulated(req.kind, pages))
        kind = req.kind
        return Capture(kind=kind, parent=req.parent, epoch=w.epoch, writer=w, pages=staged,
                       dirty=dirty, data=data, pages_dirty=ctx.candidates(kind, pages),
                       pause_s=pause, started=t0, label=req.label, mode=self.name, extra=extra,
                       persist=self.persist, release=lambda: self._recycle(buf, kind))

    def persist(self, cap: Capture) -> EpochInfo:
        """Write a staged capture to its epoch and commit it (on the persist thread)."""
        return persist_staged(cap, self.ctx.tracker.backend)

    def _staging(self, npages: int) -> np.ndarray:
        spare, self._spare = self._spare, None
        if spare is not None and spare.shape[0] >= npages:
            return spare
        # A quarter more than asked (within the staging bound): a program whose
        # dirty set wobbles around one size reuses one buffer instead of paying
        # the page faults of a fresh one at every slightly larger epoch.
        rows = min(max(npages, self.ctx.staging_pages), npages + npages // 4 + 256)
        return np.empty((rows, self.ctx.page_size), dtype=np.uint8)

    def _recycle(self, buf: np.ndarray, kind: str) -> None:
        # Keep the staging buffer of an incremental epoch for the next one: its
        # pages are resident, and a fresh buffer costs a page fault per page in
        # the pause (50% of 1 GiB dirty: 436 ms against 75 ms reused). A full
        # epoch's is let go unless small: the arena's size, held for good
        # after the first epoch, is what staging= is there to bound.
        if kind == "full" and buf.nbytes > max(64 << 20, self.ctx.arena.nbytes // 8):
            return
        if self._spare is None or self._spare.shape[0] < buf.shape[0]:
            self._spare = buf

    def prepare(self) -> int:
        return 0

    def close(self) -> None:
        self._spare = None


class SyncMode(CopyMode):
    """Mode "sync": the caller persists (see the module docstring)."""

    name = "sync"

    def _room(self) -> int:
        return min(self.ctx.staging_pages, ADD_CHUNK_PAGES)


def persist_staged(cap: Capture, backend: str) -> EpochInfo:
    """Hand a capture's staged pages to its writer and commit (modes copy,
    sync and background)."""
    w = cap.writer
    try:
        for s in range(0, cap.pages.size, ADD_CHUNK_PAGES):
            w.add_pages(cap.pages[s:s + ADD_CHUNK_PAGES], cap.data[s:s + ADD_CHUNK_PAGES])
        return commit(cap, backend)
    except BaseException:
        abort_quietly(w)  # the store sweeps leftovers on open
        raise
