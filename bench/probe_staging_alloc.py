"""Mode copy's staging buffer for a full epoch: the copy of the arena into a
fresh buffer (what the pause of a first full epoch does) when the buffer is
np.empty (numpy madvises arrays of 4 MiB and more MADV_HUGEPAGE: with THP
defrag "madvise" a fault may stall to compact memory), an anonymous
mmap(MAP_PRIVATE) without that advice (4 KiB faults), or a buffer reused
(resident: the floor). Also the release (munmap) of each fresh buffer,
which a full epoch's persist pays when it lets staging go. Interleaved
rounds, medians, in one process:

    MIB=1024 ROUNDS=7 .venv/bin/python bench/probe_staging_alloc.py
"""
from __future__ import annotations

import mmap
import os
import statistics
import time
from collections import defaultdict

import numpy as np

MIB = int(os.environ.get("MIB", "1024"))
ROUNDS = int(os.environ.get("ROUNDS", "7"))
PS = 4096


def thp() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            en = f.read().strip()
        with open("/sys/kernel/mm/transparent_hugepage/defrag") as f:
            return f"enabled: {en}; defrag: {f.read().strip()}"
    except OSError:
        return "unknown"


def main() -> None:
    src = np.random.default_rng(1).integers(0, 255, (MIB << 20) // PS * PS, np.uint8).reshape(-1, PS)
    reused = np.empty_like(src)
    reused.fill(1)
    rec: dict[str, list[float]] = defaultdict(list)

    def numpy_fresh() -> None:
        t = time.perf_counter()
        buf = np.empty_like(src)
        np.copyto(buf, src)
        t1 = time.perf_counter()
        del buf
        rec["np.empty: copy"].append(t1 - t)
        rec["np.empty: free"].append(time.perf_counter() - t1)

    def mmap_fresh() -> None:
        t = time.perf_counter()
        mm = mmap.mmap(-1, src.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf = np.frombuffer(mm, np.uint8).reshape(src.shape)
        np.copyto(buf, src)
        t1 = time.perf_counter()
        del buf
        mm.close()
        rec["mmap, no advice: copy"].append(t1 - t)
        rec["mmap, no advice: free"].append(time.perf_counter() - t1)

    def reuse() -> None:
        t = time.perf_counter()
        np.copyto(reused, src)
        rec["reused: copy"].append(time.perf_counter() - t)

    jobs = [numpy_fresh, mmap_fresh, reuse]
    print(f"# {MIB} MiB, {ROUNDS} rounds; THP {thp()}; load {os.getloadavg()}")
    for r in range(ROUNDS + 1):
        for job in jobs[r % 3:] + jobs[:r % 3]:
            job()
        if r == 0:
            rec.clear()  # warm-up
    print(f"# load at the end {os.getloadavg()}")
    for k, v in rec.items():
        print(f"{k:28s} median {statistics.median(v) * 1e3:7.1f} ms  "
              f"[{', '.join(f'{x * 1e3:.0f}' for x in v)}]")


if __name__ == "__main__":
    main()
