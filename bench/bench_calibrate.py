"""memckpt.calibrate over every (tracker, mode) pair this kernel offers, on a
dense step (every page, every step) and a sparse one (8 random pages and
compute off the arena), then again with more rounds: the pick of the first
run against the best of the second.

    python bench/bench_calibrate.py [--mib 64] [--steps 5] [--rounds 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

import memckpt
from memckpt import workloads
from memckpt.calibrate import calibrate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    arena = memckpt.Arena(a.mib << 20)
    arr = arena.array("a", ((a.mib << 20) // 8,))
    rng = np.random.default_rng(1)
    w = np.random.default_rng(2).random(50_000)

    def dense() -> None:
        np.add(arr, 1.0, out=arr)

    def sparse() -> None:
        workloads.random_pages(arr, npages=8, seed=int(rng.integers(1 << 30)))
        for _ in range(10):
            np.sin(w, out=w)

    out = {}
    for name, step in (("dense", dense), ("sparse", sparse)):
        first = calibrate(step, arena, interval_steps=a.steps, rounds=a.rounds)
        again = calibrate(step, arena, interval_steps=a.steps, rounds=2 * a.rounds)
        b = first.best
        picked = again.cost_of(b.tracker, b.mode)
        print(f"\n{name}: picked {b.tracker}/{b.mode}; on re-measurement it costs "
              f"{picked.cost_s / again.best.cost_s:.3g}x the best "
              f"({again.best.tracker}/{again.best.mode})")
        print(f"{'tracker':10s} {'mode':10s} {'cpu/interval ms':>15s} {'again':>8s} {'pause ms':>9s} "
              f"{'call ms':>8s} {'durable ms':>10s} {'extra MiB':>9s}")
        for p in sorted(first.pairs, key=lambda p: p.cost_s):
            q = again.cost_of(p.tracker, p.mode)
            print(f"{p.tracker:10s} {p.mode:10s} {p.cost_s * 1e3:15.2f} {q.cost_s * 1e3:8.2f} "
                  f"{p.pause_s * 1e3:9.2f} {p.call_s * 1e3:8.2f} {p.total_s * 1e3:10.1f} "
                  f"{(p.extra_bytes or 0) / 2**20:9.1f}")
        out[name] = {"first": first.to_dict(), "again": again.to_dict()}
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
