"""Lazy restore (memckpt.restore(lazy=True)) against the eager restore, in one run.

One arena of random float64 (every page stored) is checkpointed once (a full
epoch, page cache warm). Each round, interleaved:

- eager: memckpt.restore(path) (verify=True), the baseline, and np.load of
  the same array from an .npy file (what a user would pick);
- lazy, no prefetch, untouched: time to first access (from the call to the
  bytes of one page touched right after it returns: the index is not read
  before, a fault finds its page by lookup), when the indexes were checked and
  the drain planned, and the drain: from the call to every page mapped
  (throughput = arena bytes / that);
- lazy, drain held: 2,000 reads of random pages, each a fault served from
  the page cache, timed by the reader (perf_counter_ns around one read) and
  by the handler (message read to page mapped): median and p99;
- a program's first step on three regions (a working set of --ws MiB, at
  20%, 55% and 85% of the arena) right after the restore, two kinds:
  "touch" reads one value a page (the worst case for a drain: the program
  outruns it and faults at its front), "compute" runs sqrt(abs(x)).sum()
  over each region, "setup" touches after 0.2 s of the program's own setup
  (a solver being built between the restore and the first step). Run A without prefetch records its first touches
  beside the epoch; run B, prefetch="recorded", drains those first: demand
  faults of B against A (the issue's goal: cut by 90% or more).

Every lazy restore of the first round is checked bit for bit against the array.

    .venv/bin/python bench/bench_lazy.py                   # 4096 MiB, 3 rounds
    .venv/bin/python bench/bench_lazy.py --size 512 --runs 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import memckpt
from memckpt.lazy import restore_lazy
from memckpt.restore import arena_from_layout
from memckpt.store import Store
from memckpt.store.lazy import touch_name

PS = 4096
KINDS = ("touch", "compute", "setup")


def _make(work: Path, mib: int) -> tuple[Path, Path, np.ndarray]:
    n = (mib << 20) // 8
    x = np.random.default_rng(mib).standard_normal(n)
    npy = work / "x.npy"
    np.save(npy, x)
    store = work / "st"
    with memckpt.Arena(mib << 20) as arena:
        arena.array("x", (n,), np.float64)[:] = x
        with memckpt.Checkpointer(arena, store, mode="sync") as ck:
            ck.checkpoint()
    st = Store(store)
    pack = store / st.manifest(st.latest())["files"]["pack"]["name"]
    st.close()
    for p in (npy, pack):
        p.read_bytes()  # the page cache warm for both
    return npy, store, x


def _pages(arena: memckpt.Arena) -> np.ndarray:
    return np.frombuffer(arena.buffer(), np.uint8).reshape(arena.npages, PS)


def _check(arena: memckpt.Arena, x: np.ndarray, what: str) -> None:
    if not np.array_equal(_pages(arena).reshape(-1)[:x.nbytes], x.view(np.uint8)):
        sys.exit(f"{what}: the lazily restored arena differs from the array")


def _close(arena: memckpt.Arena) -> None:
    arena.lazy.wait() if hasattr(arena, "lazy") else None
    arena.close()


def eager(store: Path) -> float:
    t = time.perf_counter()
    a = memckpt.restore(store)
    dt = time.perf_counter() - t
    a.close()
    return dt


def np_load(npy: Path) -> float:
    t = time.perf_counter()
    a = np.load(npy)
    dt = time.perf_counter() - t
    del a
    return dt


def lazy_drain(store: Path, x: np.ndarray, check: bool) -> dict[str, float]:
    st = Store(store)
    t = time.perf_counter()
    a = memckpt.restore(st, lazy=True, prefetch=None)
    pages = _pages(a)
    int(pages[len(pages) // 3, 0])  # the first access: one page
    ttfa = time.perf_counter() - t
    del pages
    s = a.lazy.wait()
    if check:
        _check(a, x, "lazy restore")
    _close(a)
    return {"ttfa": ttfa, "return": s.time_to_first_access_s, "drain": s.drain_s,
            "bps": s.drain_bytes_per_s, "plan": s.plan_s}


def lazy_latency(store: Path, n: int = 2000) -> dict[str, float]:
    st = Store(store)
    e = st.latest()
    a = arena_from_layout(st.layout(e))
    h = restore_lazy(a, st, e, verify=True, threads=None, prefetch=None,
                     t0=time.perf_counter(), hold=True)
    a.lazy = h
    pages = _pages(a)
    order = np.random.default_rng(n).choice(len(pages), n, replace=False).tolist()
    lat = []
    for p in order:
        t = time.perf_counter_ns()
        int(pages[p, 0])
        lat.append(time.perf_counter_ns() - t)
    srv_lat = h._test_server().latencies()
    h._test_server().release()
    del pages
    h.wait()
    _close(a)
    return {"p50": float(np.median(lat)) / 1e9, "p99": float(np.percentile(lat, 99)) / 1e9,
            "h50": float(np.median(srv_lat)) / 1e9, "h99": float(np.percentile(srv_lat, 99)) / 1e9}


def first_step(store: Path, ws_mib: int, prefetch: str | None, kind: str) -> dict[str, float]:
    """A program's first step on three regions of the arena: "touch" reads one
    value a page (the worst case: it outruns any drain), "compute" runs
    sqrt(abs(x)).sum() over each region, "setup" is "touch" after 0.2 s of
    the program's own setup (building its solver) between the restore and
    the step."""
    st = Store(store)
    a = memckpt.restore(st, lazy=True, prefetch=prefetch)
    pages = _pages(a)
    n = len(pages)
    per = max(1, (ws_mib << 20) // PS // 3)
    if kind == "setup":
        time.sleep(0.2)  # the program builds its solver first (a fixed 0.2 s here)
    t = time.perf_counter()
    total = 0.0
    for frac in (0.20, 0.55, 0.85):
        lo = int(n * frac)
        if kind in ("touch", "setup"):
            total += int(pages[lo:lo + per, 0].sum())
        else:
            total += float(np.sqrt(np.abs(pages[lo:lo + per].view(np.float64))).sum())
    step = time.perf_counter() - t
    del pages
    s = a.lazy.wait()
    _close(a)
    return {"faults": s.faults, "step": step, "drain": s.drain_s, "prefetch": s.prefetch}


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} us"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096, metavar="MIB", help="arena size (4096)")
    ap.add_argument("--ws", type=int, default=192, metavar="MIB",
                    help="the first step's working set (192)")
    ap.add_argument("--runs", type=int, default=3, help="rounds (3)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-lazy-") as tmp:
        work = Path(tmp)
        npy, store, x = _make(work, args.size)
        rows: dict[str, list] = {k: [] for k in ("eager", "npload", "drain", "lat")}
        rows.update({ab + k: [] for ab in "AB" for k in KINDS})
        for r in range(args.runs):
            rows["npload"].append(np_load(npy))
            rows["eager"].append(eager(store))
            rows["drain"].append(lazy_drain(store, x, check=r == 0))
            x = x[:0]  # checked once: its memory back for the arenas
            rows["lat"].append(lazy_latency(store))
            for kind in KINDS:
                (store / touch_name(1)).unlink(missing_ok=True)
                rows["A" + kind].append(first_step(store, args.ws, None, kind))
                rows["B" + kind].append(first_step(store, args.ws, "recorded", kind))
        del x

    def med(k: str, f: str | None = None) -> float:
        return statistics.median(v if f is None else v[f] for v in rows[k])

    eg, nl = med("eager"), med("npload")
    dr, bps = med("drain", "drain"), med("drain", "bps")
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.runs} rounds, "
          f"medians; arena {args.size} MiB, page cache warm; first step {args.ws} MiB")
    print()
    print("| figure | value | against |")
    print("|---|---|---|")
    print(f"| eager memckpt.restore (verify=True) | {_ms(eg)} | np.load {_ms(nl)}: "
          f"{eg / nl:.2f}x |")
    print(f"| lazy: restore() returns | {_ms(med('drain', 'return'))} | |")
    print(f"| lazy: time to first access (return + one page read) | {_ms(med('drain', 'ttfa'))} "
          f"| eager {_ms(eg)}: {med('drain', 'ttfa') / eg:.4f}x |")
    print(f"| lazy: indexes checked, drain planned (faults served before) | "
          f"{_ms(med('drain', 'plan'))} after the start | |")
    print(f"| lazy: drain, call to every page mapped | {_ms(dr)} ({bps / 1e9:.2f} GB/s) "
          f"| eager: throughput {eg / dr:.2f}x of eager's |")
    print(f"| fault latency, reader's side (held drain, 2,000 pages) | median "
          f"{_ms(med('lat', 'p50'))}, p99 {_ms(med('lat', 'p99'))} | |")
    print(f"| fault latency, handler's side | median {_ms(med('lat', 'h50'))}, "
          f"p99 {_ms(med('lat', 'h99'))} | |")
    for kind in KINDS:
        fa, fb = med("A" + kind, "faults"), med("B" + kind, "faults")
        print(f"| first step ({kind}), no prefetch (A) | {fa:.0f} demand faults, step "
              f"{_ms(med('A' + kind, 'step'))} | |")
        cut = f"faults cut {1 - fb / fa:.1%}" if fa else "(A had no faults)"
        print(f"| first step ({kind}), prefetch=recorded (B) | {fb:.0f} demand faults, step "
              f"{_ms(med('B' + kind, 'step'))} | {cut} |")
    print()
    for kind in KINDS:
        print(f"per round ({kind}): " + "; ".join(
            f"A {a['faults']} / B {b['faults']} faults ({b['prefetch']})"
            for a, b in zip(rows["A" + kind], rows["B" + kind])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
