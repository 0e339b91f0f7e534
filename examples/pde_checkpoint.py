"""Checkpoint a py-pde simulation (Cahn-Hilliard) with memckpt, and resume it
after a kill, bit for bit.

py-pde (https://pypi.org/project/py-pde/) allocates its fields itself; the
field is made inside ``memckpt.allocating(arena)``, so its data (ghost cells
included) lands in the arena with no patch and no private attribute. The
solver steps the field in place, a checkpoint is taken every ``--every``
steps, and ``--resume`` continues from the store's latest epoch: the
restored array is wrapped back into a field (``with_ghost_cells=True``
shares it, no copy) and the chain goes on incrementally.

    python examples/pde_checkpoint.py STORE --steps 400 --every 20 --out final.npy
    python examples/pde_checkpoint.py STORE --steps 400 --every 20 --out final.npy --resume

The solver runs on py-pde's numpy backend: its numba backend compiles for
~15 s per solve here, which the test suite does not need to pay.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings

import numpy as np

import memckpt

warnings.filterwarnings("ignore", category=UserWarning, module="pde")
logging.getLogger("pde").setLevel(logging.ERROR)
import pde  # noqa: E402

DT = 1e-3


def setup(n: int) -> tuple[pde.CartesianGrid, pde.CahnHilliardPDE]:
    grid = pde.CartesianGrid([[0, n], [0, n]], [n, n], periodic=True)
    return grid, pde.CahnHilliardPDE()


def fresh(store: str, n: int, seed: int,
          tracker: str) -> tuple[memckpt.Checkpointer, pde.ScalarField, np.ndarray]:
    grid, _ = setup(n)
    nbytes = (n + 2) ** 2 * 8
    arena = memckpt.Arena(4 * nbytes + (1 << 20))
    clock = arena.array("clock", 2, np.int64)  # [steps done, seed]
    clock[1] = seed
    with memckpt.allocating(arena, threshold=nbytes):
        # py-pde allocates the field (and its random draw) here: into the arena
        state = pde.ScalarField.random_uniform(grid, -1, 1, rng=np.random.default_rng(seed))
    arena.name_array(state.data, "phi")  # the array it views: the field with its ghost cells
    return memckpt.Checkpointer(arena, store, tracker=tracker), state, clock


def resumed(store: str, n: int, tracker: str) -> tuple[memckpt.Checkpointer, pde.ScalarField, np.ndarray]:
    grid, _ = setup(n)
    ck = memckpt.Checkpointer.resume(store, tracker=tracker)
    arrays = ck.arena.arrays()
    state = pde.ScalarField(grid, arrays["phi"], with_ghost_cells=True)
    if not np.shares_memory(state.data, arrays["phi"]):
        raise RuntimeError("py-pde copied the restored field: its steps would not be checkpointed")
    return ck, state, arrays["clock"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--n", type=int, default=128, help="grid points per side")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=20, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="continue from the store's latest epoch")
    p.add_argument("--no-checkpoint", action="store_true", help="the same run without memckpt's checkpoints (the baseline)")
    p.add_argument("--tracker", default="auto")
    p.add_argument("--out", help="save the final field here (np.save)")
    p.add_argument("--report", help="write the per-interval timings here (JSON)")
    a = p.parse_args(argv)

    if a.resume:
        ck, state, clock = resumed(a.store, a.n, a.tracker)
    else:
        ck, state, clock = fresh(a.store, a.n, a.seed, a.tracker)
    if a.no_checkpoint:
        ck.close()  # the baseline: the same arena, no tracker, no epochs
    _, eq = setup(a.n)
    stepper = pde.EulerSolver(eq, backend="numpy").make_stepper(state, dt=DT)
    compute, pause, total = [], [], []
    if not a.resume and not a.no_checkpoint:
        ck.checkpoint("step 0").result()
    while clock[0] < a.steps:
        k = int(min(a.every, a.steps - clock[0]))
        t0 = time.perf_counter()
        stepper(state, clock[0] * DT, (clock[0] + k) * DT)
        clock[0] += k
        t1 = time.perf_counter()
        compute.append(t1 - t0)
        if not a.no_checkpoint:
            pending = ck.checkpoint(f"step {int(clock[0])}")
            pause.append(time.perf_counter() - t1)
            total.append(pending.result().total_s)
        print(f"step {int(clock[0])}", flush=True)
    ck.close()
    final = np.array(state.data)
    if a.out:
        np.save(a.out, final)
    if a.report:
        med = statistics.median
        with open(a.report, "w") as f:
            json.dump({"n": a.n, "every": a.every, "intervals": len(compute),
                       "compute_s": med(compute),
                       "checkpoint_call_s": med(pause) if pause else 0.0,
                       "checkpoint_total_s": med(total) if total else 0.0}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
