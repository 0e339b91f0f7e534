"""Mode "fork": a ``fork()`` child writes the pages from its copy-on-write
image (csrc/capture_fork.c, through :mod:`memckpt.capture.forksnap`); the
parent resumes right after the fork. The pause is the collect and the fork.
"""
from __future__ import annotations

import time
from typing import Any

from ..epoch import EpochInfo
from .base import Capture, Context, Request, abort_quietly, commit
from .forksnap import ForkScratch, ForkSnapshot


class ForkMode:
    name = "fork"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._scratch: ForkScratch | None = None  # the child's working memory, reused

    def capture(self, req: Request) -> Capture:
        """Collect, then fork a child that writes the pages. The child comes
        from the calling thread and dies with it (PR_SET_PDEATHSIG): that
        thread must outlive the epoch's persist."""
        ctx, w = self.ctx, req.writer
        if self._scratch is None:
            self._scratch = ForkScratch()
        # before the pause: the scratch (sized for a full epoch, allocated and
        # touched once) and the epoch's index file
        scratch = self._scratch.get(ctx.npages)
        target = w.external_target()
        t0 = time.perf_counter()
        dirty, reported = ctx.collector.collect()
        try:
            # the child hashes only these: a page absent now reads as zero in
            # its image too, unless written between here and the fork, which
            # the tracker reports to the next epoch (as for any page written
            # after the collect)
            pages = ctx.full_pages() if req.kind == "full" else dirty
            t1 = time.perf_counter()
            snap = ForkSnapshot(w, ctx.arena._region, ctx.page_size, pages, scratch=scratch,
                                target=target)
        except BaseException:
            ctx.collector.give_back(dirty)
            raise
        pause = time.perf_counter() - t0
        extra: dict[str, Any] = {"tracker_reported": reported, "collect_s": t1 - t0,
                                 "fork_s": snap.fork_s, "child_pid": snap.pid}
        extra.update(ctx.unpopulated(req.kind, pages))
        return Capture(kind=req.kind, parent=req.parent, epoch=w.epoch, writer=w, pages=pages,
                       dirty=dirty, data=snap, pages_dirty=ctx.candidates(req.kind, pages),
                       pause_s=pause, started=t0, label=req.label, mode=self.name, extra=extra,
                       persist=self.persist, release=snap.release)

    def persist(self, cap: Capture) -> EpochInfo:
        """Wait for the child (GIL released), adopt its files, commit. A child
        that failed or died raises ForkChildError; its epoch is dropped."""
        snap: ForkSnapshot = cap.data
        try:
            res = snap.finish()
            cap.extra["child_s"] = res["child_s"]
            cap.extra["extra_bytes"] = res["extra_bytes"]
            return commit(cap, self.ctx.tracker.backend)
        except BaseException:
            try:
                snap.release()
            except Exception:
                pass
            abort_quietly(cap.writer)
            raise

    def prepare(self) -> int:
        return 0

    def close(self) -> None:
        # its mapping goes with the last reference (a child may still use it)
        self._scratch = None
