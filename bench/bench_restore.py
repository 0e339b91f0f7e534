"""Eager restore against np.load and the floor, in one run.

For each size, one array of random float64 (incompressible: every page is
stored) is written twice: with np.save, and as a full epoch of a store (an
arena holding the same array, Checkpointer mode "sync"). With the page cache
warm for both, each round times, in turn:

- np.load of the .npy file (what a user would pick), as numpy does it (its
  large arrays are madvised for transparent huge pages), and into 4 KiB pages
  (numpy's huge-page advice off: the memory an arena is made of);
- the floor: a sequential read (os.preadv, one thread) of the epoch's pack
  file, the same bytes, into fresh memory of 4 KiB pages (a restore cannot
  read into less), and into a buffer already faulted in (the copy from the
  page cache alone);
- memckpt.restore(path) with verify=True (the default) and verify=False,
  a new Store each time (as a new process would), the arena's whole 2 MiB
  blocks populated in the read by the threads that read them; verify=True
  again with the blocks populated in a pass before the read (the way before,
  store.eager.FILL_IN_RUN = False); the process CPU time of np.load and of
  restore verify=True (all threads) beside their wall time; and the same read into a
  new arena without the 2 MiB fill (Store.read_into(out_is_zero=True,
  fill_huge=False): every block populated as 4 KiB pages, the way restore
  filled an arena before csrc/read_fill.c);
- Store.read_into of the same epoch into an arena's pages that are already
  there (rollback's case, and `memckpt restore --out`'s), verify=True and
  verify=False.

Rounds interleave the methods so that a noisy neighbour hits all of them,
each round starting one method later than the one before (so that no
method always follows the same one: on a VM whose free memory goes back to
the host, fresh 2 MiB pages cost ~25x more when they must be backed again,
and which method meets them depends on what ran before); the table gives
medians and ratios of medians. Every restore of the first
round is checked bit for bit against the array.

Where a restore's time goes: the same steps restore() takes, timed one by one
(open the store and read the manifest, load and check the index, make the
arena, plan, prefault the blocks, read + hash, split the 2 MiB pages; and,
restore's way now, into a second fresh arena: the read with the blocks
populated in it, then the split), and the read again into resident pages
with verify=False and verify=True (the digest's share is the difference).
A last line gives a restore's fixed cost: the median restore of a one-page
arena.

    .venv/bin/python bench/bench_restore.py                   # 64, 512, 1024 MiB
    .venv/bin/python bench/bench_restore.py --size 64 --runs 11
    .venv/bin/python bench/bench_restore.py --size 512 1024 --runs 15 --restore-only
"""
from __future__ import annotations

import argparse
import importlib
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
from memckpt.store import Store, eager

# the module (memckpt.restore is the function)
arena_from_layout = importlib.import_module("memckpt.restore").arena_from_layout


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


def _np_load(path: Path, hugepages: bool, cpu: list[float] | None = None) -> Callable[[], float]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]

    def run() -> float:
        multiarray._set_madvise_hugepage(hugepages)
        try:
            c = time.process_time()
            t = time.perf_counter()
            a = np.load(path)
            dt = time.perf_counter() - t
            if cpu is not None:
                cpu.append(time.process_time() - c)
        finally:
            multiarray._set_madvise_hugepage(True)
        del a
        return dt
    return run


def _read_into_warm(store: Path, want: np.ndarray, verify: bool,
                    check: list[bool]) -> Callable[[], float]:
    st = Store(store)
    epoch = st.latest()
    arena = memckpt.Arena(want.nbytes)
    pages = np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, arena.page_size)
    pages[:] = 0x5A  # faulted in, and not the epoch's content

    def run() -> float:
        t = time.perf_counter()
        st.read_into(epoch, pages, verify=verify)
        dt = time.perf_counter() - t
        if check[0] and not np.array_equal(pages.reshape(-1)[:want.nbytes], want.view(np.uint8)):
            sys.exit(f"read_into of {store} (verify={verify}) differs from the array")
        pages[:1] = 0x5A
        return dt
    return run


def _restore(store: Path, want: np.ndarray, verify: bool, check: list[bool],
             in_run: bool = True, cpu: list[float] | None = None) -> Callable[[], float]:
    def run() -> float:
        eager.FILL_IN_RUN = in_run
        try:
            c = time.process_time()
            t = time.perf_counter()
            arena = memckpt.restore(store, verify=verify)
            dt = time.perf_counter() - t
            if cpu is not None:
                cpu.append(time.process_time() - c)
        finally:
            eager.FILL_IN_RUN = True
        if check[0]:
            got = arena.arrays()["x"]
            if not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
                sys.exit(f"restore of {store} (verify={verify}) differs from the array")
            del got
        arena.close()
        return dt
    return run


def _restore_4k(store: Path, want: np.ndarray, check: list[bool]) -> Callable[[], float]:
    def run() -> float:
        t = time.perf_counter()
        st = Store(store)
        epoch = st.latest()
        arena = arena_from_layout(st.layout(epoch))
        pages = np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, arena.page_size)
        st.read_into(epoch, pages, out_is_zero=True, fill_huge=False)
        dt = time.perf_counter() - t
        if check[0] and not np.array_equal(pages.reshape(-1)[:want.nbytes], want.view(np.uint8)):
            sys.exit(f"read_into of {store} into 4 KiB pages differs from the array")
        del pages
        st.close()
        arena.close()
        return dt
    return run


def _phases(store: Path, want: np.ndarray, check: list[bool]) -> Callable[[], dict[str, float]]:
    """restore()'s steps, each timed (the store's own parsing and checks)."""
    from memckpt import _reader

    def run() -> dict[str, float]:
        out: dict[str, float] = {}
        clock = [time.perf_counter()]

        def lap(name: str) -> None:
            now = time.perf_counter()
            out[name] = out.get(name, 0.0) + now - clock[0]
            clock[0] = now

        st = Store(store)
        epoch = st.latest()
        layout = st.layout(epoch)
        doc = st._doc(epoch)
        lap("open + manifest")
        recs = st._index(epoch, doc=doc)
        fd = st._open_pack(epoch, doc)
        lap("index")
        arena = arena_from_layout(layout)
        pages = np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, arena.page_size)
        lap("arena")
        try:
            plan = _reader.ReadPlan([(fd, recs, doc["files"]["pack"]["size"])], pages,
                                    out_is_zero=True, fill_huge=True)
            lap("plan")
            plan.prefault()
            lap("prefault")
            plan.run()
            lap("read + hash")
            plan.split_huge()
            lap("split")
            if check[0] and not np.array_equal(pages.reshape(-1)[:want.nbytes],
                                               want.view(np.uint8)):
                sys.exit(f"the phased read of {store} differs from the array")
            # the same pages again, now resident: the read alone, then with the digest
            for verify, name in ((False, "read, verify=False"), (True, "read + hash, warm")):
                again = _reader.ReadPlan([(fd, recs, doc["files"]["pack"]["size"])], pages,
                                         verify=verify)
                clock[0] = time.perf_counter()
                again.run()
                lap(name)
                del again
            # restore's way now: a fresh arena, its blocks populated in the run
            fresh = arena_from_layout(layout)
            out2 = np.frombuffer(fresh.buffer(), np.uint8).reshape(fresh.npages, fresh.page_size)
            clock[0] = time.perf_counter()
            plan2 = _reader.ReadPlan([(fd, recs, doc["files"]["pack"]["size"])], out2,
                                     out_is_zero=True, fill_huge=True)
            plan2.fill_in_run()
            plan2.run()
            lap("in run: fill + read + hash")
            plan2.split_huge()
            lap("in run: split")
            if check[0] and not np.array_equal(out2.reshape(-1)[:want.nbytes], want.view(np.uint8)):
                sys.exit(f"the read of {store} with the fill in the run differs from the array")
            del out2, plan2
            fresh.close()
        finally:
            os.close(fd)
        del pages, plan
        st.close()
        arena.close()
        return out
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


_VMSTAT = ("compact_stall", "thp_fault_fallback")


def _vmstat() -> dict[str, int]:
    """The kernel's counts (machine-wide) of direct compactions and of 2 MiB
    page faults that fell back to 4 KiB: what makes huge pages costly."""
    out = dict.fromkeys(_VMSTAT, 0)
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                k, v = line.split()
                if k in out:
                    out[k] = int(v)
    except OSError:
        pass
    return out


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s >= 0.01 else f"{s * 1e3:.2f} ms"


def _restore_only(args: argparse.Namespace) -> int:
    """np.load against restore (fill in the run, prefault pass; verify=True and
    False), rounds rotated, wall and process CPU time (all threads)."""
    names = ["np.load", "restore verify=True", "verify=True, prefault pass",
             "restore verify=False", "verify=False, prefault pass"]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-restore-") as tmp:
        rows = []
        for mib in args.size:
            npy, store, _, x = _make(Path(tmp), mib)
            check = [True]
            cpu: dict[str, list[float]] = {k: [] for k in names}
            methods = {
                names[0]: _np_load(npy, True, cpu[names[0]]),
                names[1]: _restore(store, x, True, check, True, cpu[names[1]]),
                names[2]: _restore(store, x, True, check, False, cpu[names[2]]),
                names[3]: _restore(store, x, False, check, True, cpu[names[3]]),
                names[4]: _restore(store, x, False, check, False, cpu[names[4]]),
            }
            times: dict[str, list[float]] = {k: [] for k in names}
            for r in range(args.runs):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    times[name].append(methods[name]())
                check[0] = False
            rows.append((mib, {k: statistics.median(v) for k, v in times.items()},
                         {k: statistics.median(v) for k, v in cpu.items()}))
            del x, methods
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.runs} rounds, "
          "medians (wall; process CPU, all threads)")
    print("| size | " + " | ".join(names) + " | verify=True ÷ np.load | prefault pass ÷ np.load |")
    print("|" + "---|" * (len(names) + 3))
    for mib, m, c in rows:
        print(f"| {mib} MiB | " + " | ".join(f"{_ms(m[k])} ({_ms(c[k])})" for k in names)
              + f" | {m[names[1]] / m[names[0]]:.2f}x | {m[names[2]] / m[names[0]]:.2f}x |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs="+", default=[64, 512, 1024], metavar="MIB",
                    help="array sizes in MiB (default: 64 512 1024)")
    ap.add_argument("--runs", type=int, default=9, help="rounds per size (default 9)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--restore-only", action="store_true",
                    help="np.load and restore only (the fill in the run against the prefault "
                         "pass), none of the 4 KiB methods whose frees change what memory the "
                         "next method gets; no step table")
    args = ap.parse_args(argv)
    if args.restore_only:
        return _restore_only(args)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-restore-") as tmp:
        work = Path(tmp)
        rows = []
        stalls: list[tuple[int, dict[str, int]]] = []
        for mib in args.size:
            npy, store, pack, x = _make(work, mib)
            check = [True]
            cpu: dict[str, list[float]] = {"np.load": [], "restore verify=True": []}
            methods = {
                "np.load": _np_load(npy, True, cpu["np.load"]),
                "np.load, 4 KiB pages": _np_load(npy, False),
                "read, fresh memory": _fresh_read(pack, mib << 20),
                "read, warm buffer": _warm_read(pack, os.path.getsize(pack)),
                "restore verify=True": _restore(store, x, True, check,
                                                cpu=cpu["restore verify=True"]),
                "restore verify=True, prefault pass": _restore(store, x, True, check, in_run=False),
                "restore verify=False": _restore(store, x, False, check),
                "restore, 4 KiB pages": _restore_4k(store, x, check),
                "read_into warm, verify=True": _read_into_warm(store, x, True, check),
                "read_into warm, verify=False": _read_into_warm(store, x, False, check),
            }
            times: dict[str, list[float]] = {k: [] for k in methods}
            phased = _phases(store, x, check)
            phases: dict[str, list[float]] = {}
            kernel: dict[str, list[int]] = {k: [] for k in methods}
            names = list(methods)
            for r in range(args.runs):
                # each round starts one method later: every method follows each
                # other alike (the first after the 4 KiB methods' frees pays
                # for fresh 2 MiB pages more often)
                for name in names[r % len(names):] + names[:r % len(names)]:
                    fn = methods[name]
                    before = _vmstat()
                    times[name].append(fn())
                    kernel[name].append(sum(_vmstat().values()) - sum(before.values()))
                for name, dt in phased().items():
                    phases.setdefault(name, []).append(dt)
                check[0] = False
            med = {k: statistics.median(v) for k, v in times.items()}
            med.update({"phase " + k: statistics.median(v) for k, v in phases.items()})
            med.update({"cpu " + k: statistics.median(v) for k, v in cpu.items()})
            rows.append((mib, med, {k: (min(v), max(v)) for k, v in times.items()}))
            stalls.append((mib, {k: sum(v) for k, v in kernel.items()}))
            del x, methods
        fixed = _fixed_cost(work, args.runs)
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"{args.runs} rounds, medians; memckpt.restore of a path (a new Store each time)")
    print()
    print("Into fresh memory (memckpt.restore):")
    head = ["size", "np.load", "np.load, 4 KiB pages", "read, fresh memory (floor)",
            "restore verify=True", "verify=True, prefault pass", "restore verify=False",
            "restore, 4 KiB pages", "verify=True ÷ np.load", "prefault pass ÷ np.load",
            "verify=False ÷ np.load", "verify=True ÷ np.load 4 KiB", "verify=True ÷ floor",
            "CPU: verify=True, np.load", "GB/s (verify=True)", "GB/s (floor)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for mib, m, _ in rows:
        v, nv, fr = m["restore verify=True"], m["restore verify=False"], m["read, fresh memory"]
        k4, pp, nl = m["restore, 4 KiB pages"], m["restore verify=True, prefault pass"], m["np.load"]
        print(f"| {mib} MiB | {_ms(nl)} | {_ms(m['np.load, 4 KiB pages'])} | {_ms(fr)} "
              f"| {_ms(v)} | {_ms(pp)} | {_ms(nv)} | {_ms(k4)} | {v / nl:.2f}x | {pp / nl:.2f}x "
              f"| {nv / nl:.2f}x | {v / m['np.load, 4 KiB pages']:.2f}x | {v / fr:.2f}x "
              f"| {_ms(m['cpu restore verify=True'])}, {_ms(m['cpu np.load'])} "
              f"| {(mib << 20) / v / 1e9:.2f} | {(mib << 20) / fr / 1e9:.2f} |")
    print()
    print("Where restore's time goes (its steps timed one by one, medians; prefault, read + "
          "hash, split: the prefault pass; in run: restore's way, a fresh arena's blocks "
          "populated by the reading threads; the digest's share: read + hash, warm minus "
          "read, verify=False):")
    names = ["open + manifest", "index", "arena", "plan", "prefault", "read + hash", "split",
             "in run: fill + read + hash", "in run: split", "read, verify=False",
             "read + hash, warm"]
    print("| size | " + " | ".join(names) + " | outside the read ÷ restore |")
    print("|" + "---|" * (len(names) + 2))
    for mib, m, _ in rows:
        outside = sum(m["phase " + k] for k in ("open + manifest", "index", "arena", "plan"))
        print(f"| {mib} MiB | " + " | ".join(_ms(m["phase " + k]) for k in names)
              + f" | {outside / m['restore verify=True']:.2f} |")
    print()
    print("Into memory already there (Store.read_into: rollback, memckpt restore --out):")
    head = ["size", "read, warm buffer (floor)", "read_into verify=True", "read_into verify=False",
            "verify=True ÷ floor", "verify=False ÷ floor", "verify=True ÷ np.load",
            "GB/s (verify=True)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for mib, m, _ in rows:
        fl, v, nv = (m["read, warm buffer"], m["read_into warm, verify=True"],
                     m["read_into warm, verify=False"])
        print(f"| {mib} MiB | {_ms(fl)} | {_ms(v)} | {_ms(nv)} | {v / fl:.2f}x | {nv / fl:.2f}x "
              f"| {v / m['np.load']:.2f}x | {(mib << 20) / v / 1e9:.2f} |")
    print()
    print("spread (min - max):")
    for mib, _, spread in rows:
        print(f"  {mib} MiB: " + "; ".join(f"{k} {_ms(a)} - {_ms(b)}" for k, (a, b) in spread.items()))
    print("direct compactions + huge page fallbacks (machine-wide, summed over the rounds):")
    for mib, st in stalls:
        print(f"  {mib} MiB: " + "; ".join(f"{k} {v}" for k, v in st.items() if v))
    print(f"fixed cost: restore of a one-page arena, median {fixed * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
