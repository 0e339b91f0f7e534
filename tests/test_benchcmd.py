"""`memckpt bench` on a tiny configuration: shape of the JSON, the table, the errors."""
import json
import subprocess
import sys

import pytest

import memckpt
from memckpt.cli import bench_measure, bench_run
from memckpt.__main__ import main
from memckpt.capture import MODES

TINY = ["bench", "--size-mib", "8", "--rounds", "1"]
AVAILABLE = [t.name for t in memckpt.trackers() if t.available]


def run(*args):
    return subprocess.run([sys.executable, "-m", "memckpt", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def rep(tmp_path_factory):
    p = run(*TINY, "--dir", str(tmp_path_factory.mktemp("bench")), "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_json_has_a_row_per_backend_and_mode_and_ratio(rep):
    assert rep["config"]["backends"] == AVAILABLE
    assert rep["config"]["ratios_pct"] == [1.0, 10.0]
    pairs = [tuple(p) for p in rep["config"]["pairs"]]
    assert pairs == bench_run.combos(AVAILABLE, None, False)
    # every backend in mode copy; auto's backend (the first) in every other mode
    assert [b for b, m in pairs if m == "copy"] == AVAILABLE
    assert {m for b, m in pairs} == set(MODES) - ({"background"} if "uffd-sync" not in AVAILABLE
                                                   else set())
    impossible = {(i["backend"], i["mode"]) for i in rep["config"]["impossible"]}
    assert sorted((r["backend"], r["mode"], r["ratio_pct"]) for r in rep["rows"]) == \
        sorted((b, m, p) for b, m in pairs if (b, m) not in impossible for p in (1.0, 10.0))
    for r in rep["rows"]:
        assert r["size_mib"] == 8 and r["dirty_pages"] > 0
        for k in ("collect_s", "pause_s", "total_s", "floor_s", "total_over_floor",
                  "pause_over_floor"):
            assert r[k] > 0, (r["backend"], r["mode"], k)
        assert r["total_s"] >= r["pause_s"] and r["bytes_on_disk"] > 0
        assert r["call_s"] >= r["pause_s"] > 0  # the call holds the pause
        # mode sync writes its pages from the arena in the pause: no staging
        assert (r["extra_bytes"] == 0) if r["mode"] == "sync" else (r["extra_bytes"] > 0), r
    skipped = {s["backend"]: s["reason"] for s in rep["config"]["skipped"]}
    for t in memckpt.trackers():
        if not t.available:
            assert skipped[t.name] == t.reason
    for p in rep["peers"]:
        assert set(p["peers_s"]) == set(bench_measure.PEERS)
        assert all(v > 0 for v in p["peers_s"].values())


@pytest.mark.skipif("uffd-async" not in AVAILABLE, reason="uffd-async not available here")
def test_uffd_async_at_1pct_has_ratios_to_the_floor_and_every_peer(rep):
    (row,) = [r for r in rep["rows"]
              if r["backend"] == "uffd-async" and r["mode"] == "copy" and r["ratio_pct"] == 1.0]
    assert row["total_over_floor"] == pytest.approx(row["total_s"] / row["floor_s"])
    peers = next(p for p in rep["peers"] if p["ratio_pct"] == 1.0)["peers_s"]
    for name in bench_measure.PEERS:
        assert row["peer_over_total"][name] == pytest.approx(peers[name] / row["total_s"])
        assert row["peer_over_pause"][name] == pytest.approx(peers[name] / row["pause_s"])


def test_slowdown_rows_per_backend_and_interval(rep):
    s = rep["slowdown"]
    assert s["untracked_s"] > 0
    assert sorted((r["backend"], r["mode"], r["every"]) for r in s["rows"]) == \
        sorted((b, "copy", e) for b in AVAILABLE for e in bench_measure.SLOWDOWN_EVERY)
    for r in s["rows"]:
        assert r["slowdown"] > 0 and r["slowdown_with_pauses"] >= r["slowdown"]


def test_modes_measure_every_chosen_backend_in_each(tmp_path):
    assert bench_run.combos(["a", "b"], ["copy", "sync"], False) == \
        [("a", "copy"), ("b", "copy"), ("a", "sync"), ("b", "sync")]
    assert bench_run.combos(["a"], None, True) == [("a", m) for m in MODES]


def test_table_via_main(capsys, tmp_path):
    assert main(TINY + ["--ratios", "1", "--no-slowdown", "--backends", AVAILABLE[0],
                        "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "total/floor" in out and "np.save/total" in out and AVAILABLE[0] in out
    assert list(tmp_path.iterdir()) == []  # the temporary stores are gone


@pytest.mark.parametrize("args, words", [
    (["--ratios", "0"], "percentage"),
    (["--ratios", "abc"], "not a number"),
    (["--size-mib", "-4"], "must be positive"),
    (["--rounds", "0"], "must be positive"),
    (["--backends", "nosuch"], "unknown backend 'nosuch'"),
    (["--modes", "nosuch"], "unknown capture mode 'nosuch'"),
    (["--dir", "/nonexistent/memckpt-bench"], "no such directory"),
])
def test_bad_arguments_give_one_line_errors(args, words):
    p = run("bench", *args)
    assert p.returncode != 0
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert words in lines[-1], p.stderr
    assert p.stdout == ""
    if p.returncode == 1:  # ours: exactly one line
        assert len(lines) == 1


def test_unavailable_backend_is_refused_with_its_reason():
    bad = [t for t in memckpt.trackers() if not t.available]
    if not bad:
        pytest.skip("every backend is available here")
    p = run("bench", "--backends", bad[0].name)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "not available here" in p.stderr


def test_plot_without_matplotlib_names_pip_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["bench", "--plot", str(tmp_path / "b.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install matplotlib" in err
    assert not (tmp_path / "b.png").exists()
