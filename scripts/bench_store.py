"""Store throughput: add_pages+commit and read_into for a full epoch of an
arena and an incremental epoch with a fraction of its pages rewritten.

    python scripts/bench_store.py [--gib 1] [--frac 0.01] [--dir /tmp] [--compress zstd] [--cold]

Data are random bytes (incompressible, no zero or repeated pages: the worst
case for the store's CPU work). --cold drops the store's files from the page
cache (posix_fadvise DONTNEED, after they are durable) before each read.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from memckpt.store import Store


def drop_cache(path: str) -> None:
    for n in os.listdir(path):
        fd = os.open(os.path.join(path, n), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--frac", type=float, default=0.01)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--compress", default=None)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    ps = os.sysconf("SC_PAGE_SIZE")
    npages = int(a.gib * (1 << 30)) // ps
    rng = np.random.default_rng(0)
    arena = rng.integers(0, 256, (npages, ps), dtype=np.uint8)
    gib = npages * ps / (1 << 30)
    root = tempfile.mkdtemp(prefix="bench-store-", dir=a.dir)
    try:
        for rep in range(a.repeat):
            path = os.path.join(root, f"s{rep}")
            store = Store(path, create=True)
            t0 = time.perf_counter()
            w = store.begin("full", None, {}, ps, npages, compress=a.compress)
            w.add_pages(np.arange(npages, dtype=np.uint64), arena)
            t1 = time.perf_counter()
            info = w.commit(pages_dirty=npages, pause_s=0.0)
            t2 = time.perf_counter()
            print(f"full  {gib:.2f} GiB: add_pages {t1 - t0:.3f} s ({gib / (t1 - t0):.2f} GiB/s), "
                  f"commit {t2 - t1:.3f} s, total {t2 - t0:.3f} s ({gib / (t2 - t0):.2f} GiB/s); "
                  f"{info.bytes_on_disk / (1 << 20):.1f} MiB on disk")
            k = max(1, int(npages * a.frac))
            pages = np.sort(rng.choice(npages, k, replace=False)).astype(np.uint64)
            arena[pages, :8] += 1  # the pages really change
            captured = arena[pages]  # what a checkpointer's capture would hand over
            t0 = time.perf_counter()
            w = store.begin("incremental", 1, {}, ps, npages, compress=a.compress)
            w.add_pages(pages, captured)
            t1 = time.perf_counter()
            info2 = w.commit(pages_dirty=k, pause_s=0.0)
            t2 = time.perf_counter()
            print(f"incr  {k} pages ({a.frac:.1%}): add_pages {(t1 - t0) * 1e3:.1f} ms, commit "
                  f"{(t2 - t1) * 1e3:.1f} ms, total {(t2 - t0) * 1e3:.1f} ms; "
                  f"{info2.bytes_on_disk / (1 << 20):.2f} MiB on disk "
                  f"({info2.bytes_on_disk / (npages * ps):.2%} of the arena)")
            out = np.empty((npages, ps), dtype=np.uint8)
            out[:] = 1  # fault the pages in, so the read is measured, not the page faults
            for epoch, what in ((1, "full"), (2, "full+incr chain")):
                if a.cold:
                    drop_cache(path)
                t0 = time.perf_counter()
                store.read_into(epoch, out)
                dt = time.perf_counter() - t0
                print(f"read_into epoch {epoch} ({what}), whole arena: {dt:.3f} s ({gib / dt:.2f} GiB/s)")
            assert np.array_equal(out, arena)
            if a.cold:
                drop_cache(path)
            t0 = time.perf_counter()
            store.read_into(2, out, pages=pages)
            dt = time.perf_counter() - t0
            print(f"read_into epoch 2, only its {k} pages: {dt * 1e3:.1f} ms")
            t0 = time.perf_counter()
            store.verify()
            print(f"verify (both epochs): {time.perf_counter() - t0:.3f} s")
            shutil.rmtree(path)
            arena[pages, :8] -= 1
            print()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
