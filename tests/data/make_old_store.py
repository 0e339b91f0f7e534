"""Writes tests/data/store-1.1/: a store made by the code before the issue-11
re-layering (run once with that checkout's interpreter; the files are kept in
the repository). tests/test_old_store.py opens, verifies and restores it with
today's code and compares every epoch with `expected(epoch)`.

    python tests/data/make_old_store.py tests/data/store-1.1
"""
import sys

import numpy as np

import memckpt

PAGES = 16


def expected(epoch: int) -> dict[str, np.ndarray]:
    """The arrays as epoch `epoch` (1..4) holds them."""
    rng = np.random.default_rng(11)
    field = rng.random((8, 512))                    # 8 pages of float64
    ids = np.arange(1000, dtype=np.int32)           # 1 page, partly
    flags = np.zeros((4, 4096), np.uint8)           # 4 pages, zero at first
    for e in range(2, epoch + 1):
        field[e] += e
        ids[e * 10] = -e
        flags[e - 1, :100] = e
    return {"field": field, "ids": ids, "flags": flags}


def main(path: str) -> None:
    with memckpt.Arena(PAGES * 4096) as arena:
        arrs = {"field": arena.array("field", (8, 512)),
                "ids": arena.array("ids", 1000, np.int32),
                "flags": arena.array("flags", (4, 4096), np.uint8)}
        with memckpt.Checkpointer(arena, path, tracker="compare", compress="zstd") as ck:
            for e in range(1, 5):
                for k, v in expected(e).items():
                    arrs[k][...] = v
                ck.checkpoint(f"epoch {e}").result()
        del arrs


if __name__ == "__main__":
    main(sys.argv[1])
