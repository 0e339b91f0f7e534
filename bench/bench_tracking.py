"""What dirty tracking costs, per backend, beside the floor measured in the same run.

On one arena (1 GiB unless MEMCKPT_BENCH_MIB says otherwise), with D random
distinct pages dirty out of N (D/N = 0.1%, 1%, 10%, 100%):

- group ``collect-X%``: ``tracker.collect()`` after D pages were written, per
  backend; beside it the floors a checkpoint cannot beat: a copy of the D dirty
  pages (``floor_memcpy``), a bare ``PAGEMAP_SCAN`` of all N pages
  (``floor_scan``; nothing tracked, so it returns N), and the same scan of the
  arena under uffd-async write-protection with D pages written
  (``floor_scan_wp``: the walk uffd-async's collect does, worded as collect
  words it, minus its re-protect); both through ``memckpt._core.pagemap_scan_count``.
- group ``first-write-X%``: one byte written to each of the D pages just after
  a collect re-armed the tracker, per backend; beside it the same write with no
  tracker (``first_write_baseline``). Per-page cost of tracking =
  (tracked - baseline) / D, in ``extra_info`` and in ``bench/report.py``.

Every timed call is checked outside the timing: collect must report the D
pages written (all of them; exactly them for an exact backend), and the pages a
first-write round wrote must be what the next collect reports. A benchmark that
measured a no-op would fail rather than report a fast backend.

Run and tabulate:
    .venv/bin/python -m pytest bench/ --benchmark-json=bench/results/tracking.json
    .venv/bin/python bench/report.py bench/results/tracking.json
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import BACKENDS, PAGE_IS_WRITTEN, TRACKERS, require_backend, require_pagemap_scan
from memckpt import _core

RATIOS = [0.001, 0.01, 0.1, 1.0]


def pct(ratio: float) -> str:
    return f"{ratio * 100:g}%"


# Rounds: enough for a median on a noisy machine, few where a round is
# expensive. At 1 GiB and 100% dirty a round of uffd-sync or mprotect takes
# 262144 faults (2-5 s here, twice per round of collect: setup and check), and
# every compare collect reads 2 GiB. The whole file took 1m42s-4m23s at
# 1 GiB on 2 shared cores (docs/benchmarks.md).
ROUNDS = {0.001: 40, 0.01: 25, 0.1: 15, 1.0: 9}


def rounds_for(ratio: float) -> dict:
    return {"rounds": ROUNDS[ratio], "warmup_rounds": 1 if ratio < 0.1 else 0}


def seed(kind: str, ratio: float) -> int:
    """The same dirty sets for every backend at a given ratio, and across runs."""
    return RATIOS.index(ratio) * 1000 + {"collect": 1, "first-write": 2, "scan-wp": 3}.get(kind, 0)


def check_reported(backend: str, got: np.ndarray, written: np.ndarray) -> None:
    """collect's answer against the pages written: none missed; none extra if exact."""
    written = written.astype(np.uint64)
    missing = np.setdiff1d(written, got, assume_unique=True)
    assert missing.size == 0, (f"{backend} missed {missing.size} of {written.size} written pages, "
                               f"e.g. {missing[:8]}")
    if TRACKERS[backend].exact:
        assert got.size == written.size, (f"{backend} (exact) reported {got.size} pages for "
                                          f"{written.size} written, e.g. extra "
                                          f"{np.setdiff1d(got, written)[:8]}")


def info(benchmark, ba, kind: str, ratio: float, backend: str | None = None, **more) -> None:
    benchmark.extra_info.update(kind=kind, backend=backend, ratio=ratio,
                                dirty_pages=ba.dirty_count(ratio), arena_pages=ba.npages,
                                page_size=ba.page_size, **more)


def median(benchmark) -> float | None:
    """The median just measured (None with --benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None else None


# -- collect -------------------------------------------------------------------

@pytest.mark.parametrize("ratio", RATIOS, ids=pct)
@pytest.mark.parametrize("backend", BACKENDS)
def test_collect(benchmark, bench_arena, backend, ratio):
    require_backend(backend)
    ba = bench_arena
    tracker = ba.track(backend)
    d = ba.dirty_count(ratio)
    rng = np.random.default_rng(seed("collect", ratio))
    last: dict = {}
    state = {"clean": False}

    def setup():
        if not state["clean"]:  # once: every timed collect leaves a clean epoch behind
            tracker.collect()
            state["clean"] = True
        idx = ba.dirty_set(rng, d)
        ba.write(idx)
        return (idx,), {}

    def timed(idx):
        last["got"] = tracker.collect()

    def teardown(idx):
        check_reported(backend, last.pop("got"), idx)

    benchmark.group = f"collect-{pct(ratio)}"
    info(benchmark, ba, "collect", ratio, backend)
    benchmark.pedantic(timed, setup=setup, teardown=teardown, **rounds_for(ratio))
    if "got" in last:  # --benchmark-disable runs no teardown
        got = last.pop("got")
        assert got.size >= d, f"{backend} reported {got.size} pages for {d} written"


@pytest.mark.parametrize("ratio", RATIOS, ids=pct)
def test_floor_memcpy(benchmark, bench_arena, copy_buffer, ratio):
    """A copy of the D dirty pages into a buffer that is already resident."""
    ba = bench_arena
    ba.untrack()
    d = ba.dirty_count(ratio)
    rng = np.random.default_rng(seed("collect", ratio))
    out = copy_buffer[:d]

    def setup():
        return (ba.dirty_set(rng, d),), {}

    def timed(idx):
        # mode="clip": with the default "raise", numpy fills a temporary and
        # copies it into out, which made this floor 2-3x slower than a copy
        # (the indices are in range, so clip changes nothing else)
        np.take(ba.pages, idx, axis=0, out=out, mode="clip")

    def teardown(idx):
        assert np.array_equal(out[:, 0], ba.pages[idx, 0]), "the copy did not copy"

    benchmark.group = f"collect-{pct(ratio)}"
    info(benchmark, ba, "memcpy", ratio)
    benchmark.pedantic(timed, setup=setup, teardown=teardown, **rounds_for(ratio))


@pytest.mark.parametrize("ratio", RATIOS, ids=pct)
def test_floor_scan(benchmark, bench_arena, ratio):
    """A bare PAGEMAP_SCAN (no re-protect) of the whole arena for PAGE_IS_WRITTEN.

    Nothing tracks the arena, so no page carries a uffd-wp bit and every
    resident page counts as written: the call returns N (one run). It is the
    page-table walk alone, the same at every ratio; it sits in each group to
    give each its own same-run floor."""
    require_pagemap_scan()
    ba = bench_arena
    ba.untrack()
    res: dict = {}

    def timed():
        res["n"] = _core.pagemap_scan_count(ba.arena.address, ba.arena.nbytes, PAGE_IS_WRITTEN)

    benchmark.group = f"collect-{pct(ratio)}"
    info(benchmark, ba, "scan", ratio)
    benchmark.pedantic(timed, rounds=max(ROUNDS[ratio], 15), warmup_rounds=1)
    assert res["n"] == ba.npages, f"bare scan of a resident, untracked arena returned {res['n']}"
    benchmark.extra_info["scan_returned"] = res["n"]


@pytest.mark.parametrize("ratio", RATIOS, ids=pct)
def test_floor_scan_wp(benchmark, bench_arena, ratio):
    """The bare scan again, of the arena under uffd-async with D pages written:
    it walks what uffd-async's collect walks, asks what collect asks
    (category_mask = PAGE_IS_WRITTEN, which the kernel answers from the uffd-wp
    bit alone) and lists the D pages, without re-protecting them.
    collect(uffd-async) / this = the price of the re-protect."""
    require_pagemap_scan()
    require_backend("uffd-async")
    ba = bench_arena
    tracker = ba.track("uffd-async")
    d = ba.dirty_count(ratio)
    rng = np.random.default_rng(seed("collect", ratio))
    res: dict = {}

    def setup():
        tracker.collect()
        ba.write(ba.dirty_set(rng, d))

    def timed():
        res["n"] = _core.pagemap_scan_count(ba.arena.address, ba.arena.nbytes, PAGE_IS_WRITTEN)

    def teardown():
        assert res.pop("n") == d, "the scan did not list the D written pages"

    benchmark.group = f"collect-{pct(ratio)}"
    info(benchmark, ba, "scan-wp", ratio, "uffd-async")
    benchmark.pedantic(timed, setup=setup, teardown=teardown, **rounds_for(ratio))
    tracker.collect()


# -- first write ---------------------------------------------------------------

class WrittenCheck:
    """Checks, after a round, that its write changed exactly the bytes meant.

    It reads the arena only after the timed call, and the same way for the
    tracked and the untracked write, so that neither starts its round with the
    pages it writes warmer in the caches and TLB than the other."""

    def __init__(self, ba) -> None:
        self.ba = ba
        self.expect = ba.pages[:, 0].copy()

    def __call__(self, idx: np.ndarray) -> None:
        self.expect[idx] += np.uint8(1)
        assert np.array_equal(self.ba.pages[idx, 0], self.expect[idx]), "the round wrote nothing"


@pytest.mark.parametrize("ratio", RATIOS, ids=pct)
def test_first_write_baseline(benchmark, bench_arena, same_run, ratio):
    """The write of test_first_write with no tracker: every page resident and writable."""
    ba = bench_arena
    ba.untrack()
    d = ba.dirty_count(ratio)
    rng = np.random.default_rng(seed("first-write", ratio))
    written = WrittenCheck(ba)

    def setup():
        return (ba.dirty_set(rng, d),), {}

    benchmark.group = f"first-write-{pct(ratio)}"
    info(benchmark, ba, "first-write-baseline", ratio)
    benchmark.pedantic(ba.write, setup=setup, teardown=written, **rounds_for(ratio))
    same_run[("first-write-baseline", ratio)] = median(benchmark)


@pytest.mark.parametrize("ratio", RATIOS, ids=pct)
@pytest.mark.parametrize("backend", BACKENDS)
def test_first_write(benchmark, bench_arena, same_run, backend, ratio):
    """One byte written to each of D pages right after collect re-armed the tracker."""
    require_backend(backend)
    ba = bench_arena
    tracker = ba.track(backend)
    d = ba.dirty_count(ratio)
    rng = np.random.default_rng(seed("first-write", ratio))
    state = {"armed": False, "checked": None}
    written = WrittenCheck(ba)

    def setup():
        if not state["armed"]:
            tracker.collect()
        state["armed"] = False
        return (ba.dirty_set(rng, d),), {}

    def teardown(idx):
        # the collect that checks this round's writes also re-arms for the next
        check_reported(backend, tracker.collect(), idx)
        written(idx)
        state["armed"] = True
        state["checked"] = idx

    benchmark.group = f"first-write-{pct(ratio)}"
    info(benchmark, ba, "first-write", ratio, backend)
    benchmark.pedantic(ba.write, setup=setup, teardown=teardown, **rounds_for(ratio))
    if state["checked"] is None:  # --benchmark-disable runs no teardown
        assert tracker.collect().size >= d, f"{backend} saw none of the {d} pages written"
    base = same_run.get(("first-write-baseline", ratio))
    tracked = median(benchmark)
    if base is not None and tracked is not None:
        benchmark.extra_info["baseline_median_s"] = base
        benchmark.extra_info["per_page_overhead_s"] = (tracked - base) / d
