"""What a fresh 2 MiB page costs this machine, block by block.

Maps an anonymous region advised MADV_HUGEPAGE and populates it 2 MiB at a
time (MADV_POPULATE_WRITE, as a restore's fill does), timing each block's
CPU (the thread's) and wall time; then frees it and does it again. On a VM
whose free memory goes back to the host (virtio-balloon free page
reporting), the first round's pages may have to be backed by the host again
(docs/benchmarks.md, "Blocks populated in the read"); the later rounds
reuse the pages the round before freed.

    .venv/bin/python bench/probe_fresh_pages.py --mib 1024 --rounds 3
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import sys
import time

MADV_POPULATE_WRITE = 23  # Linux 5.14
BLOCK = 2 << 20


def one_round(nblocks: int) -> tuple[list[float], list[float]]:
    m = mmap.mmap(-1, (nblocks + 1) * BLOCK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    first = ctypes.c_char.from_buffer(m)
    off = (-ctypes.addressof(first)) % BLOCK
    del first  # (an export would keep the mapping)
    m.madvise(mmap.MADV_HUGEPAGE, off, nblocks * BLOCK)
    cpu, wall = [], []
    for b in range(nblocks):
        c, w = time.thread_time_ns(), time.perf_counter_ns()
        m.madvise(MADV_POPULATE_WRITE, off + b * BLOCK, BLOCK)
        cpu.append((time.thread_time_ns() - c) / 1e6)
        wall.append((time.perf_counter_ns() - w) / 1e6)
    m.close()
    return cpu, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024, help="region size (default 1024)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    n = max(1, args.mib * (1 << 20) // BLOCK)
    print(f"# {n} blocks of 2 MiB a round, load average {os.getloadavg()[0]:.2f}")
    print("| round | CPU ms a block: median | p90 | mean | max | wall ms a block: mean |")
    print("|---|---|---|---|---|---|")
    for r in range(args.rounds):
        cpu, wall = one_round(n)
        s = sorted(cpu)
        print(f"| {r + 1} | {statistics.median(s):.3f} | {s[int(0.9 * (n - 1))]:.3f} "
              f"| {statistics.mean(s):.3f} | {s[-1]:.2f} | {statistics.mean(wall):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
