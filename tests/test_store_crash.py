"""Crash safety: a child process runs compact() (or commit, or prune) and is
SIGKILLed, at a random instant or deterministically before each file-system
operation in turn (or in the middle of a write). Afterwards the store opens,
sweeps, verifies, and every epoch still committed restores bit for bit; the
interrupted operation can then be run again to completion."""
from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from memckpt.store import Store
from memckpt.store import format as fmt

from _store_util import PS, build_chain, random_pages, read, write_epoch

NEPOCHS = 6
FS_OPS = ("pwrite", "pwritev", "write", "fsync", "fdatasync", "rename", "unlink", "link",
          "ftruncate")


def _build(path: Path, npages: int) -> dict[int, np.ndarray]:
    s = Store(path, create=True, page_size=PS)
    return build_chain(s, npages=npages, nepochs=NEPOCHS, seed=42)


def _build_two_full(path: Path, npages: int) -> dict[int, np.ndarray]:
    """Full epochs at 1 and 4, incrementals between: prune(keep_last=2) retires 1..3."""
    s = Store(path, create=True, page_size=PS)
    rng = np.random.default_rng(43)
    state = random_pages(rng, npages)
    expected = {}
    for e in range(1, NEPOCHS + 1):
        if e in (1, 4):
            write_epoch(s, state, None, kind="full")
        else:
            pages = rng.choice(npages, npages // 5, replace=False)
            state[pages] = random_pages(rng, len(pages))
            write_epoch(s, state, pages, parent=e - 1)
        expected[e] = state.copy()
    return expected


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("crash") / "base"
    return path, _build(path, 256)


@pytest.fixture(scope="module")
def base_two_full(tmp_path_factory):
    path = tmp_path_factory.mktemp("crash") / "base2"
    return path, _build_two_full(path, 256)


def _new_epoch_data(expected: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    state = expected[NEPOCHS].copy()
    pages = np.sort(rng.choice(len(state), 40, replace=False))
    state[pages] = random_pages(rng, len(pages))
    state[pages[:3]] = 0
    return state, pages


def action(name: str, expected: dict[int, np.ndarray]) -> Callable[[Store], None]:
    if name.startswith("compact"):
        first, last = (int(x) for x in name.split(":")[1].split("-"))
        return lambda s: s.compact(first, last)
    if name == "prune":
        return lambda s: s.prune(keep_last=2)
    if name == "commit":
        state, pages = _new_epoch_data(expected)

        def commit(s: Store) -> None:
            w = s.begin(kind="incremental", parent=NEPOCHS, layout={}, page_size=PS,
                        npages=len(state))
            w.add_pages(pages[:20], state[pages[:20]])
            w.add_pages(pages[20:], state[pages[20:]])
            w.commit(pages_dirty=len(pages), pause_s=0.0)
        return commit
    raise ValueError(name)


def _install_killer(kill_at: int, torn: bool) -> list[str]:
    """Patch os so that the kill_at-th file-system operation (0-based) SIGKILLs
    this process before it runs, or (torn) after writing half of its bytes."""
    seen: list[str] = []
    real = {n: getattr(os, n) for n in FS_OPS}

    def wrap(name):
        fn = real[name]

        def op(*args, **kwargs):
            if len(seen) == kill_at:
                if torn and name in ("pwrite", "pwritev", "write"):
                    if name == "pwritev":
                        fd, bufs, off = args[0], args[1], args[2]
                        data = b"".join(bytes(memoryview(b).cast("B")) for b in bufs)
                    elif name == "pwrite":
                        fd, data, off = args[0], bytes(memoryview(args[1]).cast("B")), args[2]
                    else:
                        fd, data, off = args[0], bytes(memoryview(args[1]).cast("B")), None
                    half = data[:len(data) // 2]
                    if off is None:
                        real["write"](fd, half)
                    else:
                        real["pwrite"](fd, half, off)
                os.kill(os.getpid(), signal.SIGKILL)
            seen.append(name)
            return fn(*args, **kwargs)
        return op

    for n in FS_OPS:
        setattr(os, n, wrap(n))
    return seen


def run_child(path: Path, act: Callable[[Store], None], *, kill_at: int | None = None,
              torn: bool = False, kill_after: float | None = None) -> tuple[int, float]:
    """Run act(Store(path)) in a forked child; return (wait status, seconds)."""
    sys.stdout.flush()
    sys.stderr.flush()
    # the child says when act begins, so that times (and kills) count from
    # there, not from a fork whose cost varies with the parent's size
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(ready_r)
            s = Store(path)
            if kill_at is not None:
                _install_killer(kill_at, torn)
            os.write(ready_w, b"r")
            act(s)
        except BaseException:
            traceback.print_exc()
            code = 3
        os._exit(code)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    t0 = time.perf_counter()
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return status, time.perf_counter() - t0


def fs_ops(path: Path, act: Callable[[Store], None]) -> list[str]:
    """The file-system operations act performs, in order."""
    s = Store(path)
    real = {n: getattr(os, n) for n in FS_OPS}
    try:
        seen = _install_killer(-1, False)
        act(s)
    finally:
        for n, fn in real.items():
            setattr(os, n, fn)
    return seen


def check_after_crash(path: Path, expected: dict[int, np.ndarray], name: str) -> set[int]:
    """The store opens, sweeps and verifies; every committed epoch is exact; no
    garbage is left; the interrupted operation then completes."""
    s = Store(path)
    s.verify()  # a reader, before anything is swept: the garbage does not confuse it
    s.sweep()
    s.verify()
    committed = {i.epoch for i in s.epochs()}
    want = dict(expected)
    if name == "commit":  # the new epoch, and its twin when the commit runs again below
        want[NEPOCHS + 1] = want[NEPOCHS + 2] = _new_epoch_data(expected)[0]
    for e in committed:
        assert np.array_equal(read(s, e), want[e]), f"epoch {e} after a crash in {name}"
    assert NEPOCHS in committed
    if name.startswith("compact"):
        first, last = (int(x) for x in name.split(":")[1].split("-"))
        assert set(range(1, first)) | set(range(last, NEPOCHS + 1)) <= committed
    elif name == "prune":
        assert {4, 5, 6} <= committed
    else:
        assert set(expected) <= committed
    referenced = set()
    for e in committed:
        m = s.manifest(e)
        referenced |= {m["files"]["idx"]["name"], m["files"]["pack"]["name"]}
    data = {n for n in os.listdir(path) if fmt.parse_data_name(n) or n.endswith(".tmp")}
    assert data == referenced, f"garbage left: {data - referenced}"
    # the operation, run again, completes and leaves a verified, exact store
    action(name, expected)(s)
    s.verify()
    for i in s.epochs():
        assert np.array_equal(read(s, i.epoch), want[i.epoch])
    return committed


RUNS = ["compact:1-6", "compact:2-5", "compact:3-6"]


@pytest.mark.parametrize("name", RUNS + ["commit", "prune"])
@pytest.mark.parametrize("torn", [False, True], ids=["before-op", "torn-write"])
def test_kill_at_every_fs_operation(base, base_two_full, tmp_path, name, torn):
    path, expected = base_two_full if name == "prune" else base
    probe = tmp_path / "probe"
    shutil.copytree(path, probe)
    ops = fs_ops(probe, action(name, expected))
    n = len(ops)
    assert n > 5
    outcomes = set()
    for k in range(n + 1):
        if torn and (k == n or ops[k] not in ("pwrite", "pwritev", "write")):
            continue
        trial = tmp_path / f"k{k}"
        shutil.copytree(path, trial)
        status, _ = run_child(trial, action(name, expected), kill_at=k, torn=torn)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert killed or (k == n and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0), status
        outcomes.add(frozenset(check_after_crash(trial, expected, name)))
        shutil.rmtree(trial)
    if not torn:  # torn writes all come before the commit point
        assert len(outcomes) >= 2, "the kills should land both before and after the commit point"


def _random_trials(base_path: Path, expected: dict[int, np.ndarray], tmp_path: Path,
                   trials: int, seed: int) -> None:
    rng = random.Random(seed)
    # how long each operation takes in a child, from fork to exit
    # (the fastest of three: a cold first run would make most kills land
    # after the child finished)
    span = {}
    for name in RUNS:
        for _ in range(3):
            probe = tmp_path / "probe"
            shutil.copytree(base_path, probe)
            status, dt = run_child(probe, action(name, expected))
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            span[name] = min(dt, span.get(name, dt))
            shutil.rmtree(probe)
    finished = killed = t = 0
    # at least `trials`, and more (up to 3x) until a third were killed mid-way:
    # probes a load spike (or a busy test session) slowed put the kills late,
    # and each child that finishes first shrinks its span for the next ones
    while t < trials or (killed < trials // 3 and t < 3 * trials):
        t += 1
        name = rng.choice(RUNS)
        trial = tmp_path / f"t{t}"
        shutil.copytree(base_path, trial)
        status, dt = run_child(trial, action(name, expected),
                               kill_after=rng.uniform(0, 1.2 * span[name]))
        if os.WIFSIGNALED(status):
            killed += 1
        else:
            assert os.WEXITSTATUS(status) == 0
            finished += 1
            # it ran to the end before its kill: a measure of the span now,
            # when a load spike made the probes above slow
            span[name] = min(span[name], dt)
        check_after_crash(trial, expected, name)
        shutil.rmtree(trial)
    assert killed >= trials // 3, f"only {killed} of {t} children were killed mid-way"


def test_compaction_killed_at_random_instants(base, tmp_path):
    path, expected = base
    _random_trials(path, expected, tmp_path, trials=50, seed=1)


@pytest.mark.slow
def test_compaction_killed_at_random_instants_bigger(tmp_path):
    path = tmp_path / "base"
    expected = _build(path, 4096)              # 16 MiB arena: kills land mid-write
    _random_trials(path, expected, tmp_path, trials=150, seed=2)
