"""Drive the C stencil simulator (libstencil, built with CMake against the
installed memckpt) from Python through cffi. Its whole state (two grids and
a step counter) lives in a memckpt arena, checkpointed every EVERY steps; run
again on the same store, it resumes from the last committed epoch, and ends
bit for bit where an uninterrupted run ends.

    cmake -S examples/c_stencil -B build/stencil \\
        -DCMAKE_PREFIX_PATH="$(memckpt-config --cmake-dir)"
    cmake --build build/stencil
    python examples/c_stencil/run.py --lib build/stencil/libstencil.so \\
        --store run.ckpt --n 512 --steps 400 --every 50

Lines on stdout: ``START step`` (0, or the step resumed from), ``CKPT step
epoch`` once each epoch is durable, ``DONE step digest`` (the C library's
BLAKE3 of the final grid, via memckpt's C API).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cffi
import numpy as np

import memckpt

CDEF = """
struct stencil_state { double *a, *b; uint64_t *step; size_t n; };
void stencil_init(struct stencil_state *s);
void stencil_run(struct stencil_state *s, uint64_t steps);
void stencil_digest(const struct stencil_state *s, uint8_t out[32]);
"""


def open_run(store: Path, n: int) -> tuple[memckpt.Checkpointer, bool]:
    """The checkpointer of the run: resumed from the store's last epoch, or
    over a new arena laid out for an n x n simulator."""
    if store.exists() and memckpt.Store(store).latest() is not None:
        return memckpt.Checkpointer.resume(store), True
    arena = memckpt.Arena(2 * n * n * 8 + 4 * memckpt.features().page_size)
    arena.array("a", (n, n))
    arena.array("b", (n, n))
    arena.array("step", 1, np.uint64)
    return memckpt.Checkpointer(arena, store), False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", required=True, help="the built libstencil.so")
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--n", type=int, default=512, help="grid side (default 512)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=50, help="steps between checkpoints")
    ap.add_argument("--out", type=Path, help="np.save the final grid here")
    args = ap.parse_args()

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    lib = ffi.dlopen(str(args.lib))
    ck, resumed = open_run(args.store, args.n)
    arena = ck.arena
    arrays = arena.arrays()
    if arrays["a"].shape != (args.n, args.n):
        raise SystemExit(f"{args.store} holds a {arrays['a'].shape} grid, not {args.n} x {args.n}")
    # the C side sees the arena's memory itself: no copy in or out
    bufs = [ffi.from_buffer("double[]", arrays["a"]), ffi.from_buffer("double[]", arrays["b"]),
            ffi.from_buffer("uint64_t[]", arrays["step"])]
    st = ffi.new("struct stencil_state *")
    st.a, st.b, st.step, st.n = bufs[0], bufs[1], bufs[2], args.n
    if not resumed:
        lib.stencil_init(st)
    step = int(arrays["step"][0])
    print(f"START {step}", flush=True)
    with ck:
        while step < args.steps:
            lib.stencil_run(st, min(args.every, args.steps - step))
            step = int(arrays["step"][0])
            info = ck.checkpoint().result()
            print(f"CKPT {step} {info.epoch}", flush=True)
    out = ffi.new("uint8_t[32]")
    lib.stencil_digest(st, out)
    print(f"DONE {step} {bytes(ffi.buffer(out)).hex()}", flush=True)
    if args.out is not None:
        np.save(args.out, arrays["a" if step % 2 == 0 else "b"])
    del bufs, st, arrays
    arena.close()


if __name__ == "__main__":
    main()
