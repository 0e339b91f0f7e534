"""What checkpointing costs the py-pde example per checkpoint interval.

examples/pde_checkpoint.py's setup (Cahn-Hilliard, py-pde's numpy backend, the
field made inside memckpt.allocating()), with the interval's steps timed three
ways, interleaved in one process so that the machine's noise hits them alike:
untracked; with a DirtyTracker open (the first-write cost); with a
Checkpointer taking an epoch after every interval. Beside them the
checkpoint() call (the pause the simulation sees, and its share of the
untracked interval) and the epoch's total_s (until durable, on the persist
thread while the simulation runs on). Medians of REPS rounds.

    .venv/bin/python bench/bench_pde_overhead.py [N=512] [STEPS=20] [BACKEND=auto]
"""
from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

import memckpt

warnings.filterwarnings("ignore", category=UserWarning)
logging.getLogger("pde").setLevel(logging.ERROR)
import pde  # noqa: E402

REPS = 6
DT = 1e-3


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 512
    steps = int(argv[1]) if len(argv) > 1 else 20
    backend = argv[2] if len(argv) > 2 else "auto"
    nbytes = (n + 2) ** 2 * 8
    grid = pde.CartesianGrid([[0, n], [0, n]], [n, n], periodic=True)
    arena = memckpt.Arena(4 * nbytes + (1 << 20))
    with memckpt.allocating(arena, threshold=nbytes):
        state = pde.ScalarField.random_uniform(grid, -1, 1, rng=np.random.default_rng(1))
    assert arena.address <= state.data.ctypes.data < arena.address + arena.nbytes
    stepper = pde.EulerSolver(pde.CahnHilliardPDE(), backend="numpy").make_stepper(state, dt=DT)
    t = 0.0
    plain, tracked, ckpt, call, total, written = [], [], [], [], [], []

    def interval() -> float:
        nonlocal t
        t0 = time.perf_counter()
        t = stepper(state, t, t + steps * DT)
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as d:
        for rep in range(REPS):
            plain.append(interval())
            with memckpt.DirtyTracker(arena, backend) as tr:
                tr.collect()
                tracked.append(interval())
                if tr.collect().size == 0:
                    raise AssertionError("the steps wrote no page of the arena")
            with memckpt.Checkpointer(arena, f"{d}/s{rep}", tracker=backend) as ck:
                ck.checkpoint().result()  # the full epoch: not an interval's cost
                for _ in range(2):
                    ckpt.append(interval())
                    t1 = time.perf_counter()
                    pending = ck.checkpoint()
                    call.append(time.perf_counter() - t1)
                    info = pending.result()
                    total.append(info.total_s)
                    written.append(info.pages_dirty)
                backend_used = ck.tracker.backend
    m = statistics.median
    print(f"# py-pde Cahn-Hilliard {n}x{n} ({nbytes / 2**20:.1f} MiB field), {steps} steps "
          f"per interval, {backend_used}, medians of {REPS * 2} intervals")
    print("| interval untracked | tracked | checkpointed | checkpoint() call | call / interval "
          "| epoch total_s | pages per epoch |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {m(plain) * 1e3:.1f} ms | {m(tracked) * 1e3:.1f} ms | {m(ckpt) * 1e3:.1f} ms | "
          f"{m(call) * 1e3:.2f} ms | {m(call) / m(plain):.2%} | {m(total) * 1e3:.2f} ms | "
          f"{int(m(written))} |")
    # the steps' own slowdown under tracking is (tracked or checkpointed - untracked):
    # within this machine's noise unless the three columns differ by more than they
    # differ between runs
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
