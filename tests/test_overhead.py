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
from _fake_clock import fake_clock


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


# -- the persist interference: the program's steps slower while an epoch persists ----------

def steps(nf: int, fw: float, fc: float, ni: int, iw: float, ic: float,
          na: int = 0, aw: float = 0.0, ac: float = 0.0) -> dict[str, float]:
    return {"flight_steps": nf, "flight_wall_s": fw, "flight_cpu_s": fc,
            "idle_steps": ni, "idle_wall_s": iw, "idle_cpu_s": ic,
            "after_steps": na, "after_wall_s": aw, "after_cpu_s": ac}


def test_interference_from_the_step_records() -> None:
    """The off-CPU time of the steps run while an epoch persisted and in the
    catch-up after it, beyond what the steady steps spent off-CPU per second
    of their CPU (checkpoint/steps.py). The first epoch's record is of steps
    before the run's wall time: left out."""
    es = [ep(1, 1e6), ep(2, 1e6 + 10), ep(3, 1e6 + 20)]
    es[0].extra["steps"] = steps(50, 99.0, 1.0, 50, 99.0, 1.0)  # before the wall time
    # epoch 2's: 3 in flight, 0.9 s wall, 0.3 s CPU; 6 steady, 1.2 s wall, 0.6 s CPU;
    # 2 catching up, 0.3 s wall, 0.2 s CPU
    es[1].extra["steps"] = steps(3, 0.9, 0.3, 6, 1.2, 0.6, 2, 0.3, 0.2)
    # epoch 3's (written before the catch-up keys: none): 2 in flight, 0.7 s wall,
    # 0.2 s CPU; 4 steady, 1.0 s wall, 0.5 s CPU
    rec = steps(2, 0.7, 0.2, 4, 1.0, 0.5)
    for k in ("after_steps", "after_wall_s", "after_cpu_s"):
        del rec[k]
    es[2].extra["steps"] = rec
    a = account(es, tracking_slowdown=0.1)
    per_cpu = (1.2 - 0.6 + 1.0 - 0.5) / (0.6 + 0.5)  # steady: off-CPU s per CPU s = 1.0
    off = (0.9 - 0.3) + (0.3 - 0.2) + (0.7 - 0.2)    # in flight and catching up: 1.2
    want = off - per_cpu * (0.3 + 0.2 + 0.2)         # 1.2 - 0.7 = 0.5
    assert a.interference_s == pytest.approx(want) == pytest.approx(0.5)
    assert a.interference_fraction == pytest.approx(0.5 / a.wall_s)
    assert (a.flight_steps, a.after_steps, a.idle_steps) == (5, 2, 10)
    # the tracking term: the tracker's slowdown of the steps' time, which the
    # interference is not part of
    between = a.wall_s - a.call_total_s - 0.5
    assert a.tracking_fraction == pytest.approx(between * 0.1 / 1.1 / a.wall_s)
    assert a.overhead_fraction == pytest.approx(
        a.call_fraction + a.tracking_fraction + 0.5 / a.wall_s)
    assert a.to_dict()["interference_s"] == pytest.approx(0.5)


def test_interference_needs_both_sides_and_sound_records() -> None:
    es = [ep(1, 1e6), ep(2, 1e6 + 10), ep(3, 1e6 + 20)]
    a = account(es)  # explicit checkpoint() calls: no steps recorded
    assert a.interference_s is None and a.interference_fraction is None
    assert a.overhead_fraction == pytest.approx(a.call_fraction)
    es[1].extra["steps"] = steps(4, 1.0, 0.5, 0, 0.0, 0.0, 2, 0.2, 0.1)  # no steady step
    a = account(es)
    assert a.interference_s is None and (a.flight_steps, a.after_steps, a.idle_steps) == (4, 2, 0)
    es[2].extra["steps"] = steps(1, 0.3, 0.1, 3, 0.6, 0.3)
    # now a steady side: 1 s per CPU s; (0.5 + 0.1 + 0.2) - 1.0 * (0.5 + 0.1 + 0.1)
    assert account(es).interference_s == pytest.approx(0.1)
    es[2].extra["steps"] = {**steps(1, 0.3, 0.1, 3, 0.6, 0.3), "idle_cpu_s": "x"}  # damaged
    assert account(es).interference_s is None and account(es).idle_steps == 0
    # too few steady steps to be a baseline: their CPU under a quarter of the others'
    from memckpt.checkpoint.stats import STEADY_SHARE
    es[2].extra["steps"] = steps(1, 0.3, 0.1, 1, 0.3, 0.17)  # 0.17 < 0.25 * 0.7
    assert STEADY_SHARE == 0.25 and account(es).interference_s is None
    assert account(es).idle_steps == 1
    es[2].extra["steps"] = steps(1, 0.3, 0.1, 1, 0.36, 0.18)  # 0.18 >= 0.25 * 0.7: 1 s per s
    assert account(es).interference_s == pytest.approx(0.8 - 0.7)


def test_with_no_steady_step_the_untracked_rounds_are_the_baseline() -> None:
    """An interval too short for a steady step (every step in flight or
    catching up): the untracked rounds' off-CPU time per CPU second, warm-up
    included (checkpoint/tracking.py), stands in, from MIN_SEGMENTS rounds on;
    steady steps, where there are enough, come first."""
    from memckpt.checkpoint.stats import baseline
    from memckpt.checkpoint.tracking import MIN_SEGMENTS
    es = [ep(i, 1e6 + 10 * i) for i in range(1, 6)]
    # each: 3 in flight (0.9 s wall, 0.3 s CPU), 2 catching up (0.3 s, 0.2 s), no steady
    # step; a round of 2 timed steps, 0.5 s of wall for 0.4 s of CPU (0.1 s of it warm-up)
    rnd = {"base_steps": 2, "base_wall_s": 0.5, "base_cpu_s": 0.3, "base_round_cpu_s": 0.4}
    for e in es:
        e.extra["steps"] = {**steps(3, 0.9, 0.3, 0, 0.0, 0.0, 2, 0.3, 0.2), **rnd}
    # the first epoch's record is left out: 4 rounds; 0.25 s off-CPU per CPU s
    assert MIN_SEGMENTS <= 4
    a = account(es)
    want = 4 * ((0.9 - 0.3) + (0.3 - 0.2)) - (0.1 / 0.4) * 4 * (0.3 + 0.2)
    assert a.interference_s == pytest.approx(want) == pytest.approx(2.3)
    assert a.interference_from == "rounds" and a.idle_steps == 0
    assert a.to_dict()["interference_from"] == "rounds"
    # fewer rounds than MIN_SEGMENTS say nothing
    for e in es[MIN_SEGMENTS:]:
        e.extra["steps"] = steps(3, 0.9, 0.3, 0, 0.0, 0.0, 2, 0.3, 0.2)
    assert account(es).interference_s is None and account(es).interference_from is None
    # records of before the rounds' whole CPU was kept: no rounds' rate
    old = {k: v for k, v in rnd.items() if k != "base_round_cpu_s"}
    for e in es:
        e.extra["steps"] = {**steps(3, 0.9, 0.3, 0, 0.0, 0.0, 2, 0.3, 0.2), **old}
    assert account(es).interference_s is None
    # steady steps enough for a baseline: theirs (1 s off-CPU per CPU s), not the rounds'
    recs = [{**steps(3, 0.9, 0.3, 4, 0.8, 0.4, 2, 0.3, 0.2), **rnd} for _ in range(4)]
    assert baseline(recs, 4 * 0.5) == (pytest.approx(1.0), "steady")
    assert baseline(recs[:0], 0.0) == (None, None)


def test_the_step_clock_splits_steps_by_the_epoch_in_flight(monkeypatch) -> None:
    """StepClock, on a clock the test moves: steps before the first checkpoint
    are not counted; a step that began before the epoch was durable is in
    flight; after it, idle; take() hands over the sums once."""
    from memckpt.checkpoint import steps as mod
    now = fake_clock(monkeypatch, mod)

    def at(wall: float, cpu: float) -> None:
        now["wall"], now["cpu"] = wall, cpu

    c = mod.StepClock()
    c.boundary()
    at(1.0, 0.5)
    c.boundary()  # a step before any checkpoint: nothing to compare with
    assert c.take() is None
    at(1.2, 0.6)
    c.launched()  # checkpoint() returns: the epoch persists from here
    at(2.2, 1.0)
    c.boundary()  # 1.0 s wall, 0.4 CPU, in flight
    at(2.5, 1.1)
    c.durable()  # in flight for 1.3 s: catching up until 3.8
    at(3.2, 1.5)
    c.boundary()  # began at 2.2, before durable at 2.5: in flight (1.0, 0.5)
    at(4.0, 2.2)
    c.boundary()  # began at 3.2, within 1.3 s of durable: catching up (0.8, 0.7)
    at(4.5, 2.6)
    c.boundary()  # steady (0.5, 0.4)
    at(5.0, 3.0)
    c.boundary()  # steady (0.5, 0.4)
    assert c.peek() == c.take() == pytest.approx(steps(2, 2.0, 0.9, 2, 1.0, 0.8, 1, 0.8, 0.7))
    assert c.take() is None and c.peek() is None
    # a short flight: the catch-up lasts SETTLE_S all the same
    at(10.0, 5.0)
    c.launched()
    at(10.05, 5.04)
    c.boundary()  # in flight
    c.durable()   # after 0.05 s
    at(10.05 + mod.SETTLE_S - 0.01, 5.1)
    c.boundary()  # began at 10.05, within SETTLE_S of durable: catching up
    at(10.05 + mod.SETTLE_S + 0.02, 5.12)
    c.boundary()  # began within SETTLE_S too
    at(10.05 + mod.SETTLE_S + 0.05, 5.15)
    c.boundary()  # began after it: steady
    rec = c.take()
    assert (rec["flight_steps"], rec["after_steps"], rec["idle_steps"]) == (1, 2, 1)


def test_a_loop_records_its_steps_in_the_epochs(tmp_path, capsys) -> None:
    """A maybe_checkpoint() loop: every epoch but the first carries the steps
    since the checkpoint before (all of them counted once), and the account
    and `show --overhead` report the interference term."""
    arena = memckpt.Arena(16 * 4096)
    x = arena.array("x", (16, 512))
    n = 60
    with memckpt.Checkpointer(arena, tmp_path / "s", interval=0.005) as ck:
        for i in range(n):
            x[i % 16] = i
            time.sleep(0.001)
            ck.maybe_checkpoint()
        ck.wait()
        tail = ck._schedule.steps.peek() or steps(0, 0, 0, 0, 0, 0)
        live = ck.stats()
    infos = memckpt.Store(tmp_path / "s").epochs()
    assert len(infos) >= 3 and "steps" not in infos[0].extra
    recs = [e.extra["steps"] for e in infos[1:]]
    kinds = ("flight_steps", "after_steps", "idle_steps")
    counted = sum(r[k] for r in recs for k in kinds)
    # the first maybe_checkpoint() checkpoints: every later call ends a counted step
    assert counted + sum(tail[k] for k in kinds) == n - 1
    for r in recs:
        assert r["flight_wall_s"] >= r["flight_cpu_s"] >= 0 and r["idle_wall_s"] >= 0
    # stats() of the live checkpointer adds the steps since its last epoch
    assert live.flight_steps == sum(r["flight_steps"] for r in recs) + tail["flight_steps"]
    assert live.idle_steps == sum(r["idle_steps"] for r in recs) + tail["idle_steps"]
    assert main(["show", str(tmp_path / "s"), "--overhead", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)["overhead"]
    for k in ("interference_s", "interference_fraction", "flight_steps", "after_steps",
              "idle_steps"):
        assert k in rep, k
    assert rep["flight_steps"] == sum(r["flight_steps"] for r in recs)
    assert rep["idle_steps"] == sum(r["idle_steps"] for r in recs)
    want = account(infos).interference_s
    assert rep["interference_s"] == (None if want is None else pytest.approx(want))
    assert main(["show", str(tmp_path / "s"), "--overhead"]) == 0
    assert "steps slowed while persisting" in capsys.readouterr().out
    del x
    arena.close()
