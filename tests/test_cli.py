import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

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


# -- the command table (issue 11) ----------------------------------------------------------
CLI_DIR = Path(memckpt.__file__).parent / "cli"
SHARED = {"__init__", "app", "commands", "base", "output", "stores"}


def test_the_parser_is_the_command_table(capsys):
    """`memckpt --help` lists the table's commands in its order, and only the
    listed ones: a command added to a module but not to the table, or a
    hidden one that leaks into the listing, fails here."""
    from memckpt.cli.commands import COMMANDS
    from memckpt.cli.app import parser
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [c.name for c in COMMANDS]
    listed = [a.dest for a in sub._choices_actions]
    assert listed == [c.name for c in COMMANDS if c.help is not None]
    assert "_demo-worker" not in listed
    for c in COMMANDS:
        assert (c.format is None) == (c.name in ("demo", "_demo-worker")), c.name


def test_command_modules_never_import_the_table_or_app():
    """The table imports the commands; a command importing the table (or
    app, which imports it) would be a cycle. Commands share only base,
    output and stores, and each module stays under ~400 lines."""
    for f in sorted(CLI_DIR.glob("*.py")):
        text = f.read_text()
        assert len(text.splitlines()) <= 400, f"{f.name} is over 400 lines"
        if f.stem in SHARED:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                assert not {"commands", "app"} & set(names), f"{f.name} imports {names}"


def test_console_script_entry_point_is_the_package_main():
    """pyproject's [project.scripts] names memckpt.__main__:main; it must stay
    the CLI package's main."""
    import memckpt.__main__
    import memckpt.cli
    assert memckpt.__main__.main is memckpt.cli.main
