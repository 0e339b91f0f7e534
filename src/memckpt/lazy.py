"""Lazy restore: the arena returned at once, its pages served on first touch
by a userfaultfd handler in C (csrc/lazy_restore.c) while drain threads fill
the rest, the recorded first-touch order's first (docs/restore.md)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _lazy, _reader
from .arena import Arena
from .errors import CorruptionError
from .store.eager import EpochRead
from .store.lazy import LazySources, read_touch, touch_name, write_touch

PREFETCH = ("recorded", "sequential", None)


@dataclass(frozen=True)
class LazyStats:
    """Figures of one lazy restore (times in seconds; None while draining)."""

    epoch: int
    pages: int
    prefetch: str               # what ordered the drain: "recorded (N pages)", ...
    time_to_first_access_s: float
    faults: int                 # pages the program touched before the drain mapped them
    fault_latency_median_s: float | None
    fault_latency_p99_s: float | None
    plan_s: float | None        # from the server's start to the indexes checked, the drain planned
    drain_s: float | None       # from the start of the restore to every page mapped
    drain_bytes_per_s: float | None
    bytes_read: int
    bad_pages: int
    removed_pages: int          # dropped by the program (madvise) before they were drained
    eexist: int                 # a fault and the drain raced for a page
    eagain: int                 # a copy waited for a remove event
    chunk_pages: tuple[int, int]  # the drain's smallest and largest chunk
    record_written: bool | None   # the first-touch order recorded beside the epoch


class LazyRestore:
    """The handle of a lazily restored arena (``arena.lazy``): ``wait()`` for
    the drain, ``stats()`` for its figures, ``check()`` for damage found."""

    def __init__(self, arena: Arena, store: Any, epoch: int, *, verify: bool,
                 threads: int | None, prefetch: str | None, t0: float,
                 hold: bool = False) -> None:
        if prefetch not in PREFETCH:
            raise ValueError(f"prefetch must be one of {PREFETCH}, not {prefetch!r}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.arena = arena
        self.epoch = epoch
        self._path = store.path
        self._src = LazySources(store, epoch)
        self._read = EpochRead(self._src.chain, self._src.names, epoch)
        npages = arena.npages
        if self._src.npages != npages:
            self._src.close()
            raise ValueError(f"epoch {epoch} has {self._src.npages} pages, the arena {npages}")
        self._recorded = read_touch(self._path, epoch, npages)
        order, self.prefetch = self._order(prefetch, npages)
        self._done = threading.Event()
        self._final: LazyStats | None = None
        self._fault: Any = None
        self._index_fault: Any = None
        self._final_served: int | None = None
        self._lock = threading.Lock()
        self._server: Any = None
        # the finisher records the first-touch order, closes the packs and
        # lets go of the arena's pages once the drain is over. Started first:
        # a thread started beside busy drain threads waits long for its
        # first slice, and Thread.start() waits for that
        started = threading.Event()
        threading.Thread(target=self._finish, args=(started,), name=f"memckpt-lazy-{epoch}",
                         daemon=True).start()
        pages = np.frombuffer(arena.buffer(), dtype=np.uint8).reshape(npages, arena.page_size)
        try:
            self._server = _lazy.LazyServer(self._src.sources, pages, order,
                                            indexes=self._src.indexes, verify=verify,
                                            threads=int(threads or 0), hold=hold)
        except BaseException:
            self._src.close()
            self._done.set()
            started.set()
            raise
        finally:
            del pages
        self._ttfa = time.perf_counter() - t0
        started.set()

    def _order(self, prefetch: str | None, npages: int) -> tuple[Any, str]:
        if prefetch == "sequential":
            return np.arange(npages, dtype=np.uint64), "sequential"
        if prefetch == "recorded" and self._recorded is not None:
            return self._recorded, f"recorded ({len(self._recorded)} pages)"
        if prefetch == "recorded":
            return None, f"none (no record: {touch_name(self.epoch)})"
        return None, "none"

    def _finish(self, started: threading.Event) -> None:
        started.wait()
        srv = self._server
        if srv is None:
            return  # the server did not start
        srv.wait()
        st = srv.stats()
        lat = srv.latencies()
        touched = srv.touched()
        self._fault = srv.first_fault()
        self._index_fault = srv.index_fault()
        self._final_served = st["served"]
        with self._lock:
            srv.close()
            self._server = srv = None
        self._src.close()
        self._src.release()
        written = None
        if len(touched) and self._fault is None and self._index_fault is None:
            # the new order after the old: pages the prefetch mapped before
            # the program touched them fault no more, and must stay recorded
            old = self._recorded if self._recorded is not None else np.empty(0, np.uint64)
            new = touched[~np.isin(touched, old)]
            written = write_touch(self._path, self.epoch, st["npages"],
                                  np.concatenate([old, new]))
        self._final = self._stats(st, lat, written)
        self._done.set()

    def _stats(self, st: dict[str, Any], lat: np.ndarray, written: bool | None) -> LazyStats:
        drain = (st["drained_ns"] - st["start_ns"]) / 1e9 if st["drained_ns"] else None
        nbytes = st["npages"] * self.arena.page_size
        return LazyStats(
            epoch=self.epoch, pages=st["npages"], prefetch=self.prefetch,
            time_to_first_access_s=self._ttfa, faults=st["faults"],
            fault_latency_median_s=float(np.median(lat)) / 1e9 if len(lat) else None,
            fault_latency_p99_s=float(np.percentile(lat, 99)) / 1e9 if len(lat) else None,
            plan_s=(st["planned_ns"] - st["start_ns"]) / 1e9 if st["planned_ns"] else None,
            drain_s=drain, drain_bytes_per_s=nbytes / drain if drain else None,
            bytes_read=st["bytes_read"], bad_pages=st["bad"], removed_pages=st["removed"],
            eexist=st["eexist"], eagain=st["eagain"],
            chunk_pages=(st["chunk_min"], st["chunk_max"]), record_written=written)

    # -- the API -----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> LazyStats:
        """Wait for every page to be mapped; its figures. CorruptionError if a
        page was damaged (it is poisoned: touching it raises SIGBUS);
        TimeoutError after ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the lazy restore of epoch {self.epoch} is still draining "
                               f"after {timeout} s")
        self.check()
        assert self._final is not None
        return self._final

    def check(self) -> None:
        """CorruptionError (or the store's error) if a damaged page, or a
        damaged index, was found so far."""
        with self._lock:
            srv = self._server
            fault = srv.first_fault() if srv is not None else self._fault
            ifault = srv.index_fault() if srv is not None else self._index_fault
            served = srv.stats()["served"] if srv is not None else None
        if ifault is not None:
            raise self._index_error(ifault, served)
        if fault is not None:
            err = self._read._error(fault)
            if isinstance(err, CorruptionError):
                raise CorruptionError(f"lazy restore: {err} (the page is poisoned: a touch of "
                                      f"it raises SIGBUS)")
            raise err

    def _index_error(self, f: Any, served: int | None) -> Exception:
        """The error for an index found damaged after restore() returned (the
        server poisoned every page not served by then)."""
        epoch = self._src.chain[f.source] if f.source < len(self._src.chain) else self.epoch
        name = self._src.names[f.source][1] if f.source < len(self._src.names) else "?"
        if f.kind == _reader.FAULT_IO:
            return OSError(f.err, f"lazy restore of epoch {self.epoch}: epoch {epoch}: "
                                  f"{name}: {f.why}")
        what = f.why if f.record == _lazy.WHOLE_FILE else f"record {f.record} (page {f.page}) {f.why}"
        if served is None:
            served = self._final_served
        return CorruptionError(
            f"lazy restore of epoch {self.epoch}: epoch {epoch}: {name}: {what}, found while "
            f"the arena was being served: every page not served by then is poisoned (a touch "
            f"raises SIGBUS); the {served} pages served before matched their records' digests, "
            f"but those records come from a damaged index: do not trust this arena")

    def stats(self) -> LazyStats:
        """The figures so far (the final ones once drained)."""
        with self._lock:
            srv = self._server
            if srv is not None:
                return self._stats(srv.stats(), srv.latencies(), None)
        self._done.wait()  # (closed: the final figures are a moment away)
        assert self._final is not None
        return self._final

    # tests
    def _test_server(self) -> Any:
        return self._server


def restore_lazy(arena: Arena, store: Any, epoch: int, *, verify: bool, threads: int | None,
                 prefetch: str | None, t0: float, hold: bool = False) -> LazyRestore:
    return LazyRestore(arena, store, epoch, verify=verify, threads=threads, prefetch=prefetch,
                       t0=t0, hold=hold)
