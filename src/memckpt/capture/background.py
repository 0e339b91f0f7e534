"""Mode "background": the dirty pages are write-protected in the pause and
copied by the core's copier thread (csrc/capture_bg.c); a write to a page
not copied yet waits for its copy. Runs on the uffd-sync tracker only.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import _core
from ..epoch import EpochInfo
from ..errors import TrackerUnavailable
from . import base
from .base import Capture, Context, Request, abort_quietly
from .copy import persist_staged


def background_tracker(tracker: str) -> str:
    """The tracker mode "background" runs on: uffd-sync, whose handler thread
    can hold a writer until its page is copied. Raises TrackerUnavailable
    (no userfaultfd write-protect here) or ValueError (another tracker asked
    for), naming the modes to use instead."""
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


class BackgroundMode:
    name = "background"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._buf: np.ndarray | None = None  # the staging of every epoch

    def capture(self, req: Request) -> Capture:
        """Collect and write-protect the dirty pages, and start their copy on
        the core's copier thread: the pause. A full epoch, and an epoch that
        must also hold a failed epoch's pages, snapshot every page the same way."""
        ctx, w, kind = self.ctx, req.writer, req.kind
        t0 = time.perf_counter()
        if self._buf is None:
            # virtual until written: only the most pages ever staged take memory
            self._buf = np.empty((ctx.npages, ctx.page_size), dtype=np.uint8)
        carry = ctx.collector.carry
        every = kind == "full" or bool(carry.size)
        # on failure nothing was collected: the pages stay dirty in the tracker
        if base.SKIP_UNPOPULATED:
            # a full epoch: the pages that may hold data at the instant (the
            # others are neither read, nor staged, nor filled by the handler);
            # a failed epoch's pages are protected already and join as they are
            pages, st = ctx.tracker.bg_begin(self._buf, populated=kind == "full",
                                             extra=carry if carry.size else None)
        else:
            pages, st = ctx.tracker.bg_begin(self._buf, all_pages=every)
        ctx.collector.carry = base.NO_PAGES
        pause = time.perf_counter() - t0
        # if the epoch fails, all it snapshot counts as unsaved (a superset)
        extra: dict[str, Any] = {"tracker_reported": int(pages.size) if not every else None,
                                 "staging_bytes": int(pages.size) * ctx.page_size,
                                 "collect_s": st["collect_s"], "protect_s": st["protect_s"],
                                 "prearmed": st["prearmed"],
                                 "protect_calls": st["protect_calls"], "runs": st["runs"],
                                 "max_gap": st["max_gap"]}
        extra.update(ctx.unpopulated(kind, pages))
        n = int(pages.size)
        return Capture(kind=kind, parent=req.parent, epoch=w.epoch, writer=w, pages=pages,
                       dirty=pages, data=self._buf, pages_dirty=ctx.candidates(kind, pages),
                       pause_s=pause, started=t0, label=req.label, mode=self.name, extra=extra,
                       persist=self.persist, call=req.call, release=lambda: self._recycle(kind, n))

    def _recycle(self, kind: str, npages: int) -> None:
        # As mode "copy" does: the staging a full epoch touched is let go
        # unless small, or a dense arena's first epoch would hold a second
        # arena's worth of memory for good. (A copy still running keeps the
        # buffer alive through the tracker until bg_wait.)
        if kind == "full" and npages * self.ctx.page_size > max(64 << 20, self.ctx.arena.nbytes // 8):
            self._buf = None

    def persist(self, cap: Capture) -> EpochInfo:
        """On the persist thread: wait for the copy (GIL released), then write
        the staged pages as mode "copy" does."""
        t0 = time.perf_counter()
        try:
            st = self.ctx.tracker.bg_wait()
        except BaseException:
            abort_quietly(cap.writer)
            raise
        cap.extra.update(copy_s=st["copy_s"], copy_wait_s=time.perf_counter() - t0,
                         faults_waited=st["faults_waited"], copied_early=st["copied_early"])
        cap.data = cap.data[:cap.pages.size]
        return persist_staged(cap, self.ctx.tracker.backend)

    def prepare(self) -> int:
        return self.ctx.tracker.bg_prearm()

    def close(self) -> None:
        self._buf = None
