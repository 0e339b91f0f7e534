import json
import subprocess
import sys

import memckpt
from memckpt.__main__ import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "memckpt", *args], capture_output=True, text=True,
                          timeout=120)


def test_doctor_json_matches_the_api():
    p = run("doctor", "--json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert [t["name"] for t in rep["trackers"]] == [t.name for t in memckpt.trackers()]
    assert rep["features"]["page_size"] == memckpt.features().page_size
    for t in rep["trackers"]:
        assert set(t) >= {"name", "available", "reason", "exact"}
    first = next(t["name"] for t in rep["trackers"] if t["available"])
    assert rep["auto"]["backend"] == first


def test_doctor_table_names_every_backend_and_the_pick(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for t in memckpt.trackers():
        assert t.name in out
        if not t.available:
            assert t.reason[:40] in out
    assert "auto picks:" in out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "doctor" in capsys.readouterr().out


# `memckpt demo` (checkpoint, SIGKILL, resume, bit-identity) is tested in test_cli_store.py.
