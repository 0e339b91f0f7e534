"""Resource hygiene: open/close cycles and long checkpoint runs leave no fd,
thread, child process, memory map or memory behind.

Each scenario runs in a fresh process (tests/_hygiene_probe.py): a warm-up,
a measurement, N more cycles, a second measurement, then everything closed
and a third. Counts must be exactly flat; memory may move within a small
slack (malloc and the interpreter keep some of what they free).

- 1,000 Arena open/close cycles;
- 1,000 DirtyTracker open/collect/close cycles per available backend;
- 1,000 Checkpointer open/checkpoint/close cycles, each on a new store, in
  every capture mode;
- 1,000 checkpoints (10,000 under ``-m slow``) through one Checkpointer on a
  64-page arena, full_every=100, pruned to the last 100 epochs every 100, in
  every capture mode (persist threads, fork children, copier threads);
- the same never pruned: the Store keeps the manifests it read in a cache
  (about 6.4 KiB each, 4,096 at most), so memory grows with the epochs in
  the store up to that bound, and
  this test bounds that growth per epoch (docs/reliability.md).

    pytest tests/test_hygiene.py -v -s          # prints the measurements
    pytest -m slow tests/test_hygiene.py -s     # the 10,000-checkpoint runs
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BACKENDS, require_backend
from memckpt.capture import MODES

HERE = Path(__file__).resolve().parent
CYCLES = 1000
SLOW_CHECKPOINTS = 10_000
RSS_SLACK_KIB = 3 * 1024
# two glibc malloc arenas (a heap and its guard each, see assert_flat) and a
# couple of numpy allocations that malloc serves with mmap
MAPS_SLACK = 6
#: the Store's manifest cache, per epoch it holds (measured: ~6.4 KiB)
CACHE_KIB_PER_EPOCH = 10


def probe(scenario: str, cycles: int, warmup: int, backend: str = "auto",
          mode: str = "copy") -> dict:
    p = subprocess.run([sys.executable, str(HERE / "_hygiene_probe.py"), scenario, str(cycles),
                        str(warmup), backend, mode], capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"\n{scenario} {backend} {mode} x{cycles} in {rep['seconds']} s: before {rep['before']}\n"
          f"  after {rep['after']}\n  closed {rep['closed']}")
    return rep


def assert_flat(rep: dict, *, rss_slack_kib: int = RSS_SLACK_KIB) -> None:
    b, a, c = rep["before"], rep["after"], rep["closed"]
    where = (f"{rep['scenario']} ({rep['backend']}, mode {rep['mode']}, {rep['cycles']} cycles): "
             f"before {b}, after {a}")
    for k in ("fds", "threads", "children"):
        assert a[k] == b[k], f"{k} leaked: {where}"
        assert c[k] <= b[k], f"{k} left after closing: {c}"
    assert a["children"] == 0, f"child processes left running: {where}"
    assert a["maps"] <= b["maps"] + MAPS_SLACK, f"memory maps leaked: {where}"
    assert a["rss_kib"] <= b["rss_kib"] + rss_slack_kib, f"RSS grew: {where}"
    # glibc gives threads malloc arenas that reserve 64 MiB of address space
    # each (not memory): a persist thread may be the first to need one after
    # the warm-up. Their number is bounded (8 per CPU); two are allowed here.
    assert a["vm_kib"] <= b["vm_kib"] + 4 * rss_slack_kib + 2 * 65536, \
        f"address space grew: {where}"


def test_arena_cycles():
    assert_flat(probe("arena", CYCLES, 100))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tracker_cycles(backend):
    require_backend(backend)
    assert_flat(probe("tracker", CYCLES, 100, backend))


@pytest.mark.parametrize("mode", MODES)
def test_checkpointer_cycles(mode):
    assert_flat(probe("checkpointer", CYCLES, 100, mode=mode))


@pytest.mark.parametrize("mode", MODES)
def test_checkpoints(mode):
    assert_flat(probe("checkpoints", CYCLES, 200, mode=mode))


def test_checkpoints_unpruned_grow_only_by_the_manifest_cache():
    rep = probe("checkpoints-unpruned", CYCLES, 200)
    assert_flat(rep, rss_slack_kib=RSS_SLACK_KIB + CACHE_KIB_PER_EPOCH * rep["cycles"])


@pytest.mark.slow
def test_checkpoints_long():
    assert_flat(probe("checkpoints", SLOW_CHECKPOINTS, 500))


@pytest.mark.slow
def test_checkpoints_unpruned_long():
    rep = probe("checkpoints-unpruned", SLOW_CHECKPOINTS, 500)
    assert_flat(rep, rss_slack_kib=RSS_SLACK_KIB + CACHE_KIB_PER_EPOCH * rep["cycles"])
