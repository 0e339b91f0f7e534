"""What a checkpoint costs, beside np.save of the same memory, measured in the same run.

On the session's arena (bench/conftest.py: 1 GiB unless MEMCKPT_BENCH_MIB says
otherwise, every page resident), filled once with random bytes so that no
page is all zero and no two pages are alike: the store elides zero pages and
stores identical pages once, and np.save has no such shortcut, so a fair
comparison gives the store nothing to skip.

- group ``checkpoint-X%`` (X = 1, 10; ``checkpoint-full``): one
  ``Checkpointer.checkpoint()`` after D random distinct pages were written
  (``BenchArena.write``), on a chain whose full epoch was taken untimed; the
  full group forces every epoch full (``full_every=1``). The timed call is
  the whole checkpoint, which today includes persist (write, fsync, commit):
  that is **total**. The **pause** (collect + copy of the D pages, the part
  the program must stop for) is ``EpochInfo.pause_s``, kept per round in
  ``extra_info`` (median, min, max).
- group ``save``: ``np.save`` of the arena's array (the same bytes) to a file
  in the same directory as the stores, with and without ``fsync``.
- group ``restore``: ``memckpt.restore`` of each chain's latest epoch into a
  new arena (full epoch plus its increments), beside ``np.load`` of the
  np.save file into new memory. Both read files the page cache holds (they
  were just written): the comparison is of the work above the disk.

Every round is checked outside the timing: an epoch holds exactly the D pages
written, all stored (none elided), and a restore equals the arena.

Run and tabulate (in a checkout, after the README's test command made .venv):
    .venv/bin/python -m pytest bench/bench_checkpoint.py --benchmark-json=bench/results/checkpoint-1gib.json
    .venv/bin/python bench/report_checkpoint.py bench/results/checkpoint-1gib.json
MEMCKPT_BENCH_DIR=/some/dir puts the stores and the np.save file elsewhere
(default: a pytest temporary directory).
"""
from __future__ import annotations

import os
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

import memckpt
from conftest import bench_workdir, fill_random

RATIOS = [0.01, 0.1, 1.0]  # 1.0: a full epoch
ROUNDS = {0.01: 25, 0.1: 12, 1.0: 5}
SAVE_ROUNDS = 5
CHECKPOINTS: dict[float, dict] = {}  # ratio -> the store its benchmark left, for restore


def pct(ratio: float) -> str:
    return "full" if ratio >= 1.0 else f"{ratio * 100:g}%"


def seed(kind: str, ratio: float) -> int:
    return 7000 + RATIOS.index(ratio) * 10 + {"checkpoint": 1}.get(kind, 0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Where the stores (and the np.save file) go: one filesystem for all."""
    yield from bench_workdir(tmp_path_factory, "checkpoint")


@pytest.fixture(scope="module")
def arena(bench_arena):
    """The session's arena, filled with random bytes (no zero, no duplicate page)."""
    return fill_random(bench_arena, 20251126)


def fs_of(path: Path) -> str:
    """The mount point and filesystem type that hold path."""
    best = ("?", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt, kind = parts[1], parts[2]
                if str(path.resolve()).startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best[0]):
                    best = (mnt, kind)
    except OSError:
        pass
    return f"{best[1]} on {best[0]}"


def info(benchmark, ba, kind: str, ratio: float | None, workdir: Path, **more) -> None:
    benchmark.extra_info.update(kind=kind, ratio=ratio, arena_pages=ba.npages,
                                page_size=ba.page_size, filesystem=fs_of(workdir), **more)


# -- np.save / np.load: the same bytes, the plain way ------------------------------------

@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
def test_np_save(benchmark, arena, workdir, fsync):
    ba = arena
    path = workdir / "arena.npy"

    def timed():
        with open(path, "wb") as f:
            np.save(f, ba.pages)
            if fsync:
                f.flush()
                os.fsync(f.fileno())

    def teardown():
        # make the unsynced round's data durable outside the timing, so that
        # its writeback does not run through the next measurement
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        assert path.stat().st_size >= ba.pages.nbytes, "np.save wrote less than the arena"

    benchmark.group = "save"
    info(benchmark, ba, "np-save-fsync" if fsync else "np-save", None, workdir,
         bytes=ba.pages.nbytes)
    benchmark.pedantic(timed, teardown=teardown, rounds=SAVE_ROUNDS, warmup_rounds=1)


def test_np_load(benchmark, arena, workdir):
    ba = arena
    path = workdir / "arena.npy"
    if not path.exists():
        pytest.skip("np.load reads the file test_np_save writes: run the whole file")
    last: dict = {}

    def timed():
        last["a"] = np.load(path)

    def teardown():
        a = last.pop("a")
        assert a.shape == ba.pages.shape and np.array_equal(a[::97], ba.pages[::97])

    benchmark.group = "restore"
    info(benchmark, ba, "np-load", None, workdir, bytes=ba.pages.nbytes)
    benchmark.pedantic(timed, teardown=teardown, rounds=SAVE_ROUNDS, warmup_rounds=1)


# -- checkpoint ------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", RATIOS, ids=pct)
def test_checkpoint(benchmark, arena, workdir, ratio):
    ba = arena
    ba.untrack()  # the checkpointer opens its own tracker
    full = ratio >= 1.0
    d = ba.npages if full else ba.dirty_count(ratio)
    store_path = workdir / f"store-{pct(ratio).rstrip('%')}"
    shutil.rmtree(store_path, ignore_errors=True)
    store = memckpt.Store(store_path, create=True)
    ck = memckpt.Checkpointer(ba.arena, store, full_every=1 if full else None)
    rng = np.random.default_rng(seed("checkpoint", ratio))
    epochs: list[memckpt.EpochInfo] = []
    last: dict = {}
    try:
        base = ck.checkpoint("base").result()  # untimed: the chain's full epoch
        assert base.kind == "full" and base.pages_stored == ba.npages, (
            f"the base epoch stored {base.pages_stored} of {ba.npages} pages: the fill is not random")

        def setup():
            idx = ba.dirty_set(rng, d) if not full else None
            if idx is not None:
                ba.write(idx)
            return (), {}

        def timed():
            last["info"] = ck.checkpoint(f"{pct(ratio)} round").result()

        def teardown():
            e = last.pop("info")
            epochs.append(e)
            assert e.kind == ("full" if full else "incremental"), e
            if ck.tracker.exact or full:
                assert e.pages_dirty == d, f"epoch {e.epoch} holds {e.pages_dirty} pages, not {d}"
            assert e.pages_stored == e.pages_dirty, (
                f"epoch {e.epoch} stored {e.pages_stored} of {e.pages_dirty} pages: "
                f"the comparison with np.save assumes nothing is elided")
            if full:  # keep the disk use at two arenas' worth
                store.prune(keep_last=1)

        benchmark.group = f"checkpoint-{pct(ratio)}"
        info(benchmark, ba, "checkpoint", ratio, workdir, dirty_pages=d,
             tracker=ck.tracker.backend, mode=base.mode)
        benchmark.pedantic(timed, setup=setup, teardown=teardown, rounds=ROUNDS[ratio],
                           warmup_rounds=1 if not full else 0)
        if not epochs and "info" in last:  # --benchmark-disable runs no teardown
            epochs.append(last.pop("info"))
        pauses = [e.pause_s for e in epochs]
        totals = [e.total_s for e in epochs]
        benchmark.extra_info.update(
            pause_median_s=statistics.median(pauses), pause_min_s=min(pauses),
            pause_max_s=max(pauses), total_median_s=statistics.median(totals),
            bytes_on_disk_median=statistics.median(e.bytes_on_disk for e in epochs),
            pages_stored_median=statistics.median(e.pages_stored for e in epochs),
            epochs_measured=len(epochs))
        CHECKPOINTS[ratio] = {"path": store_path, "epoch": store.latest(),
                              "chain": len(store.chain(store.latest()))}
    finally:
        ck.close()
        close = getattr(store, "close", None)
        if close is not None:
            close()


# -- restore ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", RATIOS, ids=pct)
def test_restore(benchmark, arena, workdir, ratio):
    ba = arena
    made = CHECKPOINTS.get(ratio)
    if made is None:
        pytest.skip("restore reads the store test_checkpoint leaves: run the whole file")
    store = memckpt.Store(made["path"], create=False)
    epoch = made["epoch"]
    last: dict = {}
    checked = {"done": False}

    def timed():
        last["arena"] = memckpt.restore(store, epoch)

    def teardown():
        a = last.pop("arena")
        if not checked["done"]:  # once: the arena has not been written since that epoch
            got = a.arrays()["pages"]
            assert np.array_equal(got, ba.pages), f"restore of epoch {epoch} differs from the arena"
            checked["done"] = True
            del got
        a.close()

    benchmark.group = "restore"
    info(benchmark, ba, "restore", ratio, workdir, epoch=epoch, chain_epochs=made["chain"],
         bytes=ba.pages.nbytes)
    try:
        benchmark.pedantic(timed, teardown=teardown, rounds=ROUNDS[1.0], warmup_rounds=1)
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
