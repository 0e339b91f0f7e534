"""A compressed full epoch made durable: the C writer (pages compressed on
its threads, csrc/page_codec.c) beside the Python path it replaced (the
same format, pages compressed one by one in Python: what a build without
libzstd/liblz4 does), and beside what a user would pick (np.savez_compressed
+ fsync), measured in the same run, round-robin.

The array is a simulation-like field: a quarter of the pages smooth (a
sine: compresses well), a quarter noisy float64 (does not compress), a
quarter low-entropy integers, a quarter zero (elided, not compressed). Each
epoch is checked outside the timing (a verify() of the store once per
method: every page digest, every file digest).

    .venv/bin/python bench/bench_compress.py --size 256 --rounds 5
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from memckpt import _writer
from memckpt.store import Store

PS = 4096


def field(mib: int) -> np.ndarray:
    n = (mib << 20) // 8
    q = n // 4
    rng = np.random.default_rng(mib)
    a = np.zeros(n)
    a[:q] = np.sin(np.arange(q) * 1e-3)
    a[q:2 * q] = rng.random(q)
    a[2 * q:3 * q] = rng.integers(0, 4, q)
    return a


def np_savez_compressed(a: np.ndarray, d: Path) -> float:
    p = d / "a.npz"
    t = time.perf_counter()
    with open(p, "wb") as f:
        np.savez_compressed(f, a=a)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t
    p.unlink()
    return dt


def epoch(a: np.ndarray, d: Path, compress: str, threads: int, in_c: bool, check: bool) -> float:
    sp = d / "store"
    shutil.rmtree(sp, ignore_errors=True)
    s = Store(sp, create=True, page_size=PS)
    rows = a.view(np.uint8).reshape(-1, PS)
    pages = np.arange(rows.shape[0], dtype=np.uint64)
    real = _writer.codecs
    if not in_c:
        _writer.codecs = lambda: 0  # the writer then compresses in Python
    try:
        t = time.perf_counter()
        w = s.begin("full", npages=rows.shape[0], threads=threads, compress=compress)
        w.add_pages_from(rows, pages)
        w.commit(pages_dirty=rows.shape[0], pause_s=0.0)
        dt = time.perf_counter() - t
    finally:
        _writer.codecs = real
    if check:
        s.verify()
    size = sum(p.stat().st_size for p in sp.iterdir())
    epoch.sizes[(compress, in_c)] = size  # type: ignore[attr-defined]
    shutil.rmtree(sp)
    return dt


epoch.sizes = {}  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256, help="MiB (default 256)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    a = field(args.size)
    cpus = _writer.cpus_available()
    methods: list[tuple[str, Callable[[bool], float]]] = [
        ("np.savez_compressed + fsync", lambda c: np_savez_compressed(a, d))]
    for comp in ("zstd", "lz4"):
        methods.append((f"epoch {comp}, Python path", lambda c, k=comp: epoch(a, d, k, 1, False, c)))
        for t in sorted({1, cpus}):
            methods.append((f"epoch {comp}, C writer, {t} thread{'s' if t > 1 else ''}",
                            lambda c, k=comp, t=t: epoch(a, d, k, t, True, c)))
    with tempfile.TemporaryDirectory(dir=args.dir or ".") as tmp:
        d = Path(tmp)
        for _, fn in methods:
            fn(True)
        times: dict[str, list[float]] = {name: [] for name, _ in methods}
        for r in range(args.rounds):
            for name, fn in methods[r % len(methods):] + methods[:r % len(methods)]:
                times[name].append(fn(False))
    base = statistics.median(times["np.savez_compressed + fsync"])
    print(f"{args.size} MiB field (1/4 smooth, 1/4 noise, 1/4 small ints, 1/4 zero), "
          f"{args.rounds} rounds, load {os.getloadavg()[0]:.2f}")
    print("| method | median | min | × np.savez_compressed | store bytes |")
    print("|---|---:|---:|---:|---:|")
    for name, v in times.items():
        key = next(((k, "C" in name) for k in ("zstd", "lz4") if k in name), None)
        size = f"{epoch.sizes[key] / 2**20:.0f} MiB" if key else ""  # type: ignore[attr-defined]
        print(f"| {name} | {statistics.median(v) * 1e3:.0f} ms | {min(v) * 1e3:.0f} ms | "
              f"{statistics.median(v) / base:.2f}× | {size} |")


if __name__ == "__main__":
    main()
