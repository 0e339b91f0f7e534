"""What tracking an adopted array (memckpt.track) costs beside an arena array
of the same size, per backend, medians of the same run.

For each available backend, two arrays of MIB MiB (MEMCKPT_BENCH_MIB, 64 by
default): ``arena`` (Arena.array: page-aligned, its own mapping) and
``adopted`` (a view into a numpy allocation that starts and ends inside a
page: both edge pages shared with the neighbouring bytes, compared at
collect; the whole pages to the backend). With D random distinct pages
written (1% and 100% of the pages):

- ``first-write``: one byte to each of the D pages just after a collect
  re-armed the tracker; ``baseline``: the same writes into an untracked
  array. Per-page cost = (tracked - baseline) / D.
- ``collect``: DirtyTracker.collect() after the D pages were written.

Each round's collect is checked outside the timing (every page written is
reported), so a no-op cannot pass for a fast backend.

    .venv/bin/python bench/bench_track.py            # MEMCKPT_BENCH_MIB=256 for a bigger run
"""
from __future__ import annotations

import os
import statistics
import sys
import itertools
import time

import numpy as np

import memckpt

PS = memckpt.features().page_size
MIB = int(os.environ.get("MEMCKPT_BENCH_MIB", "64"))
ROUNDS = int(os.environ.get("MEMCKPT_BENCH_ROUNDS", "11"))
_VALUES = itertools.cycle(range(2, 256))  # the fill is 1


def arrays(nbytes: int):
    arena = memckpt.Arena(nbytes)
    a = arena.array("a", nbytes, np.uint8)
    a[:] = 1  # populated, as the adopted one is: the first-write rounds time tracking, not page faults
    pool = np.empty(nbytes + 2 * PS, np.uint8)
    skew = (-pool.ctypes.data) % PS
    x = pool[skew + 100:skew + 100 + nbytes]  # starts 100 bytes into a page
    x[:] = 1
    return (arena, a), (memckpt.track(x, name="x"), x)


def rounds(arena, arr, backend: str, ratio: float, seed: int) -> tuple[float, float, float]:
    npages_arr = arr.nbytes // PS
    rng = np.random.default_rng(seed)
    d = min(max(1, int(npages_arr * ratio)), npages_arr - 1)
    off = (PS - arr.ctypes.data % PS) % PS  # the first page boundary in the array
    fw, col, base = [], [], []
    plain = np.ones(arr.nbytes, np.uint8)  # populated, as both arrays are
    with memckpt.DirtyTracker(arena, backend) as t:
        t.collect()
        for r in range(ROUNDS):
            pages = np.sort(rng.choice(npages_arr - 1, size=d, replace=False))
            idx = off + pages * PS
            val = np.uint8(next(_VALUES))  # never the byte there already: compare sees every write
            t.collect()
            t0 = time.perf_counter()
            arr[idx] = val
            t1 = time.perf_counter()
            got = t.collect()
            t2 = time.perf_counter()
            plain[idx] = val
            t3 = time.perf_counter()
            plain[idx] = 1
            want = (arr.ctypes.data - arena.address + idx) // PS
            if not np.isin(want, got).all():
                raise AssertionError(f"{backend}: collect missed written pages")
            fw.append(t1 - t0)
            col.append(t2 - t1)
            base.append(t3 - t2)
    med = statistics.median
    return med(fw), med(col), med(base)


def main() -> int:
    nbytes = MIB << 20
    (arena, a), (adopted, x) = arrays(nbytes)
    print(f"# memckpt.track vs an arena array, {MIB} MiB each, {ROUNDS} rounds, medians")
    print("| backend | dirty | first-write arena | first-write adopted | per page arena / adopted (µs) "
          "| collect arena | collect adopted | adopted/arena collect |")
    print("|---|---|---|---|---|---|---|---|")
    for info in memckpt.trackers():
        if not info.available:
            continue
        for ratio in (0.01, 1.0):
            d = min(max(1, int(nbytes // PS * ratio)), nbytes // PS - 1)
            fa, ca, ba = rounds(arena, a, info.name, ratio, 1)
            fx, cx, bx = rounds(adopted, x, info.name, ratio, 1)
            print(f"| {info.name} | {ratio:.0%} | {fa * 1e3:.2f} ms | {fx * 1e3:.2f} ms | "
                  f"{(fa - ba) / d * 1e6:.2f} / {(fx - bx) / d * 1e6:.2f} | "
                  f"{ca * 1e3:.2f} ms | {cx * 1e3:.2f} ms | {cx / ca:.2f} |", flush=True)
    adopted.close()
    del a
    arena.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
