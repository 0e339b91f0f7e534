"""The tracking term measured on the run (checkpoint/tracking.py): untracked
rounds between checkpoints, paired in time with the run's steps. The logic
on injected step records and a clock the test moves; no timing assertions."""
from __future__ import annotations

import json

import pytest

import memckpt
from memckpt.checkpoint.stats import account
from memckpt.checkpoint.tracking import MIN_SEGMENTS, UntrackedRounds, estimate, measure_tracking
from memckpt.cli.app import main
from memckpt.epoch import EpochInfo
from _fake_clock import fake_clock


def rec(n: int, cpu: float, nb: int = 0, bcpu: float = 0.0, bwall: float = 0.0,
        ) -> dict[str, float]:
    """A step record: n steady steps of cpu CPU seconds in all (wall = cpu),
    and a round of nb untracked steps (bcpu CPU seconds, bwall wall)."""
    return {"flight_steps": 0, "flight_wall_s": 0.0, "flight_cpu_s": 0.0,
            "idle_steps": n, "idle_wall_s": cpu, "idle_cpu_s": cpu,
            "after_steps": 0, "after_wall_s": 0.0, "after_cpu_s": 0.0,
            "base_steps": nb, "base_wall_s": bwall, "base_cpu_s": bcpu}


def test_the_run_steps_against_the_untracked_steps_of_their_time() -> None:
    # 10 steps of 1.03 s each against rounds of 2 untracked steps of 1.0 s: 3% slower
    recs = [rec(10, 10.3, 2, 2.0, 2.1) for _ in range(5)]
    e = estimate(recs)
    assert e is not None
    assert e.slowdown == pytest.approx(0.03)
    assert e.low == pytest.approx(0.03) and e.high == pytest.approx(0.03)  # no spread
    assert (e.segments, e.run_steps, e.base_steps) == (5, 50, 10)
    assert e.base_wall_s == pytest.approx(5 * 2.1)


def test_pairing_in_time_keeps_a_load_change_out() -> None:
    """The machine slows down half-way (every step's CPU doubles, tracked or
    not): the estimate pairs each round with the run's steps of its segment,
    so it stays 3%; pooling the run's steps against all rounds would not."""
    fast = [rec(10, 10.3, 1, 1.0) for _ in range(4)]
    slow = [rec(30, 61.8, 1, 2.0) for _ in range(4)]  # 3x the steps, each twice as long
    e = estimate(fast + slow)
    assert e is not None and e.slowdown == pytest.approx(0.03)
    pooled = (4 * 10.3 + 4 * 61.8) / ((4 * 10 + 4 * 30) * (4 * 1.0 + 4 * 2.0) / 8) - 1
    assert pooled > 0.15  # the slow half weighs more in the run than in the rounds


def test_segments_run_from_one_round_to_the_next() -> None:
    # epochs without a round join the next segment; steps after the last round are out
    recs = [rec(5, 5.5), rec(5, 5.5, 1, 1.0),          # 10 steps at 1.1: +10%
            rec(10, 12.0, 1, 1.0),                     # +20%
            rec(4, 4.0), rec(6, 6.0, 2, 2.0),          # 0%
            rec(7, 70.0)]                              # no round after it
    e = estimate(recs)
    assert e is not None and e.segments == 3 and e.run_steps == 30
    assert e.slowdown == pytest.approx((11.0 + 12.0 + 10.0) / 30 - 1)
    assert e.low <= e.slowdown <= e.high and e.low < e.high
    assert e.low >= 0.0 - 1e-12 and e.high <= 0.2 + 1e-12  # within the segments' own range


def test_too_few_rounds_say_nothing() -> None:
    recs = [rec(10, 10.3, 2, 2.0)] * (MIN_SEGMENTS - 1) + [rec(10, 10.3)] * 5
    assert MIN_SEGMENTS == 3 and estimate(recs) is None
    assert estimate(recs + [rec(3, 3.0, 1, 1.0)]) is not None
    assert estimate([]) is None


def ep(n: int, t: float, steps: dict[str, float] | None = None, **extra: object) -> EpochInfo:
    e = EpochInfo(epoch=n, parent=n - 1 if n > 1 else None,
                  kind="full" if n == 1 else "incremental", pages_dirty=4, pages_stored=4,
                  bytes_on_disk=4096, pause_s=0.01, total_s=0.05, created=t + 0.05,
                  call_s=0.02)
    if steps is not None:
        e.extra["steps"] = steps
    e.extra.update(extra)
    return e


def test_the_account_takes_the_run_estimate() -> None:
    es = [ep(1, 1e6, rec(99, 99.0, 9, 9.0, 9.0))]  # the first record is before the run
    es += [ep(i, 1e6 + 20 * i, rec(10, 10.3, 2, 2.0, 2.5)) for i in range(2, 7)]
    a = account(es)
    assert a.tracking_from == "run" and a.tracking_slowdown == pytest.approx(0.03)
    assert a.tracking_slowdown_90 == pytest.approx([0.03, 0.03])
    assert (a.tracking_rounds, a.untracked_steps) == (5, 10)
    assert a.untracked_s == pytest.approx(5 * 2.5)
    # the term applies to the steps' time: the rounds' time is not tracked steps
    between = a.wall_s - a.call_total_s - a.untracked_s  # no interference: no in-flight step
    assert a.interference_s is None
    assert a.tracking_fraction * a.wall_s == pytest.approx(between * 0.03 / 1.03)
    assert a.tracking_fraction_90 == pytest.approx([a.tracking_fraction] * 2)
    assert a.overhead_fraction == pytest.approx(
        a.call_fraction + a.tracking_fraction + a.untracked_s / a.wall_s)
    d = a.to_dict()
    assert d["tracking_from"] == "run" and d["untracked_s"] == pytest.approx(12.5)
    # a slowdown given overrides it; it overrides a calibration recorded in the epochs
    assert account(es, tracking_slowdown=0.01).tracking_from == "given"
    es[-1].extra["auto"] = {"tracking_slowdown": 0.5}
    assert account(es).tracking_from == "run"
    for e in es:  # without rounds: the calibration's
        e.extra["steps"] = {k: v for k, v in e.extra["steps"].items()
                            if not k.startswith("base_")}
    a = account(es)
    assert a.tracking_from == "calibration" and a.tracking_slowdown == 0.5
    assert a.tracking_slowdown_90 is None and a.untracked_s == 0 and a.tracking_rounds == 0


def test_a_negative_estimate_costs_nothing_but_is_reported() -> None:
    es = [ep(1, 1e6)] + [ep(i, 1e6 + 20 * i, rec(10, 9.8, 2, 2.0)) for i in range(2, 6)]
    a = account(es)
    assert a.tracking_slowdown == pytest.approx(-0.02) and a.tracking_fraction == 0.0


def test_rounds_check_their_arguments() -> None:
    with pytest.raises(TypeError, match="callable"):
        UntrackedRounds(3)  # type: ignore[arg-type]
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            UntrackedRounds(lambda: None, steps=bad)  # type: ignore[arg-type]
    for bad in (0, 1, -0.1, "x"):
        with pytest.raises(ValueError, match="share"):
            UntrackedRounds(lambda: None, share=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup"):
        UntrackedRounds(lambda: None, warmup=-1)
    with pytest.raises(TypeError, match="Checkpointer"):
        measure_tracking(object(), lambda: None)


def test_the_step_clock_runs_rounds_when_nothing_persists(monkeypatch) -> None:
    """On a clock the test moves: a round runs at a boundary with no epoch in
    flight, once an interval, while its CPU is within the share; its time is
    in no step of the run."""
    from memckpt.checkpoint import steps as mod
    from memckpt.checkpoint import tracking as trk
    now = fake_clock(monkeypatch, mod, trk)
    calls = []

    def untracked() -> None:  # an untracked step: 0.1 s, all CPU
        calls.append(now["wall"])
        now["wall"] += 0.1
        now["cpu"] += 0.1

    def step(s: float = 1.0) -> None:
        now["wall"] += s
        now["cpu"] += s
        c.boundary()

    c = mod.StepClock()
    c.rounds = UntrackedRounds(untracked, steps=2, share=0.1, warmup=0)
    c.boundary()
    c.launched()
    step()  # in flight: no round
    assert calls == []
    c.durable()
    step()  # nothing in flight (catching up): a round, 2 steps, 0.2 s of 2 s of run: 10%
    assert len(calls) == 2
    step()
    step()  # one round an interval
    assert len(calls) == 2
    rec_ = c.take()
    assert (rec_["base_steps"], rec_["base_wall_s"], rec_["base_cpu_s"],
            rec_["base_round_cpu_s"]) == \
        (2, pytest.approx(0.2), pytest.approx(0.2), pytest.approx(0.2))
    # the run's steps hold none of the round's time
    n = rec_["flight_steps"] + rec_["after_steps"] + rec_["idle_steps"]
    assert n == 4
    assert rec_["flight_wall_s"] + rec_["after_wall_s"] + rec_["idle_wall_s"] == pytest.approx(4.0)
    c.launched()
    c.durable()
    step()  # 0.2 + 0.2 s of rounds against 5 s of steps: 8% <= 10%, a round
    assert len(calls) == 4
    c.launched()
    c.durable()
    step(0.5)  # 0.4 + 0.2 against 5.5 s: 10.9% > 10%, none
    assert len(calls) == 4
    c.launched()
    c.durable()
    step(1.0)  # 0.6 against 6.5: 9.2%, a round
    assert len(calls) == 6 and c.take()["base_steps"] == 4
    c.rounds = None
    c.launched()
    c.durable()
    step(10.0)
    assert len(calls) == 6 and "base_steps" not in c.take()


def test_rounds_wait_for_the_work_after_a_commit(monkeypatch) -> None:
    """A round waits until the checkpointer's own work is done (the persist
    thread's, up to what follows a commit: StepClock.busy), not only until
    the epoch is durable; a Checkpointer's clock sees its persist's count."""
    from memckpt.checkpoint import steps as mod
    from memckpt.checkpoint import tracking as trk
    now = fake_clock(monkeypatch, mod, trk)
    calls = []

    def untracked() -> None:
        calls.append(now["wall"])
        now["wall"] += 0.01
        now["cpu"] += 0.01

    def step() -> None:
        now["wall"] += 1.0
        now["cpu"] += 1.0
        c.boundary()

    c = mod.StepClock()
    c.rounds = UntrackedRounds(untracked, steps=1, share=0.5, warmup=0)
    busy = [True]
    c.busy = lambda: busy[0]
    c.boundary()
    c.launched()
    c.durable()
    step()
    step()  # durable, but the persist thread still makes the next writer ready
    assert calls == []
    busy[0] = False
    step()
    assert len(calls) == 1


def test_a_checkpointers_clock_is_busy_while_its_persist_runs(tmp_path) -> None:
    ar = memckpt.Arena(1 << 16)
    with memckpt.Checkpointer(ar, str(tmp_path / "s"), mode="copy") as ck:
        busy = ck._schedule.steps.busy
        assert busy is not None and busy() is False
        ck._inflight.count += 1  # as launch() counts an epoch in flight
        try:
            assert busy() is True
        finally:
            ck._inflight.count -= 1
        ck.checkpoint().result()
        ck.wait()
        assert busy() is False


def test_a_round_warms_up_untimed(monkeypatch) -> None:
    """The first step of a round (the untracked state cold in the caches) is
    in the round's wall time, not in the CPU the estimate compares."""
    from memckpt.checkpoint import tracking as trk
    now = fake_clock(monkeypatch, trk)
    cost = iter([0.5, 0.1, 0.1])  # cold, then warm

    def untracked() -> None:
        c = next(cost)
        now["wall"] += c
        now["cpu"] += c

    r = UntrackedRounds(untracked, steps=2, share=0.5)
    assert r.warmup == 1
    n, wall, cpu, all_cpu = r.run()
    assert (n, wall, cpu, all_cpu) == (2, pytest.approx(0.7), pytest.approx(0.2),
                                       pytest.approx(0.7))
    assert r.base_cpu == pytest.approx(0.7)  # the budget counts all of it


def test_a_loop_measures_its_tracking_and_reports_it(tmp_path, capsys) -> None:
    """A maybe_checkpoint() loop with measure_tracking: the epochs carry the
    rounds, stats() and `show --overhead` take the term from them."""
    arena = memckpt.Arena(16 * 4096)
    x = arena.array("x", (16, 512))
    other = memckpt.Arena(16 * 4096)
    y = other.array("y", (16, 512))
    i = [0]

    def work(a) -> None:
        a[i[0] % 16] += 1.0
        float(a.sum())

    def untracked() -> None:
        work(y)

    with memckpt.Checkpointer(arena, tmp_path / "s", interval=0.002) as ck:
        measure_tracking(ck, untracked, steps=1, share=0.5)
        for _ in range(400):
            i[0] += 1
            work(x)
            ck.maybe_checkpoint()
            if _ % 8 == 0:
                ck.wait()  # nothing in flight at the next boundary
        ck.wait()
        live = ck.stats()
        measure_tracking(ck, None)
    infos = memckpt.Store(tmp_path / "s").epochs()
    nb = sum(e.extra.get("steps", {}).get("base_steps", 0) for e in infos[1:])
    assert nb >= MIN_SEGMENTS
    assert live.tracking_from == "run" and live.untracked_steps >= nb
    assert live.tracking_slowdown is not None and live.tracking_slowdown_90 is not None
    assert main(["show", str(tmp_path / "s"), "--overhead", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)["overhead"]
    assert rep["tracking_from"] == "run" and rep["untracked_steps"] == nb
    assert rep["tracking_rounds"] >= MIN_SEGMENTS
    assert main(["show", str(tmp_path / "s"), "--overhead"]) == 0
    out = capsys.readouterr().out
    assert "measured on the run" in out and "untracked rounds" in out
    del x, y
    arena.close()
    other.close()
