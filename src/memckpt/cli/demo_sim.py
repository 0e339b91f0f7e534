"""The demo's simulation: 2-D heat diffusion that a checkpoint must not perturb.

The simulation is 2-D heat diffusion on a float64 grid over a layered
material (a float32 conductivity map, written once): a torch moves over the
plate on a bouncing path, and each step runs a few explicit five-point
stencil iterations in a window around the torch; the rest of the plate is
left as it is. So each step writes a window's worth of pages, and an
incremental epoch holds the window's sweep since the last one, while a full
copy of the arena would hold the whole plate and the material.

Every step is a deterministic function of the step number and the state in
the arena (integer torch path, fixed-order numpy arithmetic, no threads, no
random numbers), which is what makes bit-identity a real check. The step
counter lives in the arena too, so the resumed worker learns from the
restored state, not from the orchestrator, where to continue.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .base import CliError

AMBIENT = 15.0       # initial temperature of the plate
TORCH = 4.0          # heat the torch adds to its 8x8 cells per iteration
RATE = 0.24          # explicit scheme: RATE * max(conductivity) <= 1/4 keeps it stable
COOLING = 1e-3       # Newtonian loss towards AMBIENT
MAGIC = 0x6D656D636B7074  # "memckpt": marks the state array as the demo's
# state[] slots
S_MAGIC, S_STEP, S_N, S_STEPS, S_EVERY, S_WINDOW, S_ITERS = range(7)


# -- the simulation ---------------------------------------------------------------------
def grid_size(size_mib: float) -> int:
    """n such that an n x n float64 plate plus its float32 material fill size_mib."""
    return max(32, int((size_mib * 2**20 / 12) ** 0.5))


def window_half(n: int) -> int:
    return max(6, n // 10)


def bounce(x: int, lo: int, hi: int) -> int:
    """x folded into [lo, hi] like a ball between two walls (integers only)."""
    span = hi - lo
    if span <= 0:
        return lo
    x %= 2 * span
    return lo + (x if x <= span else 2 * span - x)


def torch_at(step: int, n: int, half: int) -> tuple[int, int]:
    """The torch's cell at a step: a bouncing path with incommensurate speeds,
    about half a window per checkpoint interval of the default run."""
    v = max(1, n // 500)
    return (bounce(n // 3 + 3 * v * step, half + 1, n - half - 2),
            bounce(n // 5 + 2 * v * step, half + 1, n - half - 2))


def setup(arena: Any, n: int, steps: int, every: int, iters: int) -> dict[str, np.ndarray]:
    """Lay out and initialise the demo's arrays in ``arena``."""
    temp = arena.array("temperature", (n, n), np.float64)
    kappa = arena.array("conductivity", (n, n), np.float32)
    state = arena.array("state", 8, np.int64)
    # the plate starts near AMBIENT, with smooth variations: every cell differs
    # from its neighbours, so the stencil changes every value it touches
    ri = np.sin(np.arange(n) * (7.0 / n) * np.pi)
    cj = np.cos(np.arange(n) * (5.0 / n) * np.pi)
    for r0 in range(0, n, 256):
        r1 = min(n, r0 + 256)
        np.multiply.outer(ri[r0:r1], cj, out=temp[r0:r1])
        temp[r0:r1] *= 3.0
        temp[r0:r1] += AMBIENT
    # a layered material: three conductivities in slanted bands, with
    # low-conductivity inclusions on a lattice; computed a block of rows at a time
    j = np.arange(n, dtype=np.int64)
    band, cell = max(1, n // 24), max(1, n // 40)
    for r0 in range(0, n, 256):
        i = np.arange(r0, min(n, r0 + 256), dtype=np.int64)[:, None]
        layer = ((i + j // 3) // band) % 3
        blobs = ((i // cell) * 7 + (j // cell) * 13) % 11 == 0
        kappa[r0:r0 + i.shape[0]] = np.where(blobs, np.float32(0.15),
                                             np.float32(0.45) + np.float32(0.25) * layer)
    state[:] = 0
    state[S_MAGIC], state[S_N], state[S_STEPS] = MAGIC, n, steps
    state[S_EVERY], state[S_WINDOW], state[S_ITERS] = every, window_half(n), iters
    return {"temperature": temp, "conductivity": kappa, "state": state}


def attach(arena: Any) -> dict[str, np.ndarray]:
    """The demo's arrays of a restored arena, checked to be the demo's."""
    arrays = arena.arrays()
    state = arrays.get("state")
    if state is None or "temperature" not in arrays or int(state[S_MAGIC]) != MAGIC:
        raise CliError("the store's latest epoch is not a memckpt demo's state")
    return arrays


_scratch: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}


def advance(arrays: dict[str, np.ndarray]) -> int:
    """One step: ``iters`` stencil iterations in the window around the torch.

    The window (plus a one-cell halo) is copied out, iterated in scratch
    memory and written back once: the arena sees one write per window cell
    per step, wherever in the step the iterations are. The scratch buffers
    are kept between steps (fresh ones would cost page faults every step)."""
    temp, kappa, state = arrays["temperature"], arrays["conductivity"], arrays["state"]
    step = int(state[S_STEP])
    n, half, iters = int(state[S_N]), int(state[S_WINDOW]), int(state[S_ITERS])
    cy, cx = torch_at(step, n, half)
    y0, y1, x0, x1 = cy - half, cy + half, cx - half, cx + half
    key = (n, half)
    if key not in _scratch:
        _scratch[key] = (np.empty((2 * half + 2, 2 * half + 2)), np.empty((2 * half, 2 * half)),
                         np.empty((2 * half, 2 * half)), np.empty((2 * half, 2 * half)))
    work, k, lap, tmp = _scratch[key]
    work[...] = temp[y0 - 1:y1 + 1, x0 - 1:x1 + 1]
    np.multiply(kappa[y0:y1, x0:x1], RATE, out=k)
    inner = work[1:-1, 1:-1]
    t = half - 4
    for _ in range(iters):
        np.add(work[:-2, 1:-1], work[2:, 1:-1], out=lap)
        lap += work[1:-1, :-2]
        lap += work[1:-1, 2:]
        np.multiply(inner, 4.0, out=tmp)
        lap -= tmp
        lap *= k
        np.subtract(inner, AMBIENT, out=tmp)
        tmp *= COOLING
        lap -= tmp
        inner += lap
        inner[t:t + 8, t:t + 8] += TORCH
    temp[y0:y1, x0:x1] = inner
    state[S_STEP] = step + 1
    return step + 1


def digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data.cast("B"))
    return h.hexdigest()
