"""Where a Checkpointer's full epoch spends its time, beside np.save + fsync
(a first, and a second right after it) in the same run.

The process is set up as bench/bench_write.py's: an array of MIB MiB of
random float64, a touched staging-sized buffer beside it (EXTRA=0 drops it),
and an arena holding a copy. Each round runs, interleaved: np.save + fsync
of the array, then a second one right after; and for each mode in MODES a new
Checkpointer's first checkpoint (mode "copyfork": mode copy with
staging= one page short of the arena, so its full epochs are taken by fork) (until durable) and, with full_every=1, its
second (a later full). The steps of each epoch are timed by wrapping the
functions that do them (offsets from the checkpoint() call, ms): the
staging allocation, the pause, the wait for the fork child and its own
report (child_s, fork_s), the adoption and commit, the reaping of the child
(its exit), the bookkeeping after the commit. Medians printed.

    MIB=1024 ROUNDS=5 MODES=fork,copy .venv/bin/python bench/probe_full_epoch.py
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

import memckpt
from memckpt.capture import copy as copy_mod
from memckpt.capture import fork as fork_mod
from memckpt.capture import forksnap
from memckpt.checkpoint import aftercommit

MIB = int(os.environ.get("MIB", "1024"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
MODES = os.environ.get("MODES", "fork,copy,sync").split(",")
EXTRA = int(os.environ.get("EXTRA", "1"))
STAGING = os.environ.get("STAGING")  # bytes for Checkpointer(staging=...), default its own

T0 = [0.0]
STEPS: list[tuple[str, float, float]] = []
SAMPLE = int(os.environ.get("SAMPLE", "1"))  # sample the fork children's state every 2 ms
TALLY: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
# the last /proc/PID/schedstat read of each child and helper: (who, ns on a CPU, ns runnable
# waiting for one); summed per who at the end
SCHED: dict[int, tuple[str, int, int]] = {}
_GENERIC = ("__schedule", "schedule", "io_schedule", "schedule_timeout", "schedule_hrtimeout",
            "do_nanosleep", "hrtimer_nanosleep", "folio_wait", "__folio", "wait_on_page",
            "__x64_sys", "do_syscall", "entry_SYSCALL", "x64_sys_call", "io_schedule_timeout")


def _descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, depth) of pid's descendant processes."""
    out: list[tuple[int, int]] = []
    todo = [(pid, 0)]
    while todo:
        p, depth = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            for k in kids:
                out.append((k, depth + 1))
                todo.append((k, depth + 1))
    return out


def _where(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "R":
            return "R (running)"
        with open(f"/proc/{pid}/stack") as f:
            frames = [ln.split("] ", 1)[1].split("+")[0] for ln in f if "] " in ln]
    except OSError:
        return "gone"
    top = [fr for fr in frames if not fr.startswith(_GENERIC)][:3]
    return f"{state} " + "<".join(top)


def _sampler(stop: Any, name: list[str]) -> None:
    me = os.getpid()
    while not stop.is_set():
        for pid, depth in _descendants(me):
            who = f"{name[0]} {'child' if depth == 1 else 'helper'}"
            TALLY[who][_where(pid)] += 1
            try:
                with open(f"/proc/{pid}/schedstat") as f:
                    run, wait = (int(x) for x in f.read().split()[:2])
                SCHED[pid] = (who, run, wait)
            except (OSError, ValueError):
                pass
        time.sleep(0.002)


def wrap(owner: Any, attr: str, label: str) -> None:
    fn = getattr(owner, attr)

    def timed(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            STEPS.append((label, t - T0[0], time.perf_counter() - T0[0]))
    setattr(owner, attr, timed)


wrap(forksnap.ForkSnapshot, "finish", "fork: wait child + adopt")
wrap(forksnap.ForkSnapshot, "release", "fork: reap child (its exit)")
wrap(fork_mod, "commit", "commit")
wrap(copy_mod, "commit", "commit")
wrap(copy_mod.CopyMode, "_staging", "copy: staging alloc")
wrap(aftercommit.AfterCommit, "committed", "after commit")


CURRENT = ["-"]


def np_save_fsync(a: np.ndarray, p: Path) -> float:
    t = time.perf_counter()
    with open(p, "wb") as f:
        np.save(f, a)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t


def full(arena: memckpt.Arena, d: Path, mode: str, later: bool, rec: dict[str, list[float]],
         name: str) -> float:
    sp = d / "ck"
    shutil.rmtree(sp, ignore_errors=True)
    kw: dict[str, Any] = {"mode": mode, "full_every": 1 if later else None}
    if STAGING:
        kw["staging"] = int(STAGING)
    if mode == "copyfork":  # staging= one page short of the arena: full epochs by fork
        kw.update(mode="copy", staging=arena.nbytes - arena.page_size)
    with memckpt.Checkpointer(arena, sp, **kw) as ck:
        if later:
            ck.checkpoint().result()
        STEPS.clear()
        CURRENT[0] = name
        T0[0] = t = time.perf_counter()
        p = ck.checkpoint()
        back = time.perf_counter() - t
        info = p.result()
        dt = time.perf_counter() - t
        CURRENT[0] = "-"
    assert info.kind == "full"
    rec[f"{name} | checkpoint() returned"].append(back)
    rec[f"{name} | pause_s"].append(info.pause_s)
    if mode == "copyfork":
        assert info.extra.get("full_by") == "fork", info.extra
    for k in ("fork_s", "child_s", "collect_s"):
        if k in info.extra:
            rec[f"{name} | extra {k}"].append(info.extra[k])
    for label, s, e in STEPS:
        rec[f"{name} | {label} start"].append(s)
        rec[f"{name} | {label} end"].append(e)
    rec[f"{name} | durable"].append(dt)
    shutil.rmtree(sp)
    return dt


def main() -> None:
    d = Path(tempfile.mkdtemp(prefix="memckpt-probe-full-", dir=Path.cwd()))
    a = np.random.default_rng(MIB).random((MIB << 20) // 8)
    a[a == 0] = 0.5
    extra = None
    if EXTRA:
        extra = np.empty(((MIB << 20) // 4096, 4096), np.uint8)
        extra.fill(1)
    arena = memckpt.Arena(MIB << 20)
    arena.array("a", a.shape, a.dtype)[:] = a
    rec: dict[str, list[float]] = defaultdict(list)
    jobs: list[tuple[str, Callable[[], None]]] = []

    def saves() -> None:
        rec["np.save + fsync | durable"].append(np_save_fsync(a, d / "a.npy"))
        rec["second np.save + fsync | durable"].append(np_save_fsync(a, d / "b.npy"))
        (d / "a.npy").unlink()
        (d / "b.npy").unlink()
    jobs.append(("np.save", saves))
    for m in MODES:
        for later in (False, True):
            name = f"{m} {'later' if later else 'first'}"
            jobs.append((name, lambda m=m, later=later, name=name: full(arena, d, m, later, rec, name)))
    print(f"# {MIB} MiB, {ROUNDS} rounds, extra buffer {bool(EXTRA)}, staging={STAGING}, "
          f"uptime: {os.getloadavg()}", flush=True)
    import threading
    stop = threading.Event()
    th = threading.Thread(target=_sampler, args=(stop, CURRENT), daemon=True)
    if SAMPLE:
        th.start()
    try:
        for r in range(ROUNDS + 1):  # round 0: warm-up, dropped
            for _, job in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:
                job()
            if r == 0:
                rec.clear()
                TALLY.clear()
                SCHED.clear()
    finally:
        stop.set()
        arena.close()
        shutil.rmtree(d, ignore_errors=True)
    print(f"# load at the end: {os.getloadavg()}")
    base = statistics.median(rec["np.save + fsync | durable"])
    for k in sorted(rec):
        v = rec[k]
        med = statistics.median(v)
        tail = f"  ({med / base:.2f}x np.save)" if k.endswith("durable") else ""
        print(f"{k:60s} median {med * 1e3:8.1f} ms  [{', '.join(f'{x * 1e3:.0f}' for x in v)}]{tail}")


def _tally() -> None:
    cpu: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for who, run, wait in SCHED.values():
        cpu[who][0] += run
        cpu[who][1] += wait
        cpu[who][2] += 1
    for who, (run, wait, n) in sorted(cpu.items()):
        print(f"## {who}: per process (mean of {n}, last sample): on a CPU {run / n / 1e6:.0f} ms, "
              f"runnable but waiting for a CPU {wait / n / 1e6:.0f} ms")
    for who, where in sorted(TALLY.items()):
        total = sum(where.values())
        print(f"## {who}: {total} samples (2 ms apart, all rounds)")
        for w, n in sorted(where.items(), key=lambda kv: -kv[1])[:8]:
            print(f"   {n / total:6.1%}  {w}")


if __name__ == "__main__":
    main()
    _tally()

