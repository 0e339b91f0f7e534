"""Checkpointer(mode="auto", calibration=...) (issue 16): the pair a
calibration measured cheapest runs, every manifest records it with each
pair's cost and where the calibration was made, and `memckpt show` prints it;
no calibration is the default, said so; a calibration that cannot be used is
refused naming what is wrong, before any store is made."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

import memckpt
from memckpt import workloads
from memckpt.calibrate import Calibration, calibrate, load_calibration, pairs_available
from memckpt.cli.app import main

from conftest import tracker_info

PS = memckpt.features().page_size


def _wp() -> str:
    """A write-protect tracker of a kernel without WP_ASYNC, as tests/test_calibrate.py:
    against compare it loses on a dense step and wins on a sparse one, by mechanism."""
    got = [n for n in ("uffd-sync", "mprotect") if tracker_info(n).available]
    if not got:
        pytest.skip("no write-protect tracker to set against compare")
    return got[0]


def _show(capsys, store: Path, *extra: str) -> str:
    assert main(["show", str(store), *extra]) == 0
    return capsys.readouterr().out


def test_dense_and_sparse_calibrations_record_their_pairs(tmp_path, capsys) -> None:
    """Each workload calibrated over (write-protect, compare) in mode copy, saved as
    `memckpt calibrate --save` would, then a Checkpointer(mode="auto") from the file:
    the dense step's runs on compare, the sparse step's on the write-protect tracker;
    every epoch's manifest says so with the costs measured, and `memckpt show` prints it."""
    wp = _wp()
    mib = 64
    arena = memckpt.Arena(mib << 20)
    a = arena.array("a", ((mib << 20) // 8,))
    rng = np.random.default_rng(1)

    def dense() -> None:
        np.add(a, 1.0, out=a)

    def sparse() -> None:  # no compute besides: less CPU measured, less noise in it
        workloads.random_pages(a, npages=8, seed=int(rng.integers(1 << 30)))

    got = {}
    for name, step in (("dense", dense), ("sparse", sparse)):
        cal = calibrate(step, arena, interval_steps=5, rounds=3,
                        pairs=[(wp, "copy"), ("compare", "copy")])
        with capsys.disabled():  # the costs, ms per interval, for a failure's reader
            print(name, {f"{p.tracker}/{p.mode}": round(p.cost_s * 1e3, 2) for p in cal.pairs})
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cal.to_dict()))
        store = tmp_path / name
        with memckpt.Checkpointer(arena, store, mode="auto", calibration=path) as ck:
            assert (ck.tracker.backend, ck.mode) == (cal.best.tracker, cal.best.mode)
            for _ in range(3):
                step()
                ck.checkpoint()
        s = memckpt.Store(store)
        recs = [i.extra["auto"] for i in s.epochs()]
        assert len(recs) == 3 and all(r == recs[0] for r in recs)
        rec = recs[0]
        assert (rec["tracker"], rec["mode"]) == (cal.best.tracker, cal.best.mode)
        assert [i.tracker for i in s.epochs()] == [cal.best.tracker] * 3
        assert rec["source"] == "calibration file" and rec["calibration"]["file"] == str(path)
        assert rec["calibration"]["host"] == cal.host and rec["calibration"]["created"] == cal.created
        assert {(p["tracker"], p["mode"]): p["cost_s"] for p in rec["pairs"]} == \
            {(p.tracker, p.mode): p.cost_s for p in cal.pairs}
        out = _show(capsys, store)
        assert re.search(rf"auto choice +{cal.best.tracker}/copy \(calibration file\): "
                         rf"{cal.best.tracker}/copy: checkpointing costs", out), out
        assert "auto costs" in out and f"from {path}" in out and f"on {cal.host}" in out
        assert f"compare/copy {1e3 * cal.cost_of('compare', 'copy').cost_s:.3g} ms" in out
        _show(capsys, store, "--json")  # JSON as well
        assert main(["show", str(store), "1", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["auto"] == rec
        s.close()
        got[name] = rec["tracker"]
    assert got == {"dense": "compare", "sparse": wp}
    del a, dense, sparse
    arena.close()


def test_no_calibration_is_the_default_and_says_so(tmp_path, capsys) -> None:
    arena = memckpt.Arena(8 * PS)
    arena.array("a", 8 * PS // 8)[:] = 1.0
    with memckpt.Checkpointer(arena, tmp_path / "s", mode="auto") as ck:
        assert ck.mode == "copy"
        rec = ck.auto
        ck.checkpoint().result()
    with memckpt.DirtyTracker(arena) as t:  # the kernel's pick, as tracker="auto" gives
        kernel_pick = t.backend
    assert rec["source"] == "default" and rec["tracker"] == kernel_pick
    assert rec["why"].startswith("no calibration: default")
    assert "calibration" not in rec and "pairs" not in rec
    assert memckpt.Store(tmp_path / "s").info(1).extra["auto"] == rec
    out = _show(capsys, tmp_path / "s")
    assert f"{kernel_pick}/copy (default): no calibration: default" in out
    with memckpt.Checkpointer(arena, tmp_path / "u", tracker="compare", mode="auto") as ck:
        assert (ck.tracker.backend, ck.mode) == ("compare", "copy")
        assert ck.auto["why"].startswith("no calibration: default: mode 'copy'")
        assert "tracker 'compare' as given" in ck.auto["why"]
    # without mode="auto" nor a calibration nothing is chosen, nothing recorded
    with memckpt.Checkpointer(arena, tmp_path / "t") as ck:
        assert ck.auto is None
        ck.checkpoint().result()
    assert "auto" not in memckpt.Store(tmp_path / "t").info(1).extra
    arena.close()


def _cal(pairs: list[tuple[str, str, float]]) -> Calibration:
    """A calibration of the given costs (the plumbing's tests: the measurement is
    tests/test_calibrate.py's)."""
    from memckpt.calibrate import PairCost
    return Calibration([PairCost(t, m, 1e-3, c, c, 1e-3, 1e-3, 2e-3, None, 1.0, c, c)
                        for t, m, c in pairs], 5, 4, None, None, "", 1.0e9, "elsewhere", "6.1")


def test_the_pick_follows_what_was_asked(tmp_path) -> None:
    """tracker= or mode= given with a calibration narrows the pick; compress=
    rules fork out (a fork child cannot compress)."""
    here = pairs_available()
    trackers = list(dict.fromkeys(t for t, _ in here))
    t0 = trackers[0]
    costs = [(t, m, 0.01 * (i + 1)) for i, (t, m) in enumerate(here)]
    if (t0, "fork") in here:  # fork cheapest: compress= must skip it
        costs = [(t, m, 0.001 if (t, m) == (t0, "fork") else c) for t, m, c in costs]
    cal = _cal(costs)
    arena = memckpt.Arena(4 * PS)
    arena.array("a", 4 * PS // 8)
    with memckpt.Checkpointer(arena, tmp_path / "a", mode="auto", calibration=cal) as ck:
        assert (ck.tracker.backend, ck.mode) == (cal.best.tracker, cal.best.mode)
        assert ck.auto["source"] == "calibration" and ck.auto["calibration"]["host"] == "elsewhere"
    with memckpt.Checkpointer(arena, tmp_path / "b", mode="copy", calibration=cal) as ck:
        want = min((p for p in cal.pairs if p.mode == "copy"), key=lambda p: p.cost_s)
        assert (ck.tracker.backend, ck.mode) == (want.tracker, "copy")
        assert ck.auto["asked"] == {"tracker": "auto", "mode": "copy"}
    with memckpt.Checkpointer(arena, tmp_path / "c", tracker=trackers[-1], mode="auto",
                              calibration=cal) as ck:
        assert ck.tracker.backend == trackers[-1]
    if (t0, "fork") in here:
        with memckpt.Checkpointer(arena, tmp_path / "d", mode="auto", compress="zstd",
                                  calibration=cal) as ck:
            assert ck.mode != "fork"
    arena.close()


def test_bad_calibrations_are_refused_naming_them(tmp_path) -> None:
    arena = memckpt.Arena(4 * PS)
    arena.array("a", 4 * PS // 8)
    store = tmp_path / "never"

    def refused(match: str, **kw) -> None:
        kw.setdefault("mode", "auto")
        with pytest.raises(ValueError, match=match):
            memckpt.Checkpointer(arena, store, **kw)
        assert not store.exists()  # refused before the store was made
        assert arena.tracker is None

    refused(r"calibration file .*nope\.json: cannot read it", calibration=tmp_path / "nope.json")
    good = _cal([(t, m, 0.01) for t, m in pairs_available()])
    text = json.dumps(good.to_dict())
    damaged = tmp_path / "damaged.json"
    damaged.write_text(text[: len(text) // 2])
    refused(r"calibration file .*damaged\.json is not valid JSON", calibration=damaged)
    wrong = tmp_path / "manifest.json"  # another JSON file: not a calibration
    wrong.write_text(json.dumps({"epoch": 1, "kind": "full", "extra": {}}))
    refused(r"calibration file .*manifest\.json is not a calibration", calibration=wrong)
    d = good.to_dict()
    d["pairs"][0]["cost_s"] = "cheap"
    bad_pair = tmp_path / "badpair.json"
    bad_pair.write_text(json.dumps(d))
    refused(r"calibration file .*badpair\.json: pair 0 is damaged", calibration=bad_pair)
    # the cheapest pair is one this kernel lacks: an error, not a quiet substitute
    lacking = [t.name for t in memckpt.trackers() if not t.available] or ["uffd-future"]
    foreign = _cal([(lacking[0], "copy", 0.001)] + [(t, m, 0.01) for t, m in pairs_available()])
    refused(rf"picks {lacking[0]}/copy, which this kernel cannot run", calibration=foreign)
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(foreign.to_dict()))
    refused(rf"calibration file .*foreign\.json picks {lacking[0]}/copy", calibration=path)
    assert load_calibration(path).host == "elsewhere"
    refused("both were given", tracker="compare", mode="copy", calibration=good)
    refused("measured no pair", tracker="compare", calibration=_cal([("mprotect", "copy", 0.1)]))
    with pytest.raises(TypeError, match="calibration must be"):
        memckpt.Checkpointer(arena, store, mode="auto", calibration=42)
    with pytest.raises(ValueError, match="mode must be one of"):
        memckpt.Checkpointer(arena, store, mode="automatic")
    arena.close()


def test_a_step_as_calibration_is_measured_first_and_the_arena_kept(tmp_path) -> None:
    """calibration=step: a short calibration on the arena (the pairs the other
    arguments allow), whose steps leave the arena's bytes as they were."""
    arena = memckpt.Arena(64 * PS)
    a = arena.array("a", 64 * PS // 8)
    a[:] = np.arange(a.size)
    calls = []

    def step() -> None:
        calls.append(1)
        a[::64] += 1.0

    before = a.copy()
    with memckpt.Checkpointer(arena, tmp_path / "s", tracker="compare", mode="auto",
                              calibration=step) as ck:
        assert np.array_equal(a, before) and len(calls) > 0
        rec = ck.auto
        assert rec["source"] == "calibration run at start" and rec["tracker"] == "compare"
        assert {p["tracker"] for p in rec["pairs"]} == {"compare"}
        ck.checkpoint().result()
    r = memckpt.restore(tmp_path / "s")
    assert np.array_equal(r.arrays()["a"], before)
    r.close()
    del a, step
    arena.close()


def test_resume_keeps_choosing(tmp_path) -> None:
    arena = memckpt.Arena(4 * PS)
    arena.array("a", 4 * PS // 8)[:] = 3.0
    cal = _cal([(t, m, 0.01 * (i + 1)) for i, (t, m) in enumerate(pairs_available())])
    with memckpt.Checkpointer(arena, tmp_path / "s", mode="auto", calibration=cal) as ck:
        ck.checkpoint()
    arena.close()
    ck = memckpt.Checkpointer.resume(tmp_path / "s", mode="auto", calibration=cal)
    with ck:
        ck.arena.arrays()["a"][0] = 4.0
        info = ck.checkpoint().result()
    assert info.kind == "incremental" and info.extra["auto"]["tracker"] == cal.best.tracker
    ck.arena.close()


def test_calibration_round_trips_through_its_json() -> None:
    cal = _cal([(t, m, 0.01) for t, m in pairs_available()])
    cal = dataclasses.replace(cal, pairs=cal.pairs + [dataclasses.replace(
        cal.pairs[0], mode="fork", error="OSError: no", cost_s=float("inf"),
        cost_fraction=float("inf"))])
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal


def test_the_short_calibration_leaves_untouched_pages_unpopulated(tmp_path) -> None:
    """Putting the arena back writes only the pages the calibration's steps changed:
    a page the program never touched still holds no memory afterwards (a sparse
    arena stays sparse), and every page holds its bytes from before."""
    arena = memckpt.Arena(256 * PS)
    a = arena.array("a", 256 * PS // 8)
    a[: 64 * PS // 8] = 5.0  # the first 64 pages populated, the rest never touched

    def step() -> None:
        a[: 16 * PS // 8: PS // 8] += 1.0  # one word of each of the first 16 pages

    before = a.copy()
    assert sorted(arena._region.populated()) == list(range(64))
    with memckpt.Checkpointer(arena, tmp_path / "s", tracker="compare", mode="auto",
                              calibration=step) as ck:
        assert ck.auto["source"] == "calibration run at start"
        assert np.array_equal(a, before)
        assert sorted(arena._region.populated()) == list(range(64))
    del a, step
    arena.close()


def test_the_overhead_account_takes_the_recorded_tracking_slowdown(tmp_path, capsys) -> None:
    """The account's tracking term, "estimated from the calibration" (issue 16):
    with no --tracking-slowdown it is the chosen pair's measured slowdown between
    checkpoints, as the epochs record it; a given one overrides it; no calibration,
    no estimate."""
    from memckpt.checkpoint.stats import account
    arena = memckpt.Arena(8 * PS)
    x = arena.array("x", 8 * PS // 8)
    here = pairs_available()
    cal = _cal([(t, m, 0.01 * (i + 1)) for i, (t, m) in enumerate(here)])  # wall_slowdown = cost
    slow = cal.best.wall_slowdown
    with memckpt.Checkpointer(arena, tmp_path / "s", mode="auto", calibration=cal) as ck:
        for i in range(4):
            x[i] = i
            ck.checkpoint().result()
        st = ck.stats()
    assert st.tracking_from == "calibration"
    assert st.tracking_fraction == pytest.approx(
        (st.wall_s - st.call_total_s) * slow / (1 + slow) / st.wall_s)
    es = memckpt.Store(tmp_path / "s").epochs()
    assert account(es, tracking_slowdown=0.5).tracking_from == "given"
    assert main(["show", str(tmp_path / "s"), "--overhead"]) == 0
    assert "estimated from the calibration the epochs record" in capsys.readouterr().out
    with memckpt.Checkpointer(arena, tmp_path / "d", mode="auto") as ck:  # the default
        ck.checkpoint().result()
        ck.checkpoint().result()
        st = ck.stats()
    assert st.tracking_fraction is None and st.tracking_from is None
    del x
    arena.close()


def test_the_tracking_term_is_the_step_cpu_slowdown(tmp_path) -> None:
    """The account's tracking term (issue 16) is the calibration's slowdown of
    the stepping thread's CPU (step_cpu_slowdown: the tracker's faults, not the
    persist's interference, which the account measures on the run); a calibration
    saved before it was measured gives the fastest interval's wall-clock slowdown."""
    here = pairs_available()
    cal = _cal([(t, m, 0.01 * (i + 1)) for i, (t, m) in enumerate(here)])
    best = cal.best
    cal2 = dataclasses.replace(cal, pairs=[dataclasses.replace(p, step_cpu_slowdown=0.037)
                                           if p is best else p for p in cal.pairs])
    back = Calibration.from_dict(json.loads(json.dumps(cal2.to_dict())))
    assert back == cal2 and back.cost_of(best.tracker, best.mode).step_cpu_slowdown == 0.037
    old = cal.to_dict()  # a file from before: no step_cpu_slowdown at all
    for p in old["pairs"]:
        del p["step_cpu_slowdown"]
    assert Calibration.from_dict(old).best.step_cpu_slowdown is None
    with memckpt.Arena(8 * PS) as arena:
        with memckpt.Checkpointer(arena, tmp_path / "s", mode="auto", calibration=cal2) as ck:
            assert ck.auto["tracking_slowdown"] == 0.037
            assert ck.auto["tracking_measure"] == "step_cpu"
        with memckpt.Checkpointer(arena, tmp_path / "t", mode="auto",
                                  calibration=Calibration.from_dict(old)) as ck:
            assert ck.auto["tracking_slowdown"] == best.wall_slowdown
            assert ck.auto["tracking_measure"] == "wall"


def test_step_cpu_slowdown_is_of_medians() -> None:
    """An interval now and then takes several times its CPU (the kernel's own
    work charged to the thread): the medians of the intervals, not the sums."""
    from memckpt.calibrate import _Run, _step_cpu_slowdown
    r = _Run(bare_step_cpu=[0.010, 0.010, 0.080, 0.011, 0.009],
             work_step_cpu=[0.0115, 0.0112, 0.0118, 0.0110, 0.0125])
    assert _step_cpu_slowdown(r) == pytest.approx(0.0115 / 0.010 - 1)
    assert _step_cpu_slowdown(_Run()) is None
