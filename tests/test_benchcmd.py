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


# -- memckpt bench --workload MODULE:FUNCTION (issue 16) --------------------------------------
STEP_MODULE = (
    "import numpy as np\n"
    "def make(arena):\n"
    "    a = arena.array('a', (arena.nbytes // 8,))\n"
    "    def step():\n"
    "        a[::1024] += 1.0\n"  # every other page (8 KiB apart)
    "    return step\n"
    "def broken(arena):\n"
    "    return 42\n")


def test_workload_measures_every_pair_on_the_users_step(tmp_path, capsys, monkeypatch):
    from memckpt.calibrate import ALL_MODES, pairs_available
    (tmp_path / "wlstep.py").write_text(STEP_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["bench", "--workload", "wlstep:make", "--size-mib", "4", "--rounds", "2",
                 "--steps", "2", "--dir", str(tmp_path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    want = pairs_available(ALL_MODES)
    assert sorted((r["tracker"], r["mode"]) for r in rep["rows"]) == sorted(want)
    assert "sync" in {m for _, m in want}  # the baseline mode is measured too
    pages = 4 * 2**20 // memckpt.features().page_size
    base = rep["peers_s"]["np.save+fsync"]
    assert base > 0 and set(rep["peers_s"]) == set(bench_measure.PEERS) - {"blake3-pages+fsync"}
    for r in rep["rows"]:
        assert r["error"] is None, r
        assert r["total_s"] >= r["pause_s"] > 0 and r["call_s"] >= r["pause_s"], r
        assert r["pages_dirty"] == pages // 2, r  # the step writes every other page
        assert r["epoch_bytes"] > 0 and r["cost_s"] >= 0
        assert r["baseline_over_total"] == pytest.approx(base / r["total_s"])
    assert [r["cost_fraction"] for r in rep["rows"]] == sorted(r["cost_fraction"]
                                                               for r in rep["rows"])
    assert rep["config"] == {"size_mib": 4, "steps": 2, "rounds": 2,
                             "pairs": [list(p) for p in want], "dir": str(tmp_path)}
    # the table, narrowed to one backend in two modes
    assert main(["bench", "--workload", "wlstep:make", "--size-mib", "4", "--rounds", "1",
                 "--steps", "1", "--backends", AVAILABLE[0], "--modes", "copy", "sync"]) == 0
    out = capsys.readouterr().out
    assert "memckpt bench --workload wlstep:make: 4 MiB arena" in out
    assert "np.save+fsync of every array" in out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(AVAILABLE[0] + " ")]
    assert sorted(r[1] for r in rows) == ["copy", "sync"]


@pytest.mark.parametrize("args, words", [
    (["--workload", "wlstep:nope"], "wlstep has no nope"),
    (["--workload", "wlstep"], "give MODULE:FUNCTION"),
    (["--workload", "no_such_module_x:make"], "cannot import no_such_module_x"),
    (["--workload", "wlstep:broken", "--size-mib", "1"], "returned int, not a step"),
    (["--workload", "wlstep:make", "--ratios", "1"], "--ratios is for the standard matrix"),
    (["--workload", "wlstep:make", "--modes", "warp"], "unknown capture mode 'warp'"),
])
def test_workload_errors_name_what_is_wrong(tmp_path, capsys, monkeypatch, args, words):
    (tmp_path / "wlstep.py").write_text(STEP_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["bench", *args]) == 1
    assert words in capsys.readouterr().err


def test_workload_module_is_found_in_the_current_directory(tmp_path):
    """The `memckpt` script's sys.path starts at its bin/ directory, not the current
    one: MODULE is still found there, as `python -m` would find it."""
    from pathlib import Path
    script = Path(sys.executable).with_name("memckpt")
    if not script.exists():
        pytest.skip(f"no memckpt script beside {sys.executable}")
    (tmp_path / "wlstep_cwd.py").write_text(STEP_MODULE)
    p = subprocess.run([str(script), "bench", "--workload", "wlstep_cwd:make", "--size-mib", "1",
                        "--rounds", "1", "--steps", "1", "--backends", AVAILABLE[0], "--modes",
                        "copy", "--json"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert [r["mode"] for r in json.loads(p.stdout)["rows"]] == ["copy"]
