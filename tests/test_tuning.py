"""memckpt.tuning (Young, Daly, the RPO cap, the expected costs, durations) checked
by hand and against a simulation of exponential failures; and `memckpt tune`."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import memckpt
from memckpt import tuning as tn
from memckpt.__main__ import main

PS = memckpt.features().page_size


# -- the formulas at known points ----------------------------------------------------
def test_young_and_daly_by_hand_for_one_minute_checkpoints_and_a_day_mtbf():
    # C = 60 s, M = 24 h = 86400 s:
    # Young: sqrt(2 * 60 * 86400) = sqrt(10 368 000) = 3219.94 s
    # Daly:  x = C/2M = 60/172800 = 3.4722e-4; sqrt(x)/3 = 6.2113e-3; x/9 = 3.858e-5
    #        3219.94 * (1 + 6.2113e-3 + 3.858e-5) - 60 = 3240.06 - 60 = 3180.06 s
    assert tn.young_interval(60, 86400) == pytest.approx(3219.94, abs=0.01)
    assert tn.daly_interval(60, 86400) == pytest.approx(3180.06, abs=0.01)


def test_daly_tends_to_young_when_the_cost_is_small():
    for c, m in [(1, 86400), (0.1, 3600), (2, 6 * 3600)]:
        y, d = tn.young_interval(c, m), tn.daly_interval(c, m)
        assert d < y
        assert d == pytest.approx(y, rel=0.01)
    # and departs from it when it is not: C = 0.3 M
    assert tn.daly_interval(0.3, 1) == pytest.approx(0.58751, abs=1e-5)
    assert tn.young_interval(0.3, 1) == pytest.approx(math.sqrt(0.6))


def test_daly_is_the_mtbf_once_the_cost_reaches_twice_the_mtbf():
    assert tn.daly_interval(2.0, 1.0) == 1.0
    assert tn.daly_interval(50.0, 10.0) == 10.0
    just_below = tn.daly_interval(1.999, 1.0)
    assert just_below > 0  # the formula's branch stays positive up to the switch


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_formulas_refuse_bad_values(bad):
    with pytest.raises(ValueError, match="MTBF"):
        tn.young_interval(1, bad)
    with pytest.raises(ValueError, match="checkpoint cost"):
        tn.daly_interval(bad, 100)


def test_expected_values_agree_with_the_first_order_model_for_small_costs():
    tau, c, m, r = 300.0, 2.0, 6 * 3600.0, 30.0
    first = c / tau + (tau / 2 + r) / m
    assert tn.expected_waste(tau, c, m, r) == pytest.approx(first, rel=0.02)
    w = tn.expected_waste(tau, c, m, r)
    assert tn.expected_overhead(tau, c, m, r) == pytest.approx(w / (1 + w))
    assert tn.expected_lost_work(tau, c, m) == pytest.approx((tau + c) / 2, rel=0.01)
    assert tn.expected_lost_work(tau, c, m) < (tau + c) / 2
    # tiny segments: the series branch
    assert tn.expected_lost_work(1e-3, 0.0, 1e6) == pytest.approx(5e-4, rel=1e-6)


def test_daly_is_near_the_exact_optimum_of_the_model():
    for c, m in [(60, 86400), (0.3, 1.0), (0.01, 1.0)]:
        grid = np.geomspace(tn.young_interval(c, m) / 5, tn.young_interval(c, m) * 2, 4000)
        best = grid[np.argmin([tn.expected_waste(float(t), c, m) for t in grid])]
        assert tn.daly_interval(c, m) == pytest.approx(best, rel=0.03)


# -- the RPO cap and the recommendation -----------------------------------------------
def test_rpo_cap_counts_the_commit_time():
    assert tn.rpo_cap(300, 2) == 298
    with pytest.raises(ValueError, match=r"RPO \(2 s\) must be longer than the checkpoint cost"):
        tn.rpo_cap(2, 2)
    with pytest.raises(ValueError, match="must be longer"):
        tn.rpo_cap(1, 5)


def test_recommend_uses_daly_when_it_fits_the_rpo():
    r = tn.recommend(2, 6 * 3600, rpo_s=300)
    assert r.method == "daly"
    assert r.interval_s == pytest.approx(tn.daly_interval(2, 6 * 3600))
    assert r.interval_steps is None
    assert r.expected_overhead == pytest.approx(tn.expected_overhead(r.interval_s, 2, 6 * 3600))
    assert r.expected_lost_work == pytest.approx(tn.expected_lost_work(r.interval_s, 2, 6 * 3600))
    assert "Daly" in r.why and "RPO" in r.why
    with pytest.raises(Exception):
        r.method = "young"  # frozen
    assert tn.recommend(2, 6 * 3600, formula="young").method == "young"


def test_recommend_caps_at_the_rpo_and_rounds_steps_down():
    r = tn.recommend(2, 3600, rpo_s=60, restart_s=30)
    assert r.method == "rpo-cap"
    assert r.interval_s == pytest.approx(58)
    assert r.interval_s + 2 <= 60
    assert "capped" in r.why
    s = tn.recommend(2, 3600, rpo_s=60, step_s=0.7)
    assert s.interval_steps == 82  # 58 / 0.7 = 82.9: 83 steps would break the RPO
    assert s.interval_s == pytest.approx(82 * 0.7)
    assert s.worst_lost_work_s <= 60
    d = tn.recommend(2, 6 * 3600, step_s=0.1)  # no RPO: to the nearest step
    assert d.interval_steps == round(tn.daly_interval(2, 6 * 3600) / 0.1)
    with pytest.raises(ValueError, match="no whole number of steps"):
        tn.recommend(2, 3600, rpo_s=10, step_s=9)
    with pytest.raises(ValueError, match="must be longer"):
        tn.recommend(2, 3600, rpo_s=1)


# -- durations ------------------------------------------------------------------------
@pytest.mark.parametrize("text,secs", [
    ("6h", 21600), ("5m", 300), ("2s", 2), ("150ms", 0.15), ("1.5h", 5400), ("90", 90),
    ("2d", 172800), ("10min", 600), (" 3 s ", 3), ("0", 0), (".5s", 0.5), ("1e3", 1000),
])
def test_parse_duration(text, secs):
    assert tn.parse_duration(text) == pytest.approx(secs)


@pytest.mark.parametrize("text,why", [
    ("", "give a number and a unit"), ("h", "give a number and a unit"),
    ("6x", "unknown unit 'x'"), ("5 hours", "unknown unit 'hours'"),
    ("-5m", "must not be negative"), ("1.2.3s", "give a number"), ("nan", "give a number"),
    ("1e999", "too large"),
])
def test_parse_duration_refuses(text, why):
    with pytest.raises(ValueError, match=why):
        tn.parse_duration(text)


def test_fmt_duration():
    assert [tn.fmt_duration(s) for s in (0, 0.15, 2, 293.4, 3600, 21600, 3 * 86400)] == \
        ["0 s", "150 ms", "2 s", "4.89 min", "1 h", "6 h", "3 d"]


# -- simulation: exponential failures -------------------------------------------------
def simulate_waste(tau: float, c: float, r: float, fails: np.ndarray, work: float) -> float:
    """Wasted time per unit of work to do ``work`` seconds of it in segments of ``tau``
    followed by a checkpoint of ``c``, with failures at the (sorted) times ``fails``;
    a failure loses the segment under way and costs a restart of ``r`` (which a
    failure can interrupt too). One loop turn per failure: the segments between
    two failures are counted at once."""
    n = math.ceil(work / tau)
    seg = tau + c
    t, done, i = 0.0, 0, 0
    while True:
        k = min(n - done, math.floor((fails[i] - t) / seg))
        done += k
        t += k * seg
        if done == n:
            return t / (n * tau) - 1
        t = fails[i]  # the segment under way is lost
        i += 1
        while fails[i] < t + r:  # failures during the restart
            t = fails[i]
            i += 1
        t += r


@pytest.mark.parametrize("c,r", [(0.005, 0.0), (0.005, 0.05), (0.3, 0.1)])
def test_tuned_interval_is_within_ten_percent_of_the_best_simulated(c, r):
    m, work = 1.0, 4000.0  # in units of the MTBF: about 4000+ failures per interval
    rec = tn.recommend(c, m, restart_s=r)
    grid = np.geomspace(rec.interval_s / 4, rec.interval_s * 4, 21)
    longest = work * (1 + max(tn.expected_waste(float(t), c, m, r) for t in grid[[0, -1]]))
    rng = np.random.default_rng(20240611)  # the same failures for every interval
    fails = np.cumsum(rng.exponential(m, size=int(longest / m * 1.3) + 1000))
    sims = np.array([simulate_waste(float(t), c, r, fails, work) for t in grid])
    tuned = simulate_waste(rec.interval_s, c, r, fails, work)
    best = sims.min()
    assert tuned <= 1.10 * best, (tuned, best, grid[sims.argmin()])
    assert sims[0] > 1.15 * best and sims[-1] > 1.15 * best  # the grid brackets the optimum
    # and the model's expected waste predicts the simulated one
    assert tuned == pytest.approx(tn.expected_waste(rec.interval_s, c, m, r), rel=0.05)


def test_rpo_capped_interval_costs_what_the_model_says():
    m, c, r, work = 1.0, 0.005, 0.02, 4000.0
    rng = np.random.default_rng(5)
    fails = np.cumsum(rng.exponential(m, size=20000))
    rec = tn.recommend(c, m, rpo_s=0.05, restart_s=r)
    assert rec.method == "rpo-cap" and rec.interval_s == pytest.approx(0.045)
    sim = simulate_waste(rec.interval_s, c, r, fails, work)
    assert sim == pytest.approx(tn.expected_waste(rec.interval_s, c, m, r), rel=0.05)


# -- cost from a store -----------------------------------------------------------------
def make_store(path, checkpoints=4):
    arena = memckpt.Arena(16 * PS)
    a = arena.array("a", (8, PS // 8), np.float64)
    with memckpt.Checkpointer(arena, path) as ck:
        for i in range(checkpoints):
            a[i % 8] += 1.0
            ck.checkpoint(f"round {i}").result()
    del a
    arena.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = tmp_path_factory.mktemp("tune") / "store"
    make_store(p)
    return p


def test_cost_from_store_is_the_median_total_of_the_increments(store):
    infos = memckpt.Store(store).epochs()
    inc = [e.total_s for e in infos if e.kind == "incremental"]
    assert len(inc) == 3
    assert tn.cost_from_store(memckpt.Store(store)) == pytest.approx(float(np.median(inc)))
    assert tn.cost_from_store(store) == pytest.approx(float(np.median(inc)))


def test_cost_from_store_without_increments(tmp_path):
    make_store(tmp_path / "one", checkpoints=1)
    with pytest.raises(ValueError, match="no incremental epochs"):
        tn.cost_from_store(memckpt.Store(tmp_path / "one"))


# -- memckpt tune ----------------------------------------------------------------------
def run(*args):
    return subprocess.run([sys.executable, "-m", "memckpt", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def fails(p):
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("memckpt tune: ")
    return lines[0]


def test_tune_text(capsys):
    assert main(["tune", "--mtbf", "6h", "--rpo", "5m", "--cost", "2s", "--step", "0.1s"]) == 0
    out = capsys.readouterr().out
    d = tn.daly_interval(2, 21600)
    assert f"checkpoint every {d:.0f} s" in out
    assert f"{round(d / 0.1)} steps of 100 ms" in out
    assert "[daly]" in out and "expected overhead" in out and "expected lost work" in out
    for method in ("young", "daly", "rpo-cap"):
        assert f"\n{method} " in out
    assert "298 s" in out  # the RPO cap: 300 - 2


def test_tune_json_caps_at_the_rpo(capsys):
    assert main(["tune", "--mtbf", "1h", "--rpo", "1m", "--cost", "2", "--restart", "30s",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    rc = rep["recommended"]
    assert rc["method"] == "rpo-cap" and rc["interval_s"] == pytest.approx(58)
    assert rc["worst_lost_work_s"] == pytest.approx(60)
    assert rep["inputs"] == {"cost_s": 2.0, "cost_source": "--cost", "measured": None,
                             "mtbf_s": 3600.0, "rpo_s": 60.0, "restart_s": 30.0, "step_s": None}
    by = {m["method"]: m for m in rep["methods"]}
    assert by["young"]["interval_s"] == pytest.approx(tn.young_interval(2, 3600))
    assert by["daly"]["within_rpo"] is False and by["rpo-cap"]["within_rpo"] is True
    assert rc["expected_overhead"] == pytest.approx(tn.expected_overhead(58, 2, 3600, 30))


def test_tune_from_a_store(store, capsys):
    assert main(["tune", "--mtbf", "24h", "--store", str(store), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    cost = tn.cost_from_store(memckpt.Store(store))
    assert rep["inputs"]["cost_s"] == pytest.approx(cost)
    assert rep["inputs"]["measured"]["epochs"] == 3
    assert rep["recommended"]["method"] == "daly"
    assert rep["recommended"]["interval_s"] == pytest.approx(tn.daly_interval(cost, 86400))
    assert main(["tune", "--mtbf", "24h", "--store", str(store)]) == 0
    assert "median total_s of 3 incremental epochs" in capsys.readouterr().out


def test_tune_bad_input_fails_in_one_line(tmp_path):
    assert "'6x' is not a duration" in fails(run("tune", "--mtbf", "6x", "--cost", "2s"))
    assert "--cost: '-2s'" in fails(run("tune", "--mtbf", "6h", "--cost=-2s"))
    assert "--mtbf must be longer than zero" in fails(run("tune", "--mtbf", "0", "--cost", "2s"))
    assert "must be longer than the checkpoint cost" in fails(
        run("tune", "--mtbf", "6h", "--rpo", "1s", "--cost", "2s"))
    assert "no store at" in fails(run("tune", "--mtbf", "6h", "--store", tmp_path / "nope"))
    make_store(tmp_path / "one", checkpoints=1)
    assert "no incremental epochs" in fails(run("tune", "--mtbf", "6h", "--store", tmp_path / "one"))
    p = run("tune", "--mtbf", "6h")  # neither --cost nor --store: argparse's usage error
    assert p.returncode == 2 and "--cost" in p.stderr


def test_tune_plot(tmp_path):
    out = tmp_path / "waste.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        msg = fails(run("tune", "--mtbf", "6h", "--cost", "2s", "--plot", out))
        assert "pip install matplotlib" in msg
        assert not out.exists()
        return
    p = run("tune", "--mtbf", "6h", "--rpo", "5m", "--cost", "2s", "--plot", out)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
