"""Fork snapshots: one epoch written by a forked child (csrc/capture_fork.c).

The parent hands an open :class:`~memckpt.store.local.EpochWriter`'s files to
a child forked at the checkpoint instant; the child writes the dirty pages of
its copy-on-write image into them (no Python runs in it) and reports counts,
sizes and digests; the parent adopts the files, and the caller commits::

    w = store.begin(kind=..., parent=..., layout=..., npages=...)
    snap = ForkSnapshot(w, arena._region, arena.page_size, pages, scratch=scratch)
    ...                                   # the program runs on
    result = snap.finish()                # the child's report; ForkChildError if it failed
    info = w.commit(pages_dirty=..., pause_s=..., mode="fork",
                    extra={"fork_s": snap.fork_s, "child_s": result["child_s"],
                           "extra_bytes": result["extra_bytes"]})
    snap.release()                        # reaps the child (whatever happened)
"""
from __future__ import annotations

import mmap
import os
import signal as _signal
import time
from typing import Any

import numpy as np

from .. import _core
from ..errors import ForkChildError

_ADOPT_KEYS = ("records", "stored", "dedup", "zero", "pack_size", "idx_size", "idx_digest")
_STAGE_WORDS = {
    "setup": "setting itself up", "pack": "writing the pack", "index": "writing the index",
    "sync": "syncing the pack and index", "report": "reporting its result",
}


class ForkScratch:
    """The child's working memory (digests, records, dedup table), reused
    from one checkpoint to the next: an anonymous shared mapping, touched once
    by the parent, so that the child's writes to it neither copy pages nor
    count as extra memory. One child at a time may use it."""

    def __init__(self) -> None:
        self._mm: mmap.mmap | None = None

    def get(self, n: int) -> mmap.mmap:
        need = _core.fork_scratch_size(n)
        if self._mm is None or len(self._mm) < need:
            self.close()
            mm = mmap.mmap(-1, need)  # MAP_SHARED | MAP_ANONYMOUS
            view = np.frombuffer(mm, dtype=np.uint8)
            view[::mmap.PAGESIZE] = 0  # one byte a page: every page allocated, in the parent
            del view
            self._mm = mm
        return self._mm

    @property
    def nbytes(self) -> int:
        return 0 if self._mm is None else len(self._mm)

    def close(self) -> None:
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()


def describe(result: dict[str, Any], epoch: int) -> str:
    """A sentence for a failed child's result (ForkChild.wait())."""
    pid = result["pid"]
    if result["stage"] == "died":
        if result["signal"]:
            try:
                name = _signal.Signals(result["signal"]).name
            except ValueError:
                name = f"signal {result['signal']}"
            why = ""
            if result["signal"] == _signal.SIGKILL:
                why = (" (by kill(), the OOM killer, or because the thread that forked it exited: "
                       "the child dies with that thread)")
            return (f"fork child {pid} was killed by signal {result['signal']} ({name}) while "
                    f"writing epoch {epoch}{why}")
        if result["exit_code"] >= 0:
            return (f"fork child {pid} exited with code {result['exit_code']} without reporting "
                    f"while writing epoch {epoch}")
        return f"fork child {pid} ended without reporting while writing epoch {epoch}"
    err = result["error"]
    what = _STAGE_WORDS.get(result["stage"], result["stage"])
    return (f"fork child {pid} failed {what} of epoch {epoch}: [Errno {err}] "
            f"{os.strerror(err) if err else 'unknown error'}")


class ForkSnapshot:
    """One epoch being written by a fork child; see the module docstring.

    ``pages``: sorted uint64 page numbers of the region (all of them for a
    full epoch). ``fork_s`` is how long the fork took (the parent's part of
    the pause after collecting). The writer is aborted if the fork fails."""

    def __init__(self, writer: Any, region: Any, page_size: int, pages: np.ndarray, *,
                 scratch: Any = None, target: tuple[int, int, bytes, int, bytes] | None = None) -> None:
        self.writer = writer
        self.epoch: int = writer.epoch
        self.result: dict[str, Any] | None = None
        try:
            # target: writer.external_target(), when the caller took it earlier
            # (before the pause: it creates the index file)
            pack_fd, off, phdr, idx_fd, ihdr = writer.external_target() if target is None else target
            pages = np.ascontiguousarray(pages, dtype=np.uint64)
            t = time.perf_counter()
            self.child = _core.fork_snapshot(region, page_size, pages, writer.kind == "incremental",
                                             pack_fd, off, phdr, idx_fd, ihdr, scratch)
            self.fork_s = time.perf_counter() - t
        except BaseException:
            writer.abort()
            raise
        self.pid: int = self.child.pid

    @classmethod
    def of_child(cls, writer: Any, child: Any, fork_s: float) -> ForkSnapshot:
        """The snapshot of a child forked already (``_core.pause_fork``)."""
        snap = cls.__new__(cls)
        snap.writer, snap.epoch, snap.result = writer, writer.epoch, None
        snap.child, snap.fork_s, snap.pid = child, fork_s, child.pid
        return snap

    def finish(self) -> dict[str, Any]:
        """Wait for the child (GIL released) and adopt its files into the
        writer, ready for commit. On failure the writer is aborted (the store
        keeps its last committed epoch) and ForkChildError says why."""
        if self.result is not None:
            return self.result
        try:
            res = self.child.read()  # a child that reported exits on its own: see release()
            if not res["ok"] and self.child.running:
                res = self.child.wait()  # it reported a failure: reap it, for exit_code
        except BaseException:
            self.kill()
            raise
        if not res["ok"]:
            self.writer.abort()
            raise ForkChildError(describe(res, self.epoch), pid=res["pid"], epoch=self.epoch,
                                 stage=res["stage"], errno=res["error"], signal=res["signal"])
        self.writer.adopt(**{k: res[k] for k in _ADOPT_KEYS})  # aborts the writer itself on a mismatch
        self.result = res
        return res

    def release(self) -> None:
        """Whatever happened, reap the child: after finish(), wait for its
        exit (the teardown of its copy of the address space, which the
        commit did not wait for); otherwise kill it and drop the epoch."""
        if not self.child.running:
            return
        if self.result is not None:
            self.child.wait()
        else:
            self.kill()

    def kill(self) -> None:
        """Kill and reap the child, and drop the epoch (for error paths and close)."""
        try:
            self.child.kill()
        finally:
            self.writer.abort()
