"""The process tests/test_retention.py kills: a dense writer (every page of
its arena written every step) checkpointing every step into STORE with
Checkpointer(keep_last=3), step after step until killed or STEPS is reached.

Step s leaves the arena as content(s) (also used by the test to check a
restore); each epoch's label is its step. Prints "step S committed E" after
each durable epoch, and "peak BYTES" (the most the store's files ever took)
at the end.
"""
from __future__ import annotations

import os
import sys

import numpy as np

import memckpt

NPAGES = 64


def content(step: int, page_size: int) -> np.ndarray:
    n = NPAGES * page_size // 8
    return (np.arange(n, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(step)) \
        ^ np.uint64(step << 32)


def store_bytes(path: str) -> int:
    return sum(os.stat(os.path.join(path, f)).st_size for f in os.listdir(path))


def main() -> None:
    path, steps, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ps = memckpt.features().page_size
    peak = 0
    with memckpt.Arena(NPAGES * ps) as arena:
        x = arena.array("x", NPAGES * ps // 8, np.uint64)
        with memckpt.Checkpointer(arena, path, keep_last=3, mode=mode) as ck:
            for s in range(1, steps + 1):
                x[:] = content(s, ps)
                info = ck.checkpoint(str(s)).result()
                peak = max(peak, store_bytes(path))
                print(f"step {s} committed {info.epoch}", flush=True)
        del x
    print(f"peak {peak}", flush=True)


if __name__ == "__main__":
    main()
