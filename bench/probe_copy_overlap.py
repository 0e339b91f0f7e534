"""Mode copy's epochs with and without the write overlapping the pause's copy
(issue 12): pause_s and time to durable of increments (1%, 10%, 100% of the
arena's pages written, chosen at random), beside the copy floor (np.take of
the same pages into a resident buffer, as `memckpt bench`'s floor),
interleaved. Full epochs: bench/bench_write.py.

Variants (capture/copy.py knobs): "overlap" (the default: epochs staging
>= ASYNC_MIN_BYTES are written from the pause on, PAUSE_THREADS writer
threads beside the copy), "copy then write" (ASYNC_MIN_BYTES = 0: staged,
then written on the persist thread), and "overlap, N in the pause"
(PAUSE_THREADS = N). One Checkpointer per variant over its own arena (the
same content); each round takes every variant's epoch in turn, rotating the
order. Medians over ROUNDS; ratios against the copy floor of the same round.

    .venv/bin/python bench/probe_copy_overlap.py     # SIZE_MIB=1024 ROUNDS=7 PCTS=1,10,100
    VARIANTS="overlap;copy then write" .venv/bin/python bench/probe_copy_overlap.py
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import memckpt
from memckpt.capture import copy as copy_capture

PS = 4096
SIZE_MIB = int(os.environ.get("SIZE_MIB", "1024"))
ROUNDS = int(os.environ.get("ROUNDS", "7"))
PCTS = [float(p) for p in os.environ.get("PCTS", "1,10,100").split(",")]
VARIANTS: dict[str, dict[str, int]] = {
    "overlap": {},
    "copy then write": {"ASYNC_MIN_BYTES": 0},
    "overlap, 0 in the pause": {"PAUSE_THREADS": 0},
    "overlap, 2 in the pause": {"PAUSE_THREADS": 2},
}
if os.environ.get("VARIANTS"):  # names separated by ";" (they hold commas)
    VARIANTS = {k: v for k, v in VARIANTS.items() if k in os.environ["VARIANTS"].split(";")}


def main() -> None:
    npages = (SIZE_MIB << 20) // PS
    rng = np.random.default_rng(1)
    d = Path(tempfile.mkdtemp(prefix="memckpt-probe-overlap-", dir=Path.cwd()))
    arenas, views, cks = {}, {}, {}
    base = rng.integers(1, 2**63, (npages, PS // 8), dtype=np.int64).view(np.uint8)
    for name in VARIANTS:
        a = memckpt.Arena(npages * PS)
        v = np.frombuffer(a.buffer(), np.uint8).reshape(npages, PS)
        v[:] = base
        arenas[name], views[name] = a, v
        cks[name] = memckpt.Checkpointer(a, d / name.replace(" ", "_").replace(",", ""),
                                         mode="copy")
        cks[name].checkpoint().result()  # the first full epoch, untimed
    floor_buf = np.ones((npages, PS), np.uint8)  # resident, as a reused staging is
    cases = [f"{p:g}%" for p in PCTS]
    pause: dict[tuple[str, str], list[float]] = {}
    durable: dict[tuple[str, str], list[float]] = {}
    floor: dict[str, list[float]] = {}
    beside: dict[tuple[str, str], list[object]] = {}  # writer threads beside each copy
    loads = [os.getloadavg()[0]]
    names = list(VARIANTS)
    for r in range(ROUNDS):
        for case in cases:
            k = max(1, int(npages * float(case[:-1]) / 100))
            pages = np.sort(rng.choice(npages, k, replace=False)).astype(np.uint64)
            fill = rng.integers(1, 255, PS, dtype=np.uint8)
            t = time.perf_counter()
            # as memckpt bench's floor: mode="clip" (no bounds pass, no buffered out)
            np.take(views[names[0]], pages.astype(np.intp), axis=0, mode="clip",
                    out=floor_buf[:len(pages)])
            floor.setdefault(case, []).append(time.perf_counter() - t)
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                v = views[name]
                v[pages, :8] = fill[:8]  # dirty those pages
                knobs = VARIANTS[name]
                saved = {k: getattr(copy_capture, k) for k in knobs}
                for k, val in knobs.items():
                    setattr(copy_capture, k, val)
                try:
                    t = time.perf_counter()
                    info = cks[name].checkpoint().result()
                    dt = time.perf_counter() - t
                finally:
                    for k, val in saved.items():
                        setattr(copy_capture, k, val)
                pause.setdefault((name, case), []).append(info.pause_s)
                beside.setdefault((name, case), []).append(
                    info.extra.get("writer_threads_in_pause", "-"))
                durable.setdefault((name, case), []).append(dt)
        loads.append(os.getloadavg()[0])
    print(f"# {SIZE_MIB} MiB, {ROUNDS} rounds, load average {min(loads):.2f}-{max(loads):.2f}")
    print("| epoch | variant | pause_s | × copy floor | durable (from the call) | × copy then write "
          "| writer threads beside the copy, by round |")
    print("|---|---|---:|---:|---:|---:|---|")
    for case in cases:
        fl = statistics.median(floor[case])
        ref = statistics.median(durable[("copy then write", case)]) \
            if ("copy then write", case) in durable else float("nan")
        print(f"| {case} | copy floor | {fl * 1e3:.1f} ms | 1.00× | | |")
        for name in names:
            p = statistics.median(pause[(name, case)])
            t = statistics.median(durable[(name, case)])
            print(f"| {case} | {name} | {p * 1e3:.1f} ms | {p / fl:.2f}× | {t * 1e3:.0f} ms "
                  f"| {t / ref:.2f}× | {' '.join(map(str, beside[(name, case)]))} |")
    for ck in cks.values():
        ck.close()
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
