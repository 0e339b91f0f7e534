"""What bounds the pause of mode "background": re-protecting the dirty pages D.

For each dirty pattern and ratio, on one arena, in one run:
  - bg_begin (collect + write-protect D + start the copy) on a uffd-sync
    tracker, with D protected one ioctl per run (gap 0), with runs merged
    across gaps of already-protected pages (gap 2, 8 = auto, 32, 128), and with
    one ioctl over D's span; the C core's own collect/protect split and ioctl
    count; then the background copy's time (bg_wait);
  - the plain uffd-sync collect (drain + its own re-protect heuristic);
  - the uffd-async collect of the same D (PAGEMAP_SCAN with PM_SCAN_WP_MATCHING:
    lists and re-protects D in one call), the other floor the issue names;
  - the copy of D's pages alone (what mode "copy" pauses for);
  - bg_prearm() after D was written, then a tenth of D written again: the
    pause then protects only that tenth.
Medians of --reps repetitions, in ms, and ratios against the same run's
uffd-async collect. Timing on a shared machine is noisy: read the ratios.

    python bench/bench_bg_protect.py                    # 1 GiB, 1/10/50 %, random and runs of 64
    python bench/bench_bg_protect.py --size-mib 256 --reps 3 --ratios 0.1
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np

import memckpt
from memckpt import _core, workloads
from memckpt.tracker import DirtyTracker

GAPS = [("runs", _core.BG_GAP_RUNS), ("gap4", 4), ("auto", _core.BG_GAP_AUTO), ("gap32", 32),
        ("gap128", 128), ("span", _core.BG_GAP_SPAN)]
# pre-arm: D written, bg_prearm() (off the pause), then this share of D
# written again before bg_begin: the pause protects only those
PREARM_REWRITE = 0.1


def dirty_set(npages: int, ratio: float, pattern: str, rng: np.random.Generator) -> np.ndarray:
    n = max(1, int(npages * ratio))
    if pattern == "random":
        return np.sort(rng.choice(npages, size=n, replace=False)).astype(np.uint64)
    run = int(pattern.removeprefix("runs"))
    starts = np.sort(rng.choice(npages // run, size=max(1, n // run), replace=False)) * run
    return (starts[:, None] + np.arange(run)).reshape(-1).astype(np.uint64)


def ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--ratios", default="0.01,0.1,0.5")
    ap.add_argument("--patterns", default="random,runs64")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    for name in ("uffd-sync", "uffd-async"):
        ok, why = _core.backend_status(_core.backend_lookup(name))
        if not ok:
            print(f"{name} unavailable here: {why}", file=sys.stderr)
            return 77
    rng = np.random.default_rng(0)
    arena = memckpt.Arena(args.size_mib << 20)
    buf = np.frombuffer(arena.buffer(), dtype=np.uint8)
    pages = buf.reshape(arena.npages, arena.page_size)
    pages[:, 0] = 1  # every page present: the floors below walk real page tables
    staging = np.empty_like(pages)
    staging[:] = 0  # resident, as a reused staging buffer is
    print(f"# {args.size_mib} MiB arena, {arena.npages} pages, medians of {args.reps}; "
          f"Linux {platform.release()}")
    rows = []
    for pattern in args.patterns.split(","):
        for ratio in (float(r) for r in args.ratios.split(",")):
            d = dirty_set(arena.npages, ratio, pattern, rng)
            runs = int(np.count_nonzero(np.diff(d) != 1)) + 1
            res: dict[str, list[float]] = {}
            info: dict[str, dict] = {}
            out = np.empty((d.size, arena.page_size), dtype=np.uint8)
            for _ in range(args.reps):  # the copy floor: D's pages into staging
                t0 = time.perf_counter()
                np.take(pages, d.view(np.int64), axis=0, out=out, mode="clip")
                res.setdefault("copy", []).append(time.perf_counter() - t0)
            del out
            with DirtyTracker(arena, "uffd-sync") as tr:
                tr.collect()
                for _ in range(args.reps):
                    workloads.random_pages(buf, d)
                    t0 = time.perf_counter()
                    tr.collect()
                    res.setdefault("sync-collect", []).append(time.perf_counter() - t0)
                for label, gap in GAPS:
                    for _ in range(args.reps):
                        workloads.random_pages(buf, d)
                        t0 = time.perf_counter()
                        got, st = tr.bg_begin(staging, gap)
                        pause = time.perf_counter() - t0
                        done = tr.bg_wait()
                        assert got.size == d.size
                        res.setdefault(label, []).append(pause)
                        res.setdefault(label + ":protect", []).append(st["protect_s"])
                        res.setdefault(label + ":collect", []).append(st["collect_s"])
                        res.setdefault(label + ":copy", []).append(done["copy_s"])
                        info[label] = st
                d2 = d[::int(1 / PREARM_REWRITE)]
                for _ in range(args.reps):
                    workloads.random_pages(buf, d)
                    t0 = time.perf_counter()
                    tr.bg_prearm()
                    res.setdefault("prearm:off-pause", []).append(time.perf_counter() - t0)
                    workloads.random_pages(buf, d2)
                    t0 = time.perf_counter()
                    got, st = tr.bg_begin(staging)
                    res.setdefault("prearm", []).append(time.perf_counter() - t0)
                    res.setdefault("prearm:protect", []).append(st["protect_s"])
                    res.setdefault("prearm:collect", []).append(st["collect_s"])
                    res.setdefault("prearm:copy", []).append(tr.bg_wait()["copy_s"])
                    assert got.size == d.size and st["prearmed"] == d.size - d2.size
                    info["prearm"] = st
            with DirtyTracker(arena, "uffd-async") as tr:
                tr.collect()
                for _ in range(args.reps):
                    workloads.random_pages(buf, d)
                    t0 = time.perf_counter()
                    n = tr.collect().size
                    res.setdefault("async-collect", []).append(time.perf_counter() - t0)
                    assert n == d.size
            rows.append((pattern, ratio, d.size, runs, res, info))
            base = ms(res["async-collect"])
            print(f"\n## {pattern}, {ratio:.0%} dirty: {d.size} pages in {runs} runs")
            print(f"uffd-async collect (PAGEMAP_SCAN + WP_MATCHING) {base:8.3f} ms   (1.00x)")
            print(f"uffd-sync collect (drain + re-protect)          {ms(res['sync-collect']):8.3f} ms   "
                  f"({ms(res['sync-collect']) / base:.2f}x)")
            print(f"copy of D (np.take; mode 'copy' pauses for it)  {ms(res['copy']):8.3f} ms   "
                  f"({ms(res['copy']) / base:.2f}x)")
            print("bg_begin by protect strategy: pause = collect + protect (ms), ioctls, pages walked, copy after")
            for label, _ in GAPS:
                st = info[label]
                print(f"  {label:7s} pause {ms(res[label]):8.3f} ({ms(res[label]) / base:5.2f}x)  "
                      f"collect {ms(res[label + ':collect']):7.3f}  protect {ms(res[label + ':protect']):8.3f}  "
                      f"ioctls {st['protect_calls']:7d}  walked {st['protect_pages']:8d}  "
                      f"gap {st['max_gap'] if st['max_gap'] < 1 << 40 else 'span'}  "
                      f"copy {ms(res[label + ':copy']):8.2f}")
            st = info["prearm"]
            print(f"  prearm  pause {ms(res['prearm']):8.3f} ({ms(res['prearm']) / base:5.2f}x)  "
                  f"collect {ms(res['prearm:collect']):7.3f}  protect {ms(res['prearm:protect']):8.3f}  "
                  f"ioctls {st['protect_calls']:7d}  walked {st['protect_pages']:8d}  "
                  f"({st['prearmed']} of {st['pages']} pre-armed; the pre-arm itself "
                  f"{ms(res['prearm:off-pause']):.3f} ms, off the pause)  copy {ms(res['prearm:copy']):8.2f}")
    del pages, buf, staging
    arena.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
