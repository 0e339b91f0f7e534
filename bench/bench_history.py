"""A small checkpoint's cost against the store's history (issue 12): a
4-page checkpoint (Checkpointer mode "copy", until ``result()``, i.e. durable)
on a store holding SMALL epochs beside the same on a store holding LARGE
epochs, and beside the floor: one 4 KiB write + fdatasync in the directory
that holds the stores, measured in the same run.

Each round builds both stores afresh: a 64-page arena (one array), one full
epoch, then one incremental epoch of one page after another, every epoch the
parent of the next (no full_every: the chain is as deep as the store), made
with Store.begin/add_pages/commit while os.fsync and os.fdatasync are no-ops
(durability is not what the build is for; os.sync() writes it all back
before anything is timed). Then Checkpointer.resume() on each store (mode
"copy"), one untimed checkpoint (the first write of a Store object sweeps
and, on this code, checks the chain it continues once), and RUNS timed
4-page checkpoints per store, taken in turns with the floors:

- floor, new file: create a file, write 4 KiB, fdatasync, close (the file is
  then removed, untimed): what writing any new durable file costs;
- floor, overwrite: pwrite 4 KiB over an allocated block of a file and
  fdatasync (no allocation, so no journal commit: the device's flush alone);
- the commit's syncs alone, on new files of a 4-page epoch's sizes (pack
  4,128 B, index 256 B, manifest 1 KiB): fdatasync pack, fdatasync index,
  fsync manifest, rename, fsync the directory (docs/format.md lists why each
  is needed). Three ways: all in turn (as the store runs them); pack and
  index at once (a thread for the pack's), then the rest in turn; the first
  three at once (what the format's order would still allow, had the manifest
  not to record when pack and index became durable). What the protocol costs
  without any of the store's work, and what concurrency would change.

So within a round the stores grow by RUNS epochs: "epoch 20" is 20..20+RUNS.
Medians over ROUNDS x RUNS checkpoints. Every checkpoint is checked to hold
the 4 pages it was given, and the last epoch of each store is restored and
compared with the arena bit for bit.

From a checkout (about a minute):

    .venv/bin/python bench/bench_history.py      # SMALL=20 LARGE=2000 ROUNDS=5 RUNS=40
                                                 # DIR=/tmp/memckpt-bench-history
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import memckpt
from memckpt.store import Store

SMALL = int(os.environ.get("SMALL", "20"))
LARGE = int(os.environ.get("LARGE", "2000"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
RUNS = int(os.environ.get("RUNS", "40"))
DIR = Path(os.environ.get("DIR", "/tmp/memckpt-bench-history"))
NPAGES = 64
DIRTY = 4


def build(path: Path, epochs: int, layout: dict[str, Any], rng: np.random.Generator) -> None:
    """A store of `epochs` chained epochs of a NPAGES-page arena of `layout`."""
    shutil.rmtree(path, ignore_errors=True)
    saved = os.fsync, os.fdatasync
    os.fsync = os.fdatasync = lambda fd: None  # type: ignore[assignment]
    try:
        s = Store(path, create=True)
        ps = s.page_size
        state = rng.integers(0, 256, (NPAGES, ps), dtype=np.uint8)
        w = s.begin(kind="full", layout=layout, npages=NPAGES)
        w.add_pages(np.arange(NPAGES, dtype=np.uint64), state)
        e = w.commit(pages_dirty=NPAGES, pause_s=0.0).epoch
        for i in range(1, epochs):
            p = i % NPAGES
            state[p, :8] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)
            w = s.begin(kind="incremental", parent=e, layout=layout, npages=NPAGES)
            w.add_pages(np.array([p], np.uint64), state[p:p + 1])
            e = w.commit(pages_dirty=1, pause_s=0.0).epoch
        assert e == epochs
    finally:
        os.fsync, os.fdatasync = saved  # type: ignore[assignment]


class Side:
    """One store and the Checkpointer continuing it."""

    def __init__(self, path: Path, epochs: int, layout: dict[str, Any], seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        build(path, epochs, layout, self.rng)
        self.ck = memckpt.Checkpointer.resume(path, mode="copy")
        self.pages = self.ck.arena.arrays()["pages"]
        self.times: list[float] = []
        self.step(timed=False)

    def step(self, *, timed: bool = True) -> None:
        sel = np.sort(self.rng.choice(NPAGES, DIRTY, replace=False))
        self.pages[sel, :16] = self.rng.integers(0, 256, (DIRTY, 16), dtype=np.uint8)
        t = time.perf_counter()
        info = self.ck.checkpoint().result()
        dt = time.perf_counter() - t
        if info.kind != "incremental" or info.pages_stored != DIRTY:
            raise AssertionError(f"epoch {info.epoch}: {info.kind}, {info.pages_stored} pages stored")
        if timed:
            self.times.append(dt)

    def close(self) -> None:
        self.ck.wait()
        store, latest = self.ck.store, self.ck.head
        with memckpt.restore(store, latest) as back:
            if not np.array_equal(back.arrays()["pages"], self.pages):
                raise AssertionError(f"{store.path}: epoch {latest} does not restore the arena")
        arena = self.ck.arena
        self.ck.close()
        del self.pages
        arena.close()


def floor_new(path: Path, data: bytes) -> float:
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, data, 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t
    os.unlink(path)
    return dt


def floor_overwrite(fd: int, data: bytes) -> float:
    t = time.perf_counter()
    os.pwrite(fd, data, 0)
    os.fdatasync(fd)
    return time.perf_counter() - t


def _commit_files(d: Path, i: int) -> tuple[list[int], Path]:
    fds = []
    for name, size in ((f"p{i}.pack", 4128), (f"p{i}.idx", 256), (f"p{i}.json.tmp", 1024)):
        fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.pwrite(fd, os.urandom(size), 0)
        fds.append(fd)
    return fds, d / f"p{i}.json.tmp"


def _finish(d: Path, fds: list[int], tmp: Path) -> None:
    for fd in fds:
        os.close(fd)
    os.rename(tmp, tmp.with_suffix(""))
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def syncs_in_turn(d: Path, i: int) -> float:
    fds, tmp = _commit_files(d, i)
    t = time.perf_counter()
    os.fdatasync(fds[0])
    os.fdatasync(fds[1])
    os.fsync(fds[2])
    _finish(d, fds, tmp)
    return time.perf_counter() - t


def syncs_pack_beside_index(d: Path, i: int) -> float:
    fds, tmp = _commit_files(d, i)
    t = time.perf_counter()
    th = threading.Thread(target=os.fdatasync, args=(fds[0],))
    th.start()
    os.fdatasync(fds[1])
    th.join()
    os.fsync(fds[2])
    _finish(d, fds, tmp)
    return time.perf_counter() - t


def syncs_three_at_once(d: Path, i: int) -> float:
    fds, tmp = _commit_files(d, i)
    t = time.perf_counter()
    threads = [threading.Thread(target=os.fdatasync, args=(fd,)) for fd in fds[:2]]
    for th in threads:
        th.start()
    os.fsync(fds[2])
    for th in threads:
        th.join()
    _finish(d, fds, tmp)
    return time.perf_counter() - t


def main() -> None:
    DIR.mkdir(parents=True, exist_ok=True)
    ps = memckpt.features().page_size
    with memckpt.Arena(NPAGES * ps) as a:
        a.array("pages", (NPAGES, ps), np.uint8)
        layout = a.layout()
    data = os.urandom(4096)
    over = DIR / "floor-overwrite.bin"
    ofd = os.open(over, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.pwrite(ofd, data, 0)
    os.fsync(ofd)
    small_t: list[float] = []
    large_t: list[float] = []
    new_t: list[float] = []
    over_t: list[float] = []
    turn_t: list[float] = []
    pair_t: list[float] = []
    three_t: list[float] = []
    sdir = DIR / "syncs"
    load0 = os.getloadavg()[0]
    t_all = time.perf_counter()
    try:
        for r in range(ROUNDS):
            t = time.perf_counter()
            small = Side(DIR / f"store-{SMALL}", SMALL, layout, 100 + r)
            large = Side(DIR / f"store-{LARGE}", LARGE, layout, 200 + r)
            # the builds left thousands of files unsynced: written back now,
            # not during the large store's checkpoints
            os.sync()
            print(f"round {r + 1}/{ROUNDS}: built and resumed in {time.perf_counter() - t:.1f} s",
                  flush=True)
            for i in range(RUNS):
                order = (small, large) if i % 2 == 0 else (large, small)
                for side in order:
                    side.step()
                new_t.append(floor_new(DIR / "floor-new.bin", data))
                over_t.append(floor_overwrite(ofd, data))
                shutil.rmtree(sdir, ignore_errors=True)
                sdir.mkdir()
                turn_t.append(syncs_in_turn(sdir, 3 * i))
                pair_t.append(syncs_pack_beside_index(sdir, 3 * i + 1))
                three_t.append(syncs_three_at_once(sdir, 3 * i + 2))
            small_t += small.times
            large_t += large.times
            small.close()
            large.close()
    finally:
        os.close(ofd)
        os.unlink(over)
    ms = {k: statistics.median(v) * 1e3 for k, v in
          (("small", small_t), ("large", large_t), ("new", new_t), ("over", over_t),
           ("turn", turn_t), ("pair", pair_t), ("three", three_t))}
    print(f"\n{len(small_t)} checkpoints per store, {time.perf_counter() - t_all:.0f} s, "
          f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]}")
    print(f"{'':44} {'median':>10} {'÷ new file':>11} {'÷ overwrite':>12}")
    rows = ((f"4-page checkpoint at epoch {SMALL}..{SMALL + RUNS}", ms["small"]),
            (f"4-page checkpoint at epoch {LARGE}..{LARGE + RUNS}", ms["large"]),
            ("floor: new file, 4 KiB write + fdatasync", ms["new"]),
            ("floor: 4 KiB overwrite + fdatasync", ms["over"]),
            ("the commit's 4 syncs alone, in turn (the store)", ms["turn"]),
            ("the same, pack's beside index's", ms["pair"]),
            ("the same, pack, index, manifest at once", ms["three"]))
    for name, v in rows:
        print(f"{name:44} {v:7.3f} ms {v / ms['new']:10.2f}x {v / ms['over']:11.2f}x")
    print(f"ratio epoch {LARGE} / epoch {SMALL}: {ms['large'] / ms['small']:.2f}x (goal <= 1.2x); "
          f"checkpoint at epoch {LARGE} / its syncs alone, as the store runs them: "
          f"{ms['large'] / ms['turn']:.2f}x")
    shutil.rmtree(DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
