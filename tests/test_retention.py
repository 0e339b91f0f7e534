"""keep_last for a dense writer (issue 12): a program that writes every page
every step makes one long chain of full-size increments, which prune used
to keep whole ("keeps all of 1-17"). Checkpointer(keep_last=3) rebases the
oldest kept epoch after each commit, so the store holds about four full
copies of the arena, and a SIGKILL at any instant (in a commit, in the
rebase's compaction, in the prune) leaves the last committed epoch
restorable, bit for bit.

More trials: ``pytest -m slow tests/test_retention.py`` (300 kills)."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import memckpt

sys.path.insert(0, str(Path(__file__).parent))
from _dense_worker import NPAGES, content  # noqa: E402

WORKER = Path(__file__).with_name("_dense_worker.py")
PS = memckpt.features().page_size
ARENA = NPAGES * PS


def run_worker(store: Path, steps: int, mode: str = "copy") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(store), str(steps), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_latest(store: Path) -> int:
    """The store's latest epoch restores to its step's content; its step."""
    st = memckpt.Store(store)
    latest = st.latest()
    assert latest is not None, "no committed epoch"
    step = int(st.info(latest).label)
    with memckpt.restore(st, latest) as got:
        np.testing.assert_array_equal(got.arrays()["x"], content(step, PS),
                                      err_msg=f"epoch {latest} (step {step})")
    return step


@pytest.mark.parametrize("mode", ["copy", "sync"])
def test_keep_last_bounds_a_dense_writers_disk(mode, tmp_path):
    p = run_worker(tmp_path / "s", 200, mode)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert lines[-2] == "step 200 committed 200"
    peak = int(lines[-1].split()[1])
    # at most keep_last=3 epochs plus the one being rebased, each a full copy
    # of the (incompressible) arena, plus manifests and indexes
    assert peak <= 4 * ARENA + 64 * 1024, f"peak {peak} B, {peak / ARENA:.2f} arenas"
    st = memckpt.Store(tmp_path / "s")
    assert st.epoch_numbers() == [198, 199, 200]
    assert st.info(198).kind == "full"  # rebased: restorable alone
    st.verify()
    for e in (198, 199, 200):
        with memckpt.restore(st, e) as got:
            np.testing.assert_array_equal(got.arrays()["x"], content(e, PS))


def kill_trials(tmp_path: Path, trials: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    steps_seen = []
    for t in range(trials):
        store = tmp_path / f"s{t}"
        p = run_worker(store, 10_000)
        # wait for the commit of step 1 (or, in two trials of three, of step
        # 11 or 21: well past the start, where every commit rebases and
        # prunes, whatever the machine's speed), then kill at a random instant
        after = 1 + 10 * (t % 3)
        for s in range(1, after + 1):
            line = p.stdout.readline()
            assert line.startswith(f"step {s} committed"), (line, p.stderr.read())
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
        p.stderr.close()
        steps_seen.append(check_latest(store))
        # step `after` was durable before the kill: the store still has it (or later)
        assert steps_seen[-1] >= after, (t, after, steps_seen[-1])
        # and the store goes on: a new writer continues over what was left
        with memckpt.Arena(ARENA) as arena:
            x = arena.array("x", ARENA // 8, np.uint64)
            with memckpt.Checkpointer(arena, store, keep_last=3) as ck:
                x[:] = content(10**6, PS)
                ck.checkpoint("1000000").result()
            del x
        assert check_latest(store) == 10**6
        assert len(memckpt.Store(store).epoch_numbers()) <= 3
    return steps_seen


def test_sigkill_at_random_instants_leaves_the_last_epoch_restorable(tmp_path):
    seen = kill_trials(tmp_path, 30, seed=12)
    assert max(seen) > 10, seen  # the kills landed well past the start


@pytest.mark.slow
def test_sigkill_many(tmp_path):
    kill_trials(tmp_path, 300, seed=1212)
