#!/usr/bin/env python3
"""mprotect's collect past vm.max_map_count: exact, then a superset.

The mprotect backend unprotects each page on its first write, so every
isolated written page becomes a VMA of its own. Past vm.max_map_count (65530
by default) mprotect() fails with ENOMEM and the handler unprotects a larger
block instead: collect then reports whole blocks, a superset of the pages
written. This probe writes D random distinct pages (sorted, one byte each) of
a populated arena under one mprotect tracker, one epoch per ratio, and prints
per epoch: pages written, pages reported, VMAs (lines of /proc/self/maps, read
before the collect), and what the write and the collect cost.

    .venv/bin/python bench/probe_mprotect_mapcount.py              # 1 GiB
    .venv/bin/python bench/probe_mprotect_mapcount.py --ratios 0.05,0.5

Not part of the pytest-benchmark run (pytest collects bench_*.py only); its
figures are quoted in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import memckpt


def maps_lines() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024, help="arena size (default 1024)")
    ap.add_argument("--ratios", default="0.1,0.12,0.15,0.2,0.3",
                    help="dirty fractions, one epoch each, in this order")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    info = next(t for t in memckpt.trackers() if t.name == "mprotect")
    if not info.available:
        print(f"mprotect unavailable: {info.reason}")
        return 0
    with open("/proc/sys/vm/max_map_count") as f:
        max_map_count = int(f.read())
    arena = memckpt.Arena(args.mib << 20)
    n = arena.npages
    pages = arena.array("pages", (n, arena.page_size), np.uint8)
    pages[:, 0] = 1  # every page resident, as in the benchmark
    rng = np.random.default_rng(args.seed)
    print(f"{args.mib} MiB = {n} pages; vm.max_map_count={max_map_count}; "
          f"trackers() says mprotect exact={info.exact}; load {os.getloadavg()[0]:.2f}")
    print(f"{'dirty':>6} {'written':>8} {'reported':>9} {'extra':>8} {'missed':>6} "
          f"{'VMAs':>6} {'write/page':>10} {'collect':>9}")
    with memckpt.DirtyTracker(arena, "mprotect") as tracker:
        tracker.collect()
        for r in (float(x) for x in args.ratios.split(",")):
            d = int(n * r)
            idx = np.sort(rng.choice(n, d, replace=False))
            t0 = time.perf_counter()
            pages[idx, 0] += 1
            t_write = time.perf_counter() - t0
            vmas = maps_lines()
            t0 = time.perf_counter()
            got = tracker.collect()
            t_collect = time.perf_counter() - t0
            missed = np.setdiff1d(idx.astype(np.uint64), got).size
            print(f"{r:>6.0%} {d:>8} {got.size:>9} {got.size - d:>+8} {missed:>6} {vmas:>6} "
                  f"{t_write / d * 1e6:>7.1f} µs {t_collect * 1e3:>6.1f} ms")
    del pages
    return 0


if __name__ == "__main__":
    sys.exit(main())
