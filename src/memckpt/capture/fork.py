"""Mode "fork": a ``fork()`` child writes the pages from its copy-on-write
image (csrc/capture_fork.c, through :mod:`memckpt.capture.forksnap`); the
parent resumes right after the fork. The pause is the collect and the fork.
"""
from __future__ import annotations

import time
from typing import Any

from ..epoch import EpochInfo
from .base import Capture, Context, Request, abort_quietly, commit, no_gc
from .forksnap import ForkScratch, ForkSnapshot


class ForkRefused(OSError):
    """fork() failed (EAGAIN, ENOMEM under strict overcommit, a sandbox): no
    child ran, and the pages collected were given back to the collector."""


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
        bufs = ctx.pause_buffers()
        carry = ctx.collector.take_carry()
        t0 = time.perf_counter()
        # the collect and the fork in one call with the GIL held: the child's
        # image is one instant of every Python thread
        with no_gc():
            try:
                pages, dirty, reported, child, collect_s, fork_s, err = ctx.tracker.pause_fork(
                    carry, ctx.full_flag(req.kind), bufs, req.kind == "incremental", target,
                    scratch)
            except BaseException:
                if carry is not None:  # nothing was collected
                    ctx.collector.give_back(carry)
                raise
        if err is not None:
            ctx.collector.give_back(dirty)  # collected, not saved: the next epoch needs them
            raise ForkRefused(err.errno, err.strerror)
        snap = ForkSnapshot.of_child(w, child, fork_s)
        pause = collect_s + fork_s  # the GIL held throughout: the program was stopped
        extra: dict[str, Any] = {"tracker_reported": reported, "collect_s": collect_s,
                                 "fork_s": snap.fork_s, "child_pid": snap.pid}
        extra.update(ctx.unpopulated(req.kind, pages))
        return Capture(kind=req.kind, parent=req.parent, epoch=w.epoch, writer=w, pages=pages,
                       dirty=dirty, data=snap, pages_dirty=ctx.candidates(req.kind, pages),
                       pause_s=pause, started=t0, label=req.label, mode=self.name, extra=extra,
                       persist=self.persist, call=req.call, release=snap.release)

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
