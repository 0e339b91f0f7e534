"""History costs (issue 10, item 12): what a deep chain costs begin() and
verify(), for the store code of this checkout beside the store code of an
earlier revision (BEFORE, loaded from git into the same process), on the same
store, in one run.

The store: a 16-page arena, one full epoch, then DEPTH-1 incremental epochs
of one page each, every one the parent of the next (no full_every: the chain
is DEPTH deep). It is made with Store.begin/add_pages/commit directly, with
fsync and fdatasync turned into no-ops while it is built (durability is not
what is measured; the store is deleted afterwards).

Measured, with a new Store object per code version (nothing cached):
- begin(): the next incremental epoch on the latest one, begun and aborted,
  ROUNDS times after one warm-up (a Checkpointer's Store is warm); median.
  The earlier code re-read every manifest once the chain outgrew its
  4,096-manifest cache.
- verify(VERIFY_DEPTH): the chain of that epoch, once (a fresh Store). The
  earlier code walked the whole chain again for every epoch it verified.
- verify(latest), the whole DEPTH-deep chain: this checkout only (the earlier
  code's quadratic walk takes minutes there).

From a checkout:

    .venv/bin/python bench/probe_history.py     # DEPTH=5000 VERIFY_DEPTH=1000 ROUNDS=7
                                                # BEFORE=225e82e STORE=/tmp/memckpt-probe-history
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from memckpt.store import Store

DEPTH = int(os.environ.get("DEPTH", "5000"))
VERIFY_DEPTH = int(os.environ.get("VERIFY_DEPTH", "1000"))
ROUNDS = int(os.environ.get("ROUNDS", "7"))
BEFORE = os.environ.get("BEFORE", "225e82e")  # the branch point of issue 10's chain work
STORE = Path(os.environ.get("STORE", "/tmp/memckpt-probe-history"))
ROOT = Path(__file__).resolve().parent.parent
NPAGES = 16


def load_before(rev: str) -> Any:
    """The Store class of `rev` (its store/format.py and store/local.py),
    importable beside this checkout's: both run on the same memckpt core."""
    def src(path: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True,
                              capture_output=True, text=True).stdout

    mods = {}
    for short, path in (("format", "src/memckpt/store/format.py"),
                        ("local", "src/memckpt/store/local.py")):
        name = f"memckpt.store._before_{short}"
        mod = types.ModuleType(name)
        mod.__package__ = "memckpt.store"
        sys.modules[name] = mod
        code = src(path).replace("from . import format as fmt", "from . import _before_format as fmt")
        exec(compile(code, f"{rev}:{path}", "exec"), mod.__dict__)
        mods[short] = mod
    return mods["local"].Store


def build(path: Path, depth: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    saved = os.fsync, os.fdatasync
    os.fsync = os.fdatasync = lambda fd: None  # type: ignore[assignment]
    try:
        s = Store(path, create=True)
        ps = s.page_size
        state = np.zeros((NPAGES, ps), np.uint8)
        state[:, 0] = np.arange(1, NPAGES + 1)
        w = s.begin(kind="full", layout={}, npages=NPAGES)
        w.add_pages(np.arange(NPAGES, dtype=np.uint64), state)
        e = w.commit(pages_dirty=NPAGES, pause_s=0.0).epoch
        t0 = time.perf_counter()
        for i in range(1, depth):
            p = i % NPAGES
            state[p, 1:9] = np.frombuffer(i.to_bytes(8, "little"), np.uint8)
            w = s.begin(kind="incremental", parent=e, layout={}, npages=NPAGES)
            w.add_pages(np.array([p], np.uint64), state[p:p + 1])
            e = w.commit(pages_dirty=1, pause_s=0.0).epoch
            if i % 1000 == 0:
                print(f"  built {i} epochs ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        os.fsync, os.fdatasync = saved  # type: ignore[assignment]


def time_begin(cls: Any, path: Path, latest: int) -> float:
    s = cls(path)
    times = []
    for i in range(ROUNDS + 1):
        t = time.perf_counter()
        w = s.begin(kind="incremental", parent=latest, layout={}, npages=NPAGES)
        dt = time.perf_counter() - t
        w.abort()
        if i:  # the first one fills the caches, as a Checkpointer's first epoch did
            times.append(dt)
    return statistics.median(times)


def time_verify(cls: Any, path: Path, epoch: int) -> float:
    s = cls(path)
    t = time.perf_counter()
    s.verify(epoch)
    return time.perf_counter() - t


def main() -> None:
    print(f"building a chain of {DEPTH} epochs of a {NPAGES}-page arena in {STORE}", flush=True)
    build(STORE, DEPTH)
    latest = Store(STORE).latest()
    assert latest == DEPTH
    versions = {f"before ({BEFORE})": load_before(BEFORE), "after (this checkout)": Store}
    rows = {}
    for label, cls in versions.items():
        b = time_begin(cls, STORE, latest)
        v = time_verify(cls, STORE, VERIFY_DEPTH)
        rows[label] = (b, v)
        print(f"{label:28} begin() at depth {DEPTH}: {b * 1e3:8.1f} ms   "
              f"verify(epoch {VERIFY_DEPTH}): {v:7.2f} s", flush=True)
    (b0, v0), (b1, v1) = rows.values()
    print(f"ratio before/after: begin() {b0 / b1:.1f}x, verify({VERIFY_DEPTH}) {v0 / v1:.1f}x")
    v = time_verify(Store, STORE, latest)
    print(f"after: verify(epoch {latest}), the whole chain: {v:.2f} s")
    shutil.rmtree(STORE, ignore_errors=True)


if __name__ == "__main__":
    main()
