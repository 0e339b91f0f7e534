"""Checkpointer(interval=...) and maybe_checkpoint(): fixed and tuned intervals.

Deterministic: a fake clock stands in for time.monotonic (ck._schedule.clock), and
the measured checkpoint cost (total_s) is replaced after the real persist.
"""
import dataclasses
import warnings

import numpy as np
import pytest

import memckpt
from memckpt import tuning

PS = memckpt.features().page_size


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class CostCheckpointer(memckpt.Checkpointer):
    """Commits real epochs, but reports total_s from self.costs (in order;
    the last one repeats)."""

    costs: list[float] = []

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        real = self._capturer.persist

        def persist(cap):
            info = real(cap)
            cost = self.costs.pop(0) if len(self.costs) > 1 else self.costs[0]
            return dataclasses.replace(info, total_s=cost)
        self._capturer.persist = persist


@pytest.fixture
def arena():
    with memckpt.Arena(16 * PS) as a:
        a.array("x", 16 * PS, np.uint8)
        yield a


def make(arena, tmp_path, costs=(1.0,), **kw):
    # mode "sync": each cost is known when checkpoint() returns, so the test
    # can look at the re-tuned interval right away (the copy mode's
    # background persist re-tunes when the epoch is durable: tested below)
    kw.setdefault("mode", "sync")
    ck = CostCheckpointer(arena, tmp_path / "s", **kw)
    ck.costs = list(costs)
    ck._schedule.clock = clock = Clock()
    return ck, clock


def test_fixed_interval_checkpoints_exactly_when_due(arena, tmp_path):
    ck, clock = make(arena, tmp_path, interval=10)
    x = arena.arrays()["x"]
    with ck:
        assert ck.interval == 10.0 and ck.recommendation is None
        e = ck.maybe_checkpoint("first")       # no epoch yet: the first call checkpoints
        assert e is not None and e.kind == "full" and e.label == "first"
        taken = []
        for step in range(1, 36):              # one step per second of the fake clock
            clock.t += 1
            x[step % x.size] += 1
            e = ck.maybe_checkpoint()
            if e is not None:
                assert e.kind == "incremental"
                taken.append(step)
        assert taken == [10, 20, 30]
        clock.t += 4.75                        # 39.75 s: the last one was at 30 s
        assert ck.maybe_checkpoint() is None
        clock.t += 0.25
        assert ck.maybe_checkpoint() is not None
        # an explicit checkpoint restarts the interval
        clock.t += 5
        ck.checkpoint().result()
        clock.t += 9.5
        assert ck.maybe_checkpoint() is None
        clock.t += 0.5
        assert ck.maybe_checkpoint() is not None
        ck.wait()  # the last epoch may still be persisting
        assert [e.epoch for e in ck.store.epochs()] == list(range(1, 8))


def test_interval_accepts_a_duration(arena, tmp_path):
    with memckpt.Checkpointer(arena, tmp_path / "s", interval="1.5m") as ck:
        assert ck.interval == 90.0


def test_no_interval_maybe_checkpoint_raises(arena, tmp_path):
    with memckpt.Checkpointer(arena, tmp_path / "s") as ck:
        assert ck.interval is None
        with pytest.raises(ValueError, match="interval="):
            ck.maybe_checkpoint()
        assert ck.store.epochs() == []
        ck.checkpoint()  # explicit checkpoints still work
        with pytest.raises(ValueError, match="interval="):
            ck.maybe_checkpoint()


def test_auto_needs_mtbf(arena, tmp_path):
    with pytest.raises(ValueError, match="mtbf"):
        memckpt.Checkpointer(arena, tmp_path / "s", interval="auto")
    assert not (tmp_path / "s").exists()   # refused before the store was made


@pytest.mark.parametrize("kw, match", [
    ({"interval": 0}, "interval"),
    ({"interval": -5}, "interval"),
    ({"interval": float("nan")}, "interval"),
    ({"interval": "fast"}, "'auto'"),
    ({"interval": "auto", "mtbf": "6x"}, "mtbf.*unknown unit"),
    ({"interval": "auto", "mtbf": 0}, "mtbf"),
    ({"interval": "auto", "mtbf": "6h", "rpo": -1}, "rpo"),
    ({"interval": "auto", "mtbf": "6h", "restart": "-3s"}, "restart"),
    ({"interval": 10, "mtbf": "6h"}, "only apply with interval='auto'"),
    ({"mtbf": "6h", "rpo": "5m"}, "mtbf, rpo only apply"),
])
def test_bad_arguments(arena, tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        memckpt.Checkpointer(arena, tmp_path / "s", **kw)


@pytest.mark.parametrize("kw", [{"interval": True}, {"interval": [5]},
                                {"interval": "auto", "mtbf": object()}])
def test_bad_argument_types(arena, tmp_path, kw):
    with pytest.raises(TypeError, match="seconds"):
        memckpt.Checkpointer(arena, tmp_path / "s", **kw)


def test_auto_tunes_from_measured_costs(arena, tmp_path):
    # full epoch 50 s, then increments of 2 s, 4 s, 3 s, then 20 s each
    ck, clock = make(arena, tmp_path, costs=[50.0, 2.0, 4.0, 3.0, 20.0],
                     interval="auto", mtbf="6h", restart="30s")
    x = arena.arrays()["x"]
    mtbf = 6 * 3600
    with ck:
        assert ck.interval is None and ck.recommendation is None and ck.checkpoint_cost is None
        e = ck.maybe_checkpoint()               # nothing measured yet: checkpoint to measure
        assert e is not None and e.kind == "full"
        # only the full epoch so far: its cost is the measurement
        assert ck.checkpoint_cost == 50.0
        assert ck.recommendation == tuning.recommend(50.0, mtbf, None, 30.0)
        assert ck.interval == ck.recommendation.interval_s

        def run_until_checkpoint() -> float:
            start = clock.t
            while True:
                clock.t += 1.0
                x[int(clock.t) % x.size] += 1
                if ck.maybe_checkpoint() is not None:
                    return clock.t - start

        expect_costs = [2.0, 3.0, 3.0, 3.5, 4.0, 20.0]   # medians of the increments so far
        for want in expect_costs:
            interval = ck.interval
            waited = run_until_checkpoint()
            assert interval <= waited < interval + 1     # due exactly after the interval
            assert ck.checkpoint_cost == want         # increments only, once there are some
            assert ck.recommendation == tuning.recommend(want, mtbf, None, 30.0)
            assert ck.interval == ck.recommendation.interval_s
        # the median covers the last five increments: 4, 3, 20, 20, 20
        assert ck.recommendation.method == "daly"


def test_auto_slower_store_longer_interval(arena, tmp_path):
    intervals = {}
    for cost in (0.01, 1.0):
        path = tmp_path / str(cost)
        ck = CostCheckpointer(arena, path, interval="auto", mtbf="1h", mode="sync")
        ck.costs = [cost]
        ck._schedule.clock = Clock()
        with ck:
            ck.checkpoint().result()
            ck.checkpoint().result()
            intervals[cost] = ck.interval
            assert ck.interval == tuning.recommend(cost, 3600).interval_s
    assert intervals[1.0] > 5 * intervals[0.01]


def test_auto_rpo_caps_the_interval(arena, tmp_path):
    ck, clock = make(arena, tmp_path, costs=[2.0], interval="auto", mtbf="6h", rpo="1m")
    with ck:
        ck.maybe_checkpoint()
        rec = ck.recommendation
        assert rec.method == "rpo-cap"
        assert ck.interval == pytest.approx(60 - 2.0)
        assert ck.interval + ck.checkpoint_cost <= 60
        assert rec == tuning.recommend(2.0, 6 * 3600, 60)
        clock.t += 57.9
        assert ck.maybe_checkpoint() is None
        clock.t += 0.1
        assert ck.maybe_checkpoint() is not None


def test_auto_rpo_shorter_than_a_checkpoint_warns_and_goes_back_to_back(arena, tmp_path):
    ck, clock = make(arena, tmp_path, costs=[5.0], interval="auto", mtbf="6h", rpo="3s")
    with ck:
        with pytest.warns(RuntimeWarning, match="RPO"):
            e = ck.maybe_checkpoint()
        assert e is not None                   # the epoch is committed all the same
        assert ck.interval == 0.0 and ck.recommendation is None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert ck.maybe_checkpoint() is not None   # due at every call


def test_resume_continues_the_interval(arena, tmp_path):
    with memckpt.Checkpointer(arena, tmp_path / "s") as ck:
        for _ in range(3):
            ck.checkpoint().result()
    incr = [e.total_s for e in ck.store.epochs() if e.kind == "incremental"]
    r = memckpt.Checkpointer.resume(tmp_path / "s", interval="auto", mtbf="2h")
    try:
        assert r.checkpoint_cost == pytest.approx(sum(incr) / 2)   # from the store's increments
        assert r.recommendation == tuning.recommend(r.checkpoint_cost, 7200)
        assert r.interval == r.recommendation.interval_s
        assert r.maybe_checkpoint() is None    # the resumed epoch counts as the last checkpoint
    finally:
        r.close()
        r.arena.close()
    r = memckpt.Checkpointer.resume(tmp_path / "s", interval=30)
    try:
        r._schedule.clock = Clock(r._schedule.due - 30)
        assert r.maybe_checkpoint() is None
        r._schedule.clock.t += 30
        assert r.maybe_checkpoint().kind == "incremental"
    finally:
        r.close()
        r.arena.close()
    with pytest.raises(ValueError, match="mtbf"):
        memckpt.Checkpointer.resume(tmp_path / "s", interval="auto")


def test_auto_in_copy_mode_retunes_once_the_epoch_is_durable(arena, tmp_path):
    ck, clock = make(arena, tmp_path, costs=[50.0, 2.0], interval="auto", mtbf="6h",
                     mode="copy")
    with ck:
        e = ck.maybe_checkpoint()
        assert e is not None and e.mode == "copy"
        e.result()                              # durable: its cost is measured now
        assert ck.checkpoint_cost == 50.0
        assert ck.interval == tuning.recommend(50.0, 6 * 3600).interval_s
        # the interval runs from the end of the pause, not from durability
        clock.t += ck.interval - 0.5
        assert ck.maybe_checkpoint() is None
        clock.t += 0.5
        e2 = ck.maybe_checkpoint()
        assert e2 is not None and e2.result().kind == "incremental"
        assert ck.checkpoint_cost == 2.0
