"""Replication: a local store's committed epochs copied, in the background,
to an S3 store (its own recovery point off the machine).

Each epoch is copied byte for byte (pack, index, then the manifest, the
replica's commit, with a PUT that refuses to overwrite), in epoch order, and
never before its parent is there. The bytes in flight at once are bounded
(``max_inflight_bytes``; an object larger than the bound goes alone), so a
burst of checkpoints queues instead of taking memory or bandwidth without
end. Each epoch's time to remote durability is recorded: from its local
commit (the manifest's creation time) to the replica's manifest PUT.

Use: ``r = Replicator(store, "s3://bucket/run", storage_options=...)``,
then ``r.submit(epoch)`` after each commit (or ``poll_s=``: the replicator
watches the store itself), ``r.wait()``, ``r.records``, ``r.close()``.
A replica is written by its replicator alone; retention (prune) is not
replicated."""
from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import EpochNotFound, MemckptError
from . import format as fmt
from .s3client import ObjectExists

__all__ = ["ReplicaRecord", "ReplicationError", "Replicator"]


class ReplicationError(MemckptError):
    """An epoch could not be copied to the replica (the message says why)."""


@dataclass(frozen=True)
class ReplicaRecord:
    epoch: int
    bytes: int               # object bytes uploaded for it (0: it was there already)
    local_total_s: float     # the local commit's own time to durable (the manifest's total_s)
    remote_lag_s: float      # from the local commit to the replica's manifest PUT
    upload_s: float          # the upload itself (objects and manifest)
    error: str | None = None


class _Budget:
    """Bytes in flight, bounded; an object over the bound waits until none is."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cv = threading.Condition()

    def take(self, n: int) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n
            self.peak = max(self.peak, self.used)

    def give(self, n: int) -> None:
        with self._cv:
            self.used -= n
            self._cv.notify_all()


class Replicator:
    """Copies committed epochs of ``source`` (a local memckpt.Store) to
    ``remote`` (an s3:// URL or an S3Store); see the module docstring."""

    def __init__(self, source: Any, remote: Any, *, storage_options: dict[str, Any] | None = None,
                 max_inflight_bytes: int = 256 << 20, workers: int = 4,
                 poll_s: float | None = None) -> None:
        from .local import Store
        from .s3 import S3Store
        if not isinstance(source, Store):
            raise TypeError(f"the source of a replica is a local memckpt.Store, not "
                            f"{type(source).__name__}")
        if max_inflight_bytes < 1:
            raise ValueError(f"max_inflight_bytes must be >= 1, not {max_inflight_bytes}")
        self.source = source
        self.remote = remote if isinstance(remote, S3Store) else S3Store(
            remote, create=True, page_size=source.page_size, storage_options=storage_options)
        if self.remote.page_size != source.page_size:
            raise ValueError(f"{self.remote.url} has page size {self.remote.page_size}, "
                             f"{source.path} {source.page_size}")
        self.budget = _Budget(int(max_inflight_bytes))
        self.records: dict[int, ReplicaRecord] = {}
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="memckpt-replicate")
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._on_remote: set[int] = set()  # copied, or found there the same
        self._listed = set(self.remote.epoch_numbers())  # there when we began: compared first
        self._pending = 0
        self._submitted: set[int] = set()
        self._cv = threading.Condition()
        self._closed = False
        self._poll_s = poll_s
        self._thread = threading.Thread(target=self._run, name="memckpt-replicator", daemon=True)
        self._thread.start()
        if poll_s is not None:
            self._watcher = threading.Thread(target=self._watch, name="memckpt-replica-watch",
                                             daemon=True)
            self._watcher.start()

    def __repr__(self) -> str:
        return f"<memckpt Replicator {self.source.path} -> {self.remote.url}>"

    # -- the caller's side ------------------------------------------------------------------
    def submit(self, epoch: int) -> None:
        """Copy this committed epoch (and any ancestor the replica lacks)."""
        if self._closed:
            raise ValueError("the replicator is closed")
        with self._cv:
            self._pending += 1
            self._submitted.add(int(epoch))
        self._queue.put(int(epoch))

    def catch_up(self) -> list[int]:
        """Submit every epoch of the source the replica lacks; returns them."""
        todo = [e for e in self.source.epoch_numbers() if e not in self._on_remote
                and e not in self.records and e not in self._submitted]
        for e in todo:
            self.submit(e)
        return todo

    def wait(self, timeout: float | None = None) -> bool:
        """Until every submitted epoch is copied (or failed); False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: self._pending == 0, timeout)

    def errors(self) -> dict[int, str]:
        return {e: r.error for e, r in self.records.items() if r.error is not None}

    def close(self, timeout: float | None = None) -> None:
        """Finish what was submitted, then stop."""
        if self._closed:
            return
        self._closed = True
        self.wait(timeout)
        self._queue.put(None)
        self._thread.join(timeout)
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Replicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the background side ----------------------------------------------------------------
    def _watch(self) -> None:
        assert self._poll_s is not None
        while not self._closed:
            try:
                self.catch_up()
            except (OSError, MemckptError):
                pass  # the next look tries again
            time.sleep(self._poll_s)

    def _run(self) -> None:
        while True:
            e = self._queue.get()
            if e is None:
                return
            try:
                if e not in self._on_remote:
                    self._copy(e, depth=0)
            except BaseException as exc:  # recorded, and the next epoch goes on
                self.records[e] = ReplicaRecord(e, 0, 0.0, 0.0, 0.0, error=f"{type(exc).__name__}: {exc}")
            finally:
                with self._cv:
                    self._pending -= 1
                    self._cv.notify_all()

    def _copy(self, epoch: int, depth: int) -> None:
        src = self.source
        try:
            doc = src.manifest(epoch)
        except EpochNotFound:
            raise ReplicationError(f"epoch {epoch} of {src.path} was retired before it was "
                                   f"replicated to {self.remote.url}") from None
        if doc["kind"] == "incremental" and doc["parent"] not in self._on_remote:
            self._copy(doc["parent"], depth + 1)  # the replica never holds a broken chain
        t0 = time.perf_counter()
        b = self.remote.bucket
        name = fmt.manifest_name(epoch)
        with open(os.path.join(src.path, name), "rb") as fh:
            raw = fh.read(fmt.MAX_MANIFEST_BYTES + 1)
        if epoch in self._listed:  # there already: ours (an earlier run's), or another's
            if b.get(name, fmt.MAX_MANIFEST_BYTES) != raw:
                raise ReplicationError(f"{self.remote.url} holds another epoch {epoch} (another "
                                       f"writer's, or another history): not replicated")
            self._on_remote.add(epoch)
            self.records[epoch] = ReplicaRecord(epoch, 0, float(doc["timings"]["total_s"]),
                                                0.0, time.perf_counter() - t0)
            return
        jobs = [(doc["files"][ext]["name"], doc["files"][ext]["size"]) for ext in ("pack", "idx")]
        futs = []
        for n, size in jobs:
            self.budget.take(size)
            futs.append(self._pool.submit(self._upload, n, size))
        for f in futs:
            f.result()
        try:
            b.put(name, raw, len(raw), exclusive=True)  # the replica's commit point
        except ObjectExists:
            if b.get(name, fmt.MAX_MANIFEST_BYTES) != raw:
                raise ReplicationError(f"{self.remote.url} holds another epoch {epoch} (another "
                                       f"writer's, or another history): not replicated") from None
        now = time.time()
        self._on_remote.add(epoch)
        self.records[epoch] = ReplicaRecord(
            epoch, sum(s for _, s in jobs) + len(raw), float(doc["timings"]["total_s"]),
            max(0.0, now - float(doc["created"])), time.perf_counter() - t0)

    def _upload(self, name: str, size: int) -> None:
        try:
            with open(os.path.join(self.source.path, name), "rb") as fh:
                self.remote.bucket.put(name, fh, size, exclusive=False)
        finally:
            self.budget.give(size)
