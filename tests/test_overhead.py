"""The overhead account (memckpt.checkpoint.stats, `memckpt show --overhead`):
exact on epochs whose timings are known, and consistent with a real run."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

import memckpt
from memckpt.checkpoint.stats import account, runs, stats_of
from memckpt.cli.app import main
from memckpt.epoch import EpochInfo
from memckpt.tuning import expected_lost_work


def ep(n: int, call_start: float, *, wait: float = 0.0, pause: float = 0.01, call: float = 0.02,
       total: float = 0.5, nbytes: int = 1000, kind: str = "incremental") -> EpochInfo:
    """An epoch whose checkpoint() started at ``call_start`` (Unix s): it waited
    ``wait``, paused ``pause``, returned after ``call`` and was durable ``total``
    after its pause began."""
    created = call_start + wait + total
    return EpochInfo(epoch=n, parent=n - 1 if n > 1 else None, kind=kind, pages_dirty=1,
                     pages_stored=1, bytes_on_disk=nbytes, pause_s=pause, total_s=total,
                     created=created, call_s=call, extra={"wait_s": wait})


def test_account_of_known_timings() -> None:
    # calls at 0, 10, 20, 30; epoch 3 waited 0.2 s (its call lasted 0.25 s)
    es = [ep(1, 1000.0, kind="full", total=1.0), ep(2, 1010.0),
          ep(3, 1020.0, wait=0.2, call=0.25), ep(4, 1030.0)]
    a = account(es, interval=10.0, mtbf=3600.0)
    wall = es[-1].created - 1000.0  # 30.5
    assert a.wall_s == pytest.approx(wall)
    assert a.call_total_s == pytest.approx(0.02 * 3 + 0.25)
    assert a.call_fraction == pytest.approx(0.31 / wall)
    assert a.wait_fraction == pytest.approx(0.2 / wall)
    assert a.pause_fraction == pytest.approx(0.04 / wall)
    assert a.overhead_fraction == a.call_fraction and a.tracking_fraction is None
    assert a.pause_p50_s == pytest.approx(0.01) and a.pause_max_s == pytest.approx(0.01)
    # the program ran from each call's return to the next call
    assert a.interval_achieved_s == pytest.approx(10 - 0.02)
    assert a.interval_ratio == pytest.approx((10 - 0.02) / 10)
    assert a.checkpoint_cost_s == pytest.approx(0.5)  # the increments' median total_s
    assert a.bytes_on_disk == 4000
    assert a.write_bytes_per_s == pytest.approx(4000 / 2.5)
    assert a.lost_work_model_s == pytest.approx(expected_lost_work(10 - 0.02, 0.5, 3600.0))
    # the age of the newest durable capture, from the first durable (1001) to the last
    # (1030.5): 1 -> 10.5 until 1010.5, 0.5 -> 10.7 until 1020.7 (epoch 3 paused at
    # 1020.2 after its wait), 0.5 -> 10.3 until 1030.5
    assert a.lost_work_worst_s == pytest.approx(10.7)
    assert a.lost_work_mean_s == pytest.approx((5.75 * 9.5 + 5.6 * 10.2 + 5.4 * 9.8) / 29.5)


def test_tracking_slowdown_joins_the_overhead() -> None:
    es = [ep(1, 0.0 + 1e6), ep(2, 10.0 + 1e6)]
    a = account(es, tracking_slowdown=0.1)
    work = a.wall_s - a.call_total_s
    assert a.tracking_fraction == pytest.approx(work * 0.1 / 1.1 / a.wall_s)
    assert a.overhead_fraction == pytest.approx(a.call_fraction + a.tracking_fraction)


def test_runs_split_at_long_gaps() -> None:
    es = [ep(i, 1e6 + 10 * i) for i in range(1, 6)] + [ep(i, 2e6 + 10 * i) for i in range(6, 9)]
    rs = runs(es)
    assert [[e.epoch for e in r] for r in rs] == [[1, 2, 3, 4, 5], [6, 7, 8]]
    with pytest.raises(ValueError, match="no epochs"):
        account([])


def test_a_real_run_and_the_cli_agree(tmp_path, capsys) -> None:
    arena = memckpt.Arena(64 * 4096)
    x = arena.array("x", (64, 512))
    with memckpt.Checkpointer(arena, tmp_path / "s", interval=0.01) as ck:
        for i in range(40):
            x[i % 64] = i
            time.sleep(0.002)
            ck.maybe_checkpoint()
        ck.wait()
        live = stats_of(ck)
        n = ck.head
    infos = memckpt.Store(tmp_path / "s").epochs()
    assert live.epochs == n == len(infos)
    assert live.call_total_s == pytest.approx(sum(e.call_s for e in infos))
    assert live.pause_total_s == pytest.approx(sum(e.pause_s for e in infos))
    assert 0 < live.call_fraction < 1 and live.interval_target_s == 0.01
    assert live.interval_achieved_s >= 0.01 * 0.9  # maybe_checkpoint waits the interval out
    assert main(["show", str(tmp_path / "s"), "--overhead", "--json", "--mtbf", "1h"]) == 0
    rep = json.loads(capsys.readouterr().out)["overhead"]
    for k in ("epochs", "call_total_s", "pause_p99_s", "bytes_on_disk", "interval_achieved_s"):
        assert rep[k] == pytest.approx(getattr(live, k)), k
    assert rep["lost_work_model_s"] is not None
    assert main(["show", str(tmp_path / "s"), "--overhead"]) == 0
    out = capsys.readouterr().out
    assert "waiting (backpressure)" in out and "pause p50" in out
    assert main(["show", str(tmp_path / "s"), "2"]) == 0  # the epoch view is still there
    assert "epoch 2 of" in capsys.readouterr().out
    del x
    arena.close()


def test_checkpointer_stats_counts_its_own_epochs(tmp_path) -> None:
    """Checkpointer.stats(): the account of the epochs this checkpointer
    wrote, not of those an earlier one left in the same store."""
    with memckpt.Arena(64 * 4096) as arena:
        x = arena.array("x", 64 * 4096, np.uint8)
        with memckpt.Checkpointer(arena, tmp_path / "s") as ck:
            for i in range(3):
                x[i * 4096] = i + 1
                ck.checkpoint()
        with memckpt.Checkpointer(arena, tmp_path / "s") as ck:
            for i in range(5):
                x[i * 4096] = i + 7
                ck.checkpoint().result()
            st = ck.stats()
        del x
    d = st.to_dict()
    assert d["epochs"] == 5 and d["first_epoch"] == 4 and d["last_epoch"] == 8, d
