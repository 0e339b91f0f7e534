"""Capture modes: how long a checkpoint stops the program, how long its epoch
takes to become durable, what memory it costs, and how much a program that
keeps running during persist slows down; beside the floor, all in one run.

On the session's arena (bench/conftest.py: 1 GiB unless MEMCKPT_BENCH_MIB says
otherwise), filled once with random bytes (the store elides nothing), for each
capture mode (``copy``, ``fork``, ``background``, ``sync``: those this build
has) and each dirty ratio (1%, 10%, 50%):

- a chain whose full epoch is taken untimed, then rounds of: write D random
  distinct pages (``BenchArena.write``), ``Checkpointer.checkpoint()``. The
  timed call is ``checkpoint()``: what the program is stopped for (the
  **pause**; ``PendingEpoch.pause_s`` is kept per round, median and p99, in
  ``extra_info``). The previous epoch is durable before each round starts, so
  no round waits for the one before.
- **persist**: ``total_s - pause_s`` of each epoch: from the end of the pause
  until the epoch is durable.
- **extra memory**: what the mode holds beyond the arena while the epoch
  persists: the staging buffer's bytes in modes copy, background and sync; in
  mode fork, the memory the parent's writes duplicated while the child ran
  (``EpochInfo.extra["extra_bytes"]``).
- **slowdown during persist**: a native 2-D stencil sweep over 64 KiB of the
  arena (the program's next steps) runs from the end of the pause until the
  epoch is durable; its time per sweep, divided by its time per sweep with
  nothing persisting (measured right after, same sweeps, same pages).
- **floor**: a copy of the same D pages (``np.take`` into a resident buffer,
  the fastest copy numpy has), measured in the same round after the epoch
  is durable.

Run and tabulate (in a checkout, after the README's test command made .venv):
    .venv/bin/python -m pytest bench/bench_capture.py --benchmark-json=bench/results/capture-1gib.json
    .venv/bin/python bench/report_capture.py bench/results/capture-1gib.json
"""
from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

import memckpt
from conftest import bench_workdir, fill_random
from memckpt.capture import MODES

RATIOS = [0.01, 0.1, 0.5]
ROUNDS = {0.01: 21, 0.1: 11, 0.5: 5}
# the program that runs during persist: stencil sweeps over a grid of this
# many pages at the start of the arena (they are dirty in every epoch)
WORK_PAGES = 16


def pct(ratio: float) -> str:
    return f"{ratio * 100:g}%"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Where the stores (and the np.save file) go: one filesystem for all."""
    yield from bench_workdir(tmp_path_factory, "capture")


@pytest.fixture(scope="module")
def arena(bench_arena):
    """The session's arena, filled with random bytes (no zero, no duplicate page)."""
    return fill_random(bench_arena, 20261126)


@pytest.fixture(scope="module")
def kernels():
    try:
        from memckpt import workloads
        workloads.load()
    except Exception as e:  # no cffi or no compiler: say so
        pytest.skip(f"the native workload is unavailable: {e}")
    return workloads


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


@pytest.mark.parametrize("ratio", RATIOS, ids=pct)
@pytest.mark.parametrize("mode", MODES)
def test_capture(benchmark, arena, workdir, copy_buffer, kernels, mode, ratio):
    ba = arena
    ba.untrack()  # the checkpointer opens its own tracker
    d = ba.dirty_count(ratio)
    store_path = workdir / f"store-{mode}-{pct(ratio).rstrip('%')}"
    shutil.rmtree(store_path, ignore_errors=True)
    store = memckpt.Store(store_path, create=True)
    try:
        ck = memckpt.Checkpointer(ba.arena, store, mode=mode, staging=ba.arena.nbytes)
    except (memckpt.MemckptError, ValueError) as e:
        store.close()
        pytest.skip(f"mode {mode!r} unavailable here: {e}")
    grid = ba.pages[:WORK_PAGES].view(np.float64).reshape(WORK_PAGES * 8, ba.page_size // 64)
    window = (1, grid.shape[0] - 1, 1, grid.shape[1] - 1)
    rng = np.random.default_rng(8100 + RATIOS.index(ratio))
    state: dict = {}
    pauses: list[float] = []
    persists: list[float] = []
    extra_mem: list[int] = []
    floors: list[float] = []
    slowdowns: list[float] = []
    dirty_counts: list[int] = []
    fork_s: list[float] = []  # mode fork: the fork() alone, inside the pause

    def sweeps_until(done) -> tuple[int, float]:
        n, t0 = 0, time.perf_counter()
        while not done():
            kernels.stencil_2d(grid, 1, window)
            n += 1
        return n, time.perf_counter() - t0

    def settle() -> None:
        """Let the last epoch persist while the program runs; measure both."""
        p = state.pop("pending", None)
        if p is None:
            return
        n, busy = sweeps_until(p.done)
        e = p.result()
        pauses.append(e.pause_s)
        if os.environ.get("MEMCKPT_BENCH_DEBUG"):
            print(f"\n{mode} {pct(ratio)} pause {e.pause_s * 1e3:.1f} ms wait {p.wait_s * 1e3:.1f} ms {e.extra}")
        persists.append(e.total_s - e.pause_s)
        dirty_counts.append(e.pages_dirty)
        if "fork_s" in e.extra:
            fork_s.append(e.extra["fork_s"])
        extra_mem.append(int(e.extra.get("extra_bytes", e.extra.get("staging_bytes", 0))))
        if n >= 3 and mode != "sync":
            t0 = time.perf_counter()
            kernels.stencil_2d(grid, n, window)
            idle = time.perf_counter() - t0
            slowdowns.append((busy / n) / (idle / n))
        idx = state.pop("idx")
        t0 = time.perf_counter()
        np.take(ba.pages, idx, axis=0, out=copy_buffer[:idx.size], mode="clip")
        floors.append(time.perf_counter() - t0)

    try:
        base = ck.checkpoint("base").result()
        assert base.kind == "full" and base.pages_stored == ba.npages

        def setup():
            settle()
            idx = ba.dirty_set(rng, d)
            ba.write(idx)
            state["idx"] = idx
            return (), {}

        def timed():
            state["pending"] = ck.checkpoint()

        benchmark.group = f"capture-{pct(ratio)}"
        benchmark.extra_info.update(kind="capture", mode=mode, ratio=ratio, dirty_pages=d,
                                    arena_pages=ba.npages, page_size=ba.page_size,
                                    tracker=ck.tracker.backend, work_pages=WORK_PAGES)
        benchmark.pedantic(timed, setup=setup, rounds=ROUNDS[ratio], warmup_rounds=1)
        settle()
        ck.wait()
        # the warm-up round is measured like the others but not kept
        keep = slice(1, None) if len(pauses) > 1 else slice(None)  # --benchmark-disable: 1 round
        pauses, persists, extra_mem, floors = pauses[keep], persists[keep], extra_mem[keep], floors[keep]
        fork_s = fork_s[keep]
        slowdowns = slowdowns[1:] if len(slowdowns) > len(pauses) else slowdowns
        assert all(c >= d for c in dirty_counts), (dirty_counts, d)
        benchmark.extra_info.update(
            pause_median_s=statistics.median(pauses), pause_p99_s=percentile(pauses, 99),
            pause_max_s=max(pauses), persist_median_s=statistics.median(persists),
            extra_bytes_median=int(statistics.median(extra_mem)),
            floor_memcpy_median_s=statistics.median(floors),
            slowdown_median=statistics.median(slowdowns) if slowdowns else None,
            slowdown_rounds=len(slowdowns), pages_dirty_median=int(statistics.median(dirty_counts)),
            fork_median_s=statistics.median(fork_s) if fork_s else None)
        # every round was a correct increment: one more epoch, with nothing
        # written after it (the stencil of settle() wrote after the last),
        # restores to the arena
        last = ck.checkpoint("check").result()
        got = memckpt.restore(store, last.epoch)
        try:
            same = np.array_equal(got.arrays()["pages"], ba.pages)
        finally:
            got.close()
        assert same, f"epoch {last.epoch} differs from the arena"
    finally:
        ck.close()
        store.close()
        shutil.rmtree(store_path, ignore_errors=True)
