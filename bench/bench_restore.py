"""Eager restore against np.load and the floor, in one run.

For each size, one array of random float64 (incompressible: every page is
stored) is written twice: with np.save, and as a full epoch of a store (an
arena holding the same array, Checkpointer mode "sync"). With the page cache
warm for both, each round times, in turn:

- np.load of the .npy file (what a user would pick);
- the floor: a sequential read (os.readv) of the epoch's pack file, the same
  bytes, into fresh memory of 4 KiB pages (what an arena is; a restore cannot
  read into less), and into a buffer already faulted in (the page cache's copy
  alone);
- memckpt.restore(path) with verify=True (the default) and verify=False,
  a new Store each time (as a new process would).

Rounds interleave the methods so that a noisy neighbour hits all of them;
the table gives medians and ratios of medians. Every restore of the first
round is checked bit for bit against the array. A last line gives a restore's
fixed cost: the median restore of a one-page arena.

    .venv/bin/python bench/bench_restore.py                   # 64, 512, 1024 MiB
    .venv/bin/python bench/bench_restore.py --size 64 --runs 11
"""
from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

import memckpt
from memckpt.store import Store


def _fresh_read(path: Path, nbytes: int) -> Callable[[], float]:
    """Time a read of the whole file into a new anonymous mapping of nbytes."""
    def run() -> float:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            # 4 KiB pages, as an arena (the kernel would not give huge pages
            # to a mapping without MADV_HUGEPAGE in THP's madvise mode anyway)
            buf.madvise(mmap.MADV_NOHUGEPAGE)
        except (AttributeError, OSError):
            pass
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            t = time.perf_counter()
            _read_all(fd, memoryview(buf))
            dt = time.perf_counter() - t
        finally:
            os.close(fd)
            buf.close()
        return dt
    return run


def _warm_read(path: Path, nbytes: int) -> Callable[[], float]:
    buf = bytearray(nbytes)  # faulted in once, here

    def run() -> float:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            t = time.perf_counter()
            _read_all(fd, memoryview(buf))
            return time.perf_counter() - t
        finally:
            os.close(fd)
    return run


def _read_all(fd: int, mv: memoryview) -> None:
    off = 0
    while off < len(mv):
        n = os.preadv(fd, [mv[off:]], off)
        if n == 0:
            break
        off += n


def _np_load(path: Path) -> Callable[[], float]:
    def run() -> float:
        t = time.perf_counter()
        a = np.load(path)
        dt = time.perf_counter() - t
        del a
        return dt
    return run


def _restore(store: Path, want: np.ndarray, verify: bool, check: list[bool]) -> Callable[[], float]:
    def run() -> float:
        t = time.perf_counter()
        arena = memckpt.restore(store, verify=verify)
        dt = time.perf_counter() - t
        if check[0]:
            got = arena.arrays()["x"]
            if not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
                sys.exit(f"restore of {store} (verify={verify}) differs from the array")
            del got
        arena.close()
        return dt
    return run


def _make(work: Path, mib: int) -> tuple[Path, Path, Path, np.ndarray]:
    n = (mib << 20) // 8
    x = np.random.default_rng(mib).standard_normal(n)
    npy = work / f"x{mib}.npy"
    np.save(npy, x)
    store = work / f"st{mib}"
    with memckpt.Arena(mib << 20) as arena:
        arena.array("x", (n,), np.float64)[:] = x
        with memckpt.Checkpointer(arena, store, mode="sync") as ck:
            ck.checkpoint()
    st = Store(store)
    pack = store / st.manifest(st.latest())["files"]["pack"]["name"]
    st.close()
    for p in (npy, pack):  # the page cache warm for both
        p.read_bytes()
    return npy, store, pack, x


def _fixed_cost(work: Path, runs: int) -> float:
    store = work / "one-page"
    with memckpt.Arena(4096) as arena:
        arena.array("x", (512,), np.float64)[:] = 1.0
        with memckpt.Checkpointer(arena, store, mode="sync") as ck:
            ck.checkpoint()
    ts = []
    for _ in range(max(runs, 21)):
        t = time.perf_counter()
        a = memckpt.restore(store)
        ts.append(time.perf_counter() - t)
        a.close()
    return statistics.median(ts)


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs="+", default=[64, 512, 1024], metavar="MIB",
                    help="array sizes in MiB (default: 64 512 1024)")
    ap.add_argument("--runs", type=int, default=9, help="rounds per size (default 9)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-restore-") as tmp:
        work = Path(tmp)
        rows = []
        for mib in args.size:
            npy, store, pack, x = _make(work, mib)
            check = [True]
            methods = {
                "np.load": _np_load(npy),
                "read, fresh memory": _fresh_read(pack, mib << 20),
                "read, warm buffer": _warm_read(pack, os.path.getsize(pack)),
                "restore verify=True": _restore(store, x, True, check),
                "restore verify=False": _restore(store, x, False, check),
            }
            times: dict[str, list[float]] = {k: [] for k in methods}
            for r in range(args.runs):
                for name, fn in methods.items():
                    times[name].append(fn())
                check[0] = False
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append((mib, med, {k: (min(v), max(v)) for k, v in times.items()}))
            del x, methods
        fixed = _fixed_cost(work, args.runs)
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"{args.runs} rounds, medians; memckpt.restore of a path (a new Store each time)")
    head = ["size", "np.load", "read, fresh memory", "read, warm buffer", "restore verify=True",
            "restore verify=False", "verify=True ÷ np.load", "verify=False ÷ np.load",
            "verify=True ÷ read, fresh", "GB/s (verify=True)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for mib, m, _ in rows:
        v, nv, nl, fr = (m["restore verify=True"], m["restore verify=False"], m["np.load"],
                         m["read, fresh memory"])
        print(f"| {mib} MiB | {_ms(nl)} | {_ms(fr)} | {_ms(m['read, warm buffer'])} | {_ms(v)} "
              f"| {_ms(nv)} | {v / nl:.2f}x | {nv / nl:.2f}x | {v / fr:.2f}x "
              f"| {(mib << 20) / v / 1e9:.2f} |")
    print()
    print("spread (min - max):")
    for mib, _, spread in rows:
        print(f"  {mib} MiB: " + "; ".join(f"{k} {_ms(a)} - {_ms(b)}" for k, (a, b) in spread.items()))
    print(f"fixed cost: restore of a one-page arena, median {fixed * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
