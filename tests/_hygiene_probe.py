"""One resource-hygiene scenario in a fresh process (tests/test_hygiene.py).

    python tests/_hygiene_probe.py SCENARIO CYCLES WARMUP [BACKEND [MODE]]

Runs WARMUP cycles, measures, runs CYCLES more, measures again, and prints
one JSON line: {"before": {...}, "after": {...}, "cycles": N, "seconds": s}.
A measure holds the process's open fds (/proc/self/fd), threads
(/proc/self/task), child processes (any process whose parent is this one),
memory maps (/proc/self/maps lines), VmSize and VmRSS in KiB.

Scenarios: arena, tracker (BACKEND), checkpointer (BACKEND, MODE),
checkpoints (BACKEND, MODE: CYCLES checkpoints through one Checkpointer,
full_every=100, pruned to the last 100 epochs every 100),
checkpoints-unpruned (the same, never pruned: the Store's manifest cache
grows with the epochs it reads). MODE is the capture mode (default copy);
measures are taken once the last epoch is durable, so that a persist thread
or fork child still at work is not counted as a leak.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import memckpt

PS = memckpt.features().page_size
NPAGES = 64


def children() -> int:
    me = str(os.getpid())
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                # the command is in parentheses and may hold spaces: split after it
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            n += 1
    return n


def measure() -> dict[str, int]:
    gc.collect()
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.split()
    with open("/proc/self/maps") as f:
        maps = sum(1 for _ in f)
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": len(os.listdir("/proc/self/task")),
            "children": children(), "maps": maps,
            "vm_kib": int(status["VmSize"][0]), "rss_kib": int(status["VmRSS"][0])}


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def settled_threads(at_most: int, limit_s: float = 60.0) -> None:
    """Wait (up to limit_s) for the threads of closed objects to be gone: a
    closed Checkpointer's persist thread ends after close() returns, and a
    joined C thread (a tracker's handler) stays listed in /proc/self/task a
    moment; counted at a measure, either looked like a thread leaked (or,
    gone by the next measure, like one fewer). A real leak outlasts the wait
    and is counted."""
    deadline = time.monotonic() + limit_s
    while threads() > at_most and time.monotonic() < deadline:
        time.sleep(0.001)


def touch(pages: np.ndarray, rng: np.random.Generator, k: int = 4) -> None:
    idx = rng.choice(len(pages), k, replace=False)
    pages[idx, rng.integers(0, PS, k)] += 1


def scenario(name: str, backend: str, tmp: str, mode: str = "copy"):
    """A function that runs one cycle (or one checkpoint), a closer, and a
    settler that waits for work still in flight (run before each measure)."""
    rng = np.random.default_rng(1)
    if name == "arena":
        def cycle() -> None:
            with memckpt.Arena(NPAGES * PS) as a:
                x = a.array("x", (NPAGES, PS), np.uint8)
                touch(x, rng)
                del x
        return cycle, lambda: None, lambda: None
    if name == "tracker":
        arena = memckpt.Arena(NPAGES * PS)
        pages = arena.array("x", (NPAGES, PS), np.uint8)
        base = threads()  # each cycle's threads end with it

        def cycle() -> None:
            with memckpt.DirtyTracker(arena, backend) as t:
                touch(pages, rng)
                got = t.collect()
                assert len(got) >= 1, "the tracker lost a write"

        def close() -> None:
            nonlocal pages
            pages = None  # type: ignore[assignment]
            arena.close()
        return cycle, close, lambda: settled_threads(base)
    if name == "checkpointer":
        arena = memckpt.Arena(NPAGES * PS)
        pages = arena.array("x", (NPAGES, PS), np.uint8)
        count = [0]
        base = threads()  # each cycle's threads end with it

        def cycle() -> None:
            path = os.path.join(tmp, f"s{count[0]}")
            count[0] += 1
            with memckpt.Checkpointer(arena, path, tracker=backend, mode=mode) as ck:
                touch(pages, rng)
                ck.checkpoint()
            shutil.rmtree(path)

        def close() -> None:
            nonlocal pages
            pages = None  # type: ignore[assignment]
            arena.close()
        return cycle, close, lambda: settled_threads(base)
    if name in ("checkpoints", "checkpoints-unpruned"):
        # a long-running loop: a full epoch every 100, and (unless unpruned)
        # the history kept to the last 100 epochs, pruned every 100
        arena = memckpt.Arena(NPAGES * PS)
        pages = arena.array("x", (NPAGES, PS), np.uint8)
        ck = memckpt.Checkpointer(arena, os.path.join(tmp, "s"), tracker=backend, full_every=100,
                                  mode=mode)
        count = [0]

        def cycle() -> None:
            touch(pages, rng)
            ck.checkpoint()
            count[0] += 1
            if name == "checkpoints" and count[0] % 100 == 0:
                ck.store.prune(keep_last=100)

        def close() -> None:
            nonlocal pages
            ck.close()
            pages = None  # type: ignore[assignment]
            arena.close()
        return cycle, close, ck.wait
    raise SystemExit(f"unknown scenario {name!r}")


def main() -> int:
    name, cycles, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    backend = sys.argv[4] if len(sys.argv) > 4 else "auto"
    mode = sys.argv[5] if len(sys.argv) > 5 else "copy"
    # stores on tmpfs when there is one: fsync costs nothing there, and what
    # is measured is the process, not the disk
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="mck-hygiene-", dir=shm) as tmp:
        cycle, close, settle = scenario(name, backend, tmp, mode)
        for _ in range(warmup):
            cycle()
        settle()
        before = measure()
        t0 = time.monotonic()
        for _ in range(cycles):
            cycle()
        settle()
        seconds = time.monotonic() - t0
        after = measure()
        close()
        final = measure()
    print(json.dumps({"scenario": name, "backend": backend, "mode": mode, "cycles": cycles,
                      "before": before,
                      "after": after, "closed": final, "seconds": round(seconds, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
