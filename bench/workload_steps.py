"""Two steps of opposite shapes for `memckpt bench --workload` and
`memckpt calibrate` (run from bench/, where this module is):

    memckpt bench --workload workload_steps:dense --size-mib 64
    memckpt bench --workload workload_steps:sparse --size-mib 64

dense: ``a += 1`` over the whole arena (every page, every step); sparse: 8
random pages and some compute off the arena (bench/bench_calibrate.py's
two steps). The array starts as 0, 1, 2, ...: every page resident and
different from the others, as a program's state is once initialised (a
zero arena would make the untracked steps pay first-touch faults and the
epochs deduplicate to nothing)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from memckpt import Arena, workloads


def _state(arena: Arena) -> np.ndarray:
    a = arena.array("a", (arena.nbytes // 8,))
    a[:] = np.arange(a.size, dtype=np.float64)
    return a


def dense(arena: Arena) -> Callable[[], None]:
    a = _state(arena)

    def step() -> None:
        np.add(a, 1.0, out=a)
    return step


def sparse(arena: Arena) -> Callable[[], None]:
    a = _state(arena)
    rng = np.random.default_rng(1)
    w = np.random.default_rng(2).random(50_000)

    def step() -> None:
        workloads.random_pages(a, npages=8, seed=int(rng.integers(1 << 30)))
        for _ in range(10):
            np.sin(w, out=w)
    return step
