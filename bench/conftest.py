"""Shared set-up of the memckpt benchmarks (see bench/pytest.ini for how to run them).

One arena serves every benchmark of a session: it is mapped and populated once
(every page resident, as a simulator's state would be), and trackers are opened
on it one backend at a time. The baseline write and the floors run on it while
no tracker is open, so they touch the very pages and page tables the tracked
runs touch.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest

import memckpt

# 1 GiB unless told otherwise; MEMCKPT_BENCH_MIB=64 makes a quick run.
ARENA_MIB = int(os.environ.get("MEMCKPT_BENCH_MIB", "1024"))
# probed once per session, in the order ``auto`` prefers them
TRACKERS = {t.name: t for t in memckpt.trackers()}
BACKENDS = list(TRACKERS)
# PAGE_IS_WRITTEN of the kernel's PAGEMAP_SCAN UAPI (Documentation/admin-guide/mm/pagemap.rst)
PAGE_IS_WRITTEN = 1 << 1

_session_start = time.monotonic()
_load_at_start = os.getloadavg()  # other tenants of a shared machine show here


def require_backend(name: str) -> memckpt.TrackerInfo:
    """The backend's TrackerInfo; skips the benchmark where it is unavailable.
    (tests/conftest.py has its own: the two are separate pytest roots.)"""
    info = TRACKERS[name]
    if not info.available:
        pytest.skip(f"{name} unavailable on this kernel: {info.reason}")
    return info


def require_pagemap_scan() -> None:
    f = memckpt.features()
    if not f.pagemap_scan:
        pytest.skip(f"no PAGEMAP_SCAN here: {f.pagemap_scan_reason}")


class BenchArena:
    """The session's arena, seen as (npages, page_size) uint8, with at most
    one tracker open on it at a time."""

    def __init__(self, mib: int) -> None:
        self.arena = memckpt.Arena(mib << 20)
        self.npages = self.arena.npages
        self.page_size = self.arena.page_size
        self.pages = self.arena.array("pages", (self.npages, self.page_size), np.uint8)
        self.pages[:, 0] = 1  # fault every page in: the floors and baselines must not pay for it
        self.tracker: memckpt.DirtyTracker | None = None

    def track(self, backend: str) -> memckpt.DirtyTracker:
        """The open tracker of this backend, closing another backend's first."""
        if self.tracker is not None and self.tracker.backend == backend:
            return self.tracker
        self.untrack()
        self.tracker = memckpt.DirtyTracker(self.arena, backend)
        return self.tracker

    def untrack(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None

    def dirty_count(self, ratio: float) -> int:
        return max(1, round(self.npages * ratio))

    def dirty_set(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """count distinct pages, sorted (the order a checkpoint walks them in)."""
        if count >= self.npages:
            return np.arange(self.npages, dtype=np.intp)
        return np.sort(rng.choice(self.npages, size=count, replace=False)).astype(np.intp)

    def write(self, idx: np.ndarray) -> None:
        """One byte of each page in idx, changed (so that compare sees it too)."""
        self.pages[idx, 0] += 1

    def close(self) -> None:
        self.untrack()
        del self.pages
        try:
            self.arena.close()
        except BufferError:
            pass  # a view outlived us: the mapping goes with its last reference


@pytest.fixture(scope="session")
def bench_arena():
    ba = BenchArena(ARENA_MIB)
    yield ba
    ba.close()


def fill_random(ba: BenchArena, seed: int) -> BenchArena:
    """ba's pages filled with random bytes (no page zero, no two alike: the
    store elides nothing), with no tracker open; for the checkpoint benchmarks."""
    ba.untrack()
    rng = np.random.default_rng(seed)
    words = ba.pages.reshape(-1).view(np.uint64)
    step = 8 << 20
    for s in range(0, words.size, step):
        words[s:s + step] = rng.bit_generator.random_raw(min(step, words.size - s))
    return ba


def bench_workdir(tmp_path_factory, name: str):
    """A directory for stores and files: under $MEMCKPT_BENCH_DIR when set
    (the filesystem measured), else a pytest temporary one; removed after."""
    import shutil
    from pathlib import Path
    base = os.environ.get("MEMCKPT_BENCH_DIR")
    path = Path(base) / f"memckpt-bench-{name}" if base else tmp_path_factory.mktemp(name)
    path.mkdir(parents=True, exist_ok=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def copy_buffer(bench_arena):
    """The memcpy floor's destination, as large as the arena, faulted in once."""
    buf = np.empty((bench_arena.npages, bench_arena.page_size), np.uint8)
    buf.fill(0)
    return buf


@pytest.fixture(scope="session")
def same_run():
    """Medians measured earlier in this session (the first-write baselines),
    keyed by (kind, ratio): later benchmarks report against them."""
    return {}


# -- ordering -----------------------------------------------------------------
# Floors and baselines first (no tracker open), then each backend's benchmarks
# together, so that each tracker is opened once and the baselines are known
# by the time the tracked runs report against them.
_KIND_ORDER = ["first_write_baseline", "floor_memcpy", "floor_scan", "collect", "first_write",
               "floor_scan_wp"]


def _sort_key(item: pytest.Item):
    params = getattr(item, "callspec", None)
    params = params.params if params else {}
    kind = item.originalname.removeprefix("test_") if hasattr(item, "originalname") else item.name
    backend = params.get("backend")
    if kind == "floor_scan_wp":
        backend = "uffd-async"  # measured under that backend's write-protection
    phase = 0 if backend is None else 1 + BACKENDS.index(backend)
    kind_rank = _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)
    return (phase, kind_rank, params.get("ratio", 0.0))


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_sort_key)


# -- what the JSON records besides the timings ----------------------------------
def _meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["cpus_online"] = os.cpu_count()
    machine_info["cpus_usable"] = len(os.sched_getaffinity(0))
    machine_info["mem_total_bytes"] = _meminfo_total()
    machine_info["vm_max_map_count"] = _read("/proc/sys/vm/max_map_count")
    machine_info["memckpt_features"] = dataclasses.asdict(memckpt.features())
    machine_info["memckpt_trackers"] = [dataclasses.asdict(t) for t in TRACKERS.values()]


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["memckpt"] = {
        "arena_mib": ARENA_MIB,
        "command": "python -m pytest " + " ".join(config.invocation_params.args),
        "env": {k: v for k, v in os.environ.items() if k.startswith("MEMCKPT_")},
        "session_seconds": round(time.monotonic() - _session_start, 1),
        "loadavg_start": _load_at_start,
        "loadavg_end": os.getloadavg(),
    }


# -- bench_checkpoint.py ------------------------------------------------------------
# (added for the checkpoint benchmarks; the hooks above are the tracking benchmarks')
class _CheckpointBenchmarksLast:
    """Runs bench_checkpoint.py's and bench_capture.py's benchmarks after every other: they write
    GiBs to disk and map fresh arenas, which the tracking benchmarks should
    not have to measure through. A plugin, so that the sort above stays as it
    is; trylast, so that it sees that sort's order and keeps it (stable)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session, config, items):
        items.sort(key=lambda item: item.path.name in ("bench_checkpoint.py", "bench_capture.py"))


def pytest_configure(config):
    config.pluginmanager.register(_CheckpointBenchmarksLast(), "memckpt-checkpoint-benchmarks-last")
