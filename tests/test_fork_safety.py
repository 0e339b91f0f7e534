"""Fork safety (issue 10, items 3 and 4): a child of fork() never acts on the
parent's trackers, captures, lock, epoch files or checkpointer.

Each scenario runs in tests/_fork_worker.py, a fresh interpreter, so that the
child exits the way a program's child does (sys.exit, atexit, finalizers,
the interpreter's teardown): see that file for what each one does. The
subprocess timeout only catches hangs (a child stuck at exit, a checkpoint
that never returns); nothing here is timed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import memckpt
from memckpt import _core
from memckpt.errors import ForkDetached

from conftest import BACKENDS, require_backend

HERE = Path(__file__).resolve().parent
MODES = ["copy", "sync", "fork", "background"]
HANG_S = 240  # the worker's own limits are 60 s a wait; this is the backstop


def run_worker(**req: object) -> dict:
    try:
        p = subprocess.run([sys.executable, str(HERE / "_fork_worker.py"), json.dumps(req)],
                           capture_output=True, text=True, timeout=HANG_S, cwd=HERE)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{req}: hung (no answer in {HANG_S} s); stderr: {e.stderr!r}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    assert lines, f"{req}: no answer (exit {p.returncode}); stderr:\n{p.stderr[-3000:]}"
    out = json.loads(lines[-1])
    assert out["ok"], f"{req}: {out['why']}\nstderr:\n{p.stderr[-3000:]}"
    return out


def mode_for(backend: str, mode: str) -> None:
    if mode == "background" and backend != "uffd-sync":
        pytest.skip("mode 'background' runs on the uffd-sync tracker only")


# -- item 3: the child of a fork exits, closes, or is killed --------------------------------
@pytest.mark.parametrize("how", ["exit", "close", "kill"])
@pytest.mark.parametrize("mode", MODES)
def test_child_leaves_parent_epochs_exact(backend, mode, how):
    """A child forked while an epoch persists exits normally (finalizers run),
    closes the inherited Checkpointer, or is SIGKILLed: every epoch of the
    parent, before and after, restores bit for bit. Before: uffd-sync
    recorded pages_dirty=0 and restored old content, uffd-async's collect
    failed with EPERM, background mode's child hung at exit."""
    mode_for(backend, mode)
    out = run_worker(scenario="child", backend=backend, mode=mode, how=how)
    assert out["epochs"] == 6


@pytest.mark.parametrize("how", ["checkpoint", "with", "read", "own"])
def test_child_may_read_and_track_its_own(how):
    """In the child, the inherited Checkpointer refuses to checkpoint
    (ForkDetached naming the parent) and its tracker to collect; the child
    may leave a with block on it, read the store, and checkpoint its copy
    of the arena into a store of its own. The parent's epochs stay exact."""
    run_worker(scenario="child", backend=_any_backend(), mode="copy", how=how)


def _any_backend() -> str:
    for name in ("uffd-sync", "uffd-async", "mprotect"):
        if name in BACKENDS and next(t for t in memckpt.trackers() if t.name == name).available:
            return name
    return "compare"


# -- item 4: the store's writer lock ----------------------------------------------------------
@pytest.mark.parametrize("mode", ["copy", "fork", "background"])
def test_pool_made_during_persist_does_not_hold_the_lock(mode):
    """A fork-started multiprocessing.Pool made while a persist holds the
    store's lock: the next checkpoints go through while the Pool lives
    (before: StoreLocked "locked by pid ?" after 5 s each), and its workers
    may read the store but not checkpoint."""
    backend = "uffd-sync" if mode == "background" else _any_backend()
    if mode == "background":
        require_backend("uffd-sync")
    run_worker(scenario="pool", backend=backend, mode=mode)


@pytest.mark.parametrize("how", ["abort", "commit", "with", "del"])
def test_child_never_touches_the_parents_epoch_files(how):
    """An open EpochWriter inherited by a child that aborts it, tries to
    commit it, leaves a with block, or drops it at exit: the parent's files
    and lock file are as they were, the parent commits the epoch, and the
    lock is free afterwards (before: the child unlinked the pack)."""
    run_worker(scenario="writer", how=how)


# -- the C core's own guard, through the binding --------------------------------------------
def test_detached_tracker_refuses_with_echild(backend, tmp_path):
    """In a child, the core refuses collect (ECHILD) on the parent's tracker
    and close() frees only the child's copy: the parent still sees writes."""
    region = _core.Region(16 * 4096)
    t = _core.Tracker(region, _core.backend_lookup(backend))
    buf = np.frombuffer(region, np.uint8)
    t.collect()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # no Python teardown here: only the core's behaviour is tested
        code = 0
        try:
            assert t.detached and t.owner == os.getppid()
            try:
                t.collect()
                code = 2
            except OSError as e:
                code = 0 if e.errno == 10 and str(os.getppid()) in str(e) else 3  # ECHILD
            t.close()
            buf[4096] = 7  # the child's own copy, untracked now
        except BaseException:
            code = 4
        os.write(w, bytes([code]))
        os._exit(code)
    os.close(w)
    _, st = os.waitpid(pid, 0)
    code = os.read(r, 1)
    os.close(r)
    assert code == b"\x00" and os.WEXITSTATUS(st) == 0, f"child said {code!r}, status {st}"
    assert not t.detached
    buf[3 * 4096] = 1
    assert list(t.collect()) == [3]
    del buf
    t.close()
    region.close()


# -- the fuzz ---------------------------------------------------------------------------------
def fuzz_cases(seeds: int) -> list:
    cases = []
    for b in BACKENDS:
        for m in MODES:
            if m == "background" and b != "uffd-sync":
                continue
            cases += [pytest.param(b, m, s, id=f"{b}-{m}-{s}") for s in range(seeds)]
    return cases


@pytest.mark.parametrize("backend_name, mode, seed", fuzz_cases(1))
def test_fork_fuzz(backend_name, mode, seed):
    """Children by os.fork (from the main thread between epochs and while a
    persist runs, and from another thread during checkpoint()) and by
    fork-started Pools (whose own thread forks workers at random instants)
    exit normally, close the inherited Checkpointer, try to checkpoint,
    read the store, or are killed: every epoch of the parent restores bit
    for bit, and no checkpoint fails."""
    require_backend(backend_name)
    run_worker(scenario="fuzz", backend=backend_name, mode=mode, seed=seed, rounds=20)


@pytest.mark.slow
@pytest.mark.parametrize("backend_name, mode, seed", fuzz_cases(8))
def test_fork_fuzz_long(backend_name, mode, seed):
    require_backend(backend_name)
    run_worker(scenario="fuzz", backend=backend_name, mode=mode, seed=100 + seed, rounds=80)


def test_forkdetached_is_exported():
    assert memckpt.ForkDetached is ForkDetached
    assert issubclass(ForkDetached, memckpt.MemckptError)
