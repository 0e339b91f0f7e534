"""A full epoch made durable, beside np.save + fsync and a bare sequential
write + fdatasync of the same bytes, measured in the same run.

For each size (MiB of float64, random: no page is zero, no two are alike, so
the store can skip nothing), the script measures, round-robin so that the
machine's noise falls on every method alike:

- ``np.save + fsync``: what a user would pick: np.save of the array to a new
  file, flush, fsync.
- ``np.save + fsync, a second right after a first``: the same, timed as the
  second of two in a row (the first untimed), as a Checkpointer's later full
  epoch follows its first: the baseline of "a later full" (a virtual disk may
  take a second burst of the same size slower than the first).
- ``write + fdatasync``: the floor: one os.write of the array's bytes to a new
  file, then fdatasync.
- ``write, early writeback``: the same bytes written 8 MiB at a time, each
  piece's writeback started at once (sync_file_range), then fdatasync: the
  floor for a writer that, like the store's, overlaps its writes with the disk.
- ``epoch ... staged``: a full epoch of a new store: np.copyto of the array
  into a staging buffer (touched once before, as a Checkpointer's is), then
  begin, add_pages(staging), commit (pack, index and manifest durable).
- ``epoch ... from array``: begin, add_pages_from(the array's pages), commit:
  no staging copy.

- ``Checkpointer ..., first epoch``: what a user sees: a new Checkpointer
  over an arena holding the array (the array copied into it once, untimed),
  its first checkpoint() until result() (durable), in modes copy (the
  default: the arena staged in the pause, the writer's threads writing each
  piece of staging from the instant the copy ends, on after the pause;
  capture/copy.py PAUSE_THREADS of them beside the copy, 0 by default), "copy, copy then write"
  (ASYNC_MIN_BYTES = 0: the whole copy, then the write on the persist
  thread, as before issue 12's overlap), "copy, 1 / 2 threads in the pause"
  (PAUSE_THREADS), "copy, by fork" (FORK_PROCESSES = 2: its full epochs
  written by a fork() child, when the arena is most of the process), sync
  (every page written in the pause, from the arena, with the writer's
  threads) and fork.
- ``Checkpointer ..., a later full``: the same Checkpointer's second
  checkpoint with full_every=1 (a full epoch again: full_every, rebasing);
  its ratio is given against both baselines.

The store's own epochs run with 1, 2 and all the CPUs available (threads=). Every epoch is
checked outside the timing: its counts say every page was stored, and a
verify() of the store (every page digest, every file digest) passes once per
size and method. Times are medians (and minimums) over the rounds; ratios
are between medians of the same run. CPU time is what the process (and its
fork children) used during the method, all threads, user and system (with
the deletion of its file after it): on a machine others share, what the method needs of the
CPUs is steadier than its wall time. Each round runs every method once,
starting one method later than the round before.

    .venv/bin/python bench/bench_write.py --size 512 --size 1024 --rounds 5
    .venv/bin/python bench/bench_write.py --size 64 --rounds 3      # quick
    --only np.save,Checkpointer runs only the methods whose names start with
    one of these (the baselines are always run); separate them with ";"
    when one holds a comma: --only "Checkpointer copy, first;Checkpointer sync".
    --dir DIR puts the files there (default: a temporary directory in the
    current one, i.e. the file system of the checkout). Run with a memckpt
    from before the C epoch writer, it measures its staged epoch alone.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

import memckpt
from memckpt.capture import copy as copy_capture
from memckpt.store import Store

try:
    from memckpt import _writer
except ImportError:  # a memckpt before the C epoch writer: the staged epoch alone, for a before/after
    _writer = None

PS = 4096
_libc = ctypes.CDLL(None, use_errno=True)
_SYNC_FILE_RANGE_WRITE = 2


def _new_file(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)


def np_save_fsync(a: np.ndarray, d: Path) -> float:
    p = d / "a.npy"
    t = time.perf_counter()
    with open(p, "wb") as f:
        np.save(f, a)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t
    p.unlink()
    return dt


def np_save_fsync_second(a: np.ndarray, d: Path) -> float:
    """np.save + fsync timed right after an untimed first one (another file)."""
    first = d / "first.npy"
    with open(first, "wb") as f:
        np.save(f, a)
        f.flush()
        os.fsync(f.fileno())
    try:
        return np_save_fsync(a, d)
    finally:
        first.unlink()


def _timed_new_file(d: Path, write: Callable[[int], None]) -> float:
    """Seconds to create a file, write(fd) into it and fdatasync it."""
    p = d / "a.bin"
    t = time.perf_counter()
    fd = _new_file(p)
    try:
        write(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t
    p.unlink()
    return dt


def write_fdatasync(a: np.ndarray, d: Path) -> float:
    def write(fd: int) -> None:
        mv = memoryview(a).cast("B")
        while mv.nbytes:
            mv = mv[os.write(fd, mv):]
    return _timed_new_file(d, write)


def write_early_writeback(a: np.ndarray, d: Path) -> float:
    def write(fd: int) -> None:
        mv = memoryview(a).cast("B")
        piece = 8 << 20
        for off in range(0, mv.nbytes, piece):
            part = mv[off:off + piece]
            n = 0
            while n < part.nbytes:
                n += os.pwrite(fd, part[n:], off + n)
            _libc.sync_file_range(fd, ctypes.c_int64(off), ctypes.c_int64(part.nbytes),
                                  _SYNC_FILE_RANGE_WRITE)
    return _timed_new_file(d, write)


def epoch(a: np.ndarray, d: Path, threads: int, staging: np.ndarray | None,
          check: bool) -> float:
    """A full epoch of a new store, durable; staging: copy into it first."""
    sp = d / "store"
    shutil.rmtree(sp, ignore_errors=True)
    s = Store(sp, create=True, page_size=PS)
    rows = a.view(np.uint8).reshape(-1, PS)
    n = rows.shape[0]
    pages = np.arange(n, dtype=np.uint64)
    t = time.perf_counter()
    w = s.begin("full", npages=n, threads=threads) if _writer else s.begin("full", npages=n)
    if staging is not None:
        np.copyto(staging, rows)
        w.add_pages(pages, staging)
    else:
        w.add_pages_from(rows, pages)
    info = w.commit(pages_dirty=n, pause_s=0.0)
    dt = time.perf_counter() - t
    if info.pages_stored != n:
        raise AssertionError(f"epoch stored {info.pages_stored} of {n} pages")
    if check:
        s.verify()
    s.close()
    shutil.rmtree(sp)
    return dt


PAUSES: dict[str, list[float]] = {}
FULL_BY: dict[str, set[str]] = {}  # how each Checkpointer method's full epochs were taken


# variants of mode copy: the knobs of capture/copy.py they set
COPY_VARIANTS: dict[str, dict[str, int]] = {
    "copy, by fork": {"FORK_PROCESSES": 2},
    # the staged epoch written after the copy, on the persist thread (before issue 12's overlap)
    "copy, copy then write": {"ASYNC_MIN_BYTES": 0},
    # the write overlapping the copy with the writer's threads beside it in the pause
    "copy, 1 thread in the pause": {"PAUSE_THREADS": 1},
    "copy, 2 threads in the pause": {"PAUSE_THREADS": 2},
}
COPY_MODES = ["copy", "copy, by fork", "copy, copy then write", "copy, 1 thread in the pause",
              "copy, 2 threads in the pause"]


def checkpointer_full(arena: memckpt.Arena, d: Path, mode: str, later: bool, name: str,
                      check: bool) -> float:
    """A new Checkpointer's first epoch (or, later: its second, full_every=1),
    until durable; its pause_s goes to PAUSES[name]. Mode "copy, by fork":
    mode copy with its full epochs taken by fork (FORK_PROCESSES = 2); the
    other "copy, ..." modes set the knobs COPY_VARIANTS names."""
    sp = d / "ck"
    shutil.rmtree(sp, ignore_errors=True)
    knobs = COPY_VARIANTS.get(mode, {})
    saved = {k: getattr(copy_capture, k) for k in knobs}
    for k, v in knobs.items():
        setattr(copy_capture, k, v)
    try:
        with memckpt.Checkpointer(arena, sp, mode="copy" if mode.startswith("copy") else mode,
                                  full_every=1 if later else None) as ck:
            if later:
                ck.checkpoint().result()
            t = time.perf_counter()
            p = ck.checkpoint()
            info = p.result()
            dt = time.perf_counter() - t
    finally:
        for k, v in saved.items():
            setattr(copy_capture, k, v)
    if info.kind != "full":
        raise AssertionError(f"{name}: epoch {info.epoch} is {info.kind}")
    how = {"sync": "in the pause, from the arena", "fork": "fork"}.get(mode, "staged")
    if info.extra.get("written_from_pause"):
        k = info.extra.get("writer_threads_in_pause", "?")
        how = f"staged, written from the pause on ({k} beside the copy)"
    FULL_BY.setdefault(name, set()).add(info.extra.get("full_by", how))
    if check:
        with memckpt.restore(sp) as got:
            if not np.array_equal(np.frombuffer(got.buffer(), np.uint8),
                                  np.frombuffer(arena.buffer(), np.uint8)):
                raise AssertionError(f"{name}: the restore differs from the arena")
    else:
        PAUSES.setdefault(name, []).append(info.pause_s)
    shutil.rmtree(sp)
    return dt


BASELINES = ("np.save + fsync", "write + fdatasync (floor)")


def run_size(mib: int, rounds: int, d: Path,
             only: list[str] | None = None) -> list[tuple[str, float, float, float]]:
    a = np.random.default_rng(mib).random((mib << 20) // 8)
    a[a == 0] = 0.5  # no zero word: no page can be all zero
    staging = np.empty(((mib << 20) // PS, PS), np.uint8)
    staging.fill(1)  # touched: the first touch of fresh memory is not the epoch's cost
    cpus = _writer.cpus_available() if _writer else len(os.sched_getaffinity(0))
    threads = sorted({1, 2, cpus}) if _writer else []
    methods: list[tuple[str, Callable[[bool], float]]] = [
        ("np.save + fsync", lambda c: np_save_fsync(a, d)),
        ("np.save + fsync, a second right after a first", lambda c: np_save_fsync_second(a, d)),
        ("write + fdatasync (floor)", lambda c: write_fdatasync(a, d)),
        ("write, early writeback (floor)", lambda c: write_early_writeback(a, d)),
    ]
    for t in threads:
        tag = f"{t} thread{'s' if t > 1 else ''}" + (" (all)" if t == cpus else "")
        methods.append((f"epoch, from array, {tag}",
                        lambda c, t=t: epoch(a, d, t, None, c)))
        methods.append((f"epoch, staged, {tag}",
                        lambda c, t=t: epoch(a, d, t, staging, c)))
    if _writer is None:
        methods.append(("epoch, staged (Python writer)", lambda c: epoch(a, d, 1, staging, c)))
    arena = memckpt.Arena(mib << 20)
    arena.array("a", a.shape, a.dtype)[:] = a
    for mode in (*COPY_MODES, "sync", "fork"):
        for later in (False, True):
            name = f"Checkpointer {mode}, {'a later full' if later else 'first epoch'}"
            methods.append((name, lambda c, m=mode, l=later, n=name:
                            checkpointer_full(arena, d, m, l, n, c)))
    if only:
        methods = [(n, f) for n, f in methods if n.startswith(BASELINES) or n.startswith(tuple(only))]
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    for name, fn in methods:  # a warm-up round each, checked, untimed
        fn(True)
    cpu: dict[str, list[float]] = {name: [] for name, _ in methods}
    for r in range(rounds):
        # each round starts one method later: none always follows the same
        # one (the writeback and unlink of the file before it land on it)
        for name, fn in methods[r % len(methods):] + methods[:r % len(methods)]:
            c0 = _cpu_s()
            times[name].append(fn(False))
            cpu[name].append(_cpu_s() - c0)  # includes the untimed cleanup (unlink)
    arena.close()
    return [(name, statistics.median(v), min(v), statistics.median(cpu[name]))
            for name, v in times.items()]


def _cpu_s() -> float:
    """CPU seconds this process used so far, all its threads, user and system,
    and its children reaped so far (mode fork's, which write the pages)."""
    return sum(ru.ru_utime + ru.ru_stime for ru in (resource.getrusage(resource.RUSAGE_SELF),
                                                    resource.getrusage(resource.RUSAGE_CHILDREN)))


def table(mib: int, rows: list[tuple[str, float, float, float]], rounds: int, load0: float) -> str:
    med = {name: t for name, t, _, _ in rows}
    npsave = med["np.save + fsync"]
    second = med["np.save + fsync, a second right after a first"]
    floor = med["write + fdatasync (floor)"]
    out = [f"\n{mib} MiB of float64 ({(mib << 20) // PS} pages), {rounds} rounds, "
           f"load average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end",
           "| method | median | min | GB/s (median) | CPU time (median) | × np.save + fsync "
           "| × second np.save + fsync | × write + fdatasync |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t, lo, c in rows:
        gbs = (mib << 20) / t / 1e9
        out.append(f"| {name} | {t * 1e3:.0f} ms | {lo * 1e3:.0f} ms | {gbs:.2f} | {c * 1e3:.0f} ms | "
                   f"{t / npsave:.2f}× | {t / second:.2f}× | {t / floor:.2f}× |")
    if PAUSES:
        out += ["", "| Checkpointer | pause_s (median) | × np.save + fsync | full epochs taken by |",
                "|---|---:|---:|---|"]
        for name, v in PAUSES.items():
            out.append(f"| {name} | {statistics.median(v) * 1e3:.1f} ms | "
                       f"{statistics.median(v) / npsave:.3f}× | {', '.join(sorted(FULL_BY.get(name, ())))} |")
        PAUSES.clear()
        FULL_BY.clear()
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, action="append", help="MiB (repeatable; default 512 and 1024)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--only", default=None,
                    help="comma- (or, when a name holds a comma, semicolon-) separated name "
                         "prefixes of the methods to run (baselines always)")
    args = ap.parse_args()
    # names hold commas ("Checkpointer copy, first epoch"): ";" separates them if given
    only = args.only.split(";" if ";" in args.only else ",") if args.only else None
    sizes = args.size or [512, 1024]
    d = Path(tempfile.mkdtemp(prefix="memckpt-bench-write-", dir=args.dir or Path.cwd()))
    try:
        print(f"# {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} available; files in {d}")
        for mib in sizes:
            load0 = os.getloadavg()[0]
            print(table(mib, run_size(mib, args.rounds, d, only), args.rounds, load0), flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
