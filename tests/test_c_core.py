"""The C core's own test binaries (csrc/tests), built with CMake and run here:
one binary per backend; exit 77 means the backend is unavailable (skip).

The backends come from the C table (`_core.backend_names()`); CMake reads
them from the same place (the ops' names in csrc/track_*.c), and
test_cmake_builds_one_binary_per_backend holds the two together."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memckpt import _core

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = list(_core.backend_names())
EXTRA = sorted(p.stem for p in (ROOT / "csrc" / "tests").glob("test_*.c"))


@pytest.fixture(scope="session")
def c_build(tmp_path_factory):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is not installed: `pip install '.[test]'` brings it")
    build = tmp_path_factory.mktemp("cbuild")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    san = os.environ.get("MEMCKPT_SANITIZE", "OFF")
    cfg = subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), *gen, "-DMEMCKPT_C_TESTS=ON",
                          f"-DMEMCKPT_SANITIZE={san}", "-DCMAKE_BUILD_TYPE=RelWithDebInfo"],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    b = subprocess.run([cmake, "--build", str(build), "-j2"], capture_output=True, text=True)
    assert b.returncode == 0, b.stdout + b.stderr
    return build


def run_binary(path: Path) -> None:
    assert path.exists(), f"{path.name} was not built"
    p = subprocess.run([str(path)], capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    sys.stdout.write(out)
    if p.returncode == 77:
        reason = next((l for l in out.splitlines() if l.startswith("SKIP")), out.strip()[-300:])
        pytest.skip(reason)
    assert p.returncode == 0, f"{path.name} exited {p.returncode}:\n{out}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_binary(c_build, backend):
    run_binary(c_build / f"test_{backend.replace('-', '_')}")


@pytest.mark.parametrize("name", EXTRA)
def test_extra_binary(c_build, name):
    run_binary(c_build / name)


def test_cmake_builds_one_binary_per_backend(c_build):
    # CMake finds the backends by their ops' names; a backend it missed
    # would go untested without a word
    listed = (c_build / "c-backends.txt").read_text().split()
    assert sorted(listed) == sorted(BACKENDS), (listed, BACKENDS)
    built = (c_build / "c-tests.txt").read_text().split()
    assert {f"test_{b.replace('-', '_')}" for b in BACKENDS} <= set(built), built
    assert set(EXTRA) <= set(built), built


def _exported(path: Path) -> set[str]:
    """The non-static mck_* functions a C file defines."""
    pat = re.compile(r"^(?!static\b)[A-Za-z_][\w \*]*?\b(mck_\w+)\(", re.M)
    return set(pat.findall(path.read_text()))


def _calls(path: Path, names: set[str]) -> set[str]:
    """The names of names the code of path uses (its comments left out)."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", path.read_text(), flags=re.S)
    return {n for n in names if re.search(rf"\b{n}\b", text)}


def test_captures_and_trackers_meet_only_in_internal_h():
    # capture_bg.c called track_uffd.c's functions and track_uffd.c called
    # capture_bg.c's: a cycle. They meet in internal.h's two tables now
    # (mck_hold_ops, mck_capture_hooks), and a capture asks the ops' caps,
    # not the backend's number, whether a tracker can serve it.
    csrc = ROOT / "csrc"
    trackers = sorted(csrc.glob("track_*.c"))
    captures = sorted(csrc.glob("capture_*.c"))
    tracker_fns = set().union(*map(_exported, trackers))
    capture_fns = set().union(*map(_exported, captures))
    for c in captures:
        assert not _calls(c, tracker_fns), f"{c.name} calls a tracker's own function"
        assert not re.search(r"MCK_BACKEND_(?!COUNT)[A-Z_]+", c.read_text()), \
            f"{c.name} names a backend instead of asking its caps"
    for t in trackers:
        assert not _calls(t, capture_fns), f"{t.name} calls a capture's own function"


def test_a_binary_runs_one_test_by_name(c_build):
    # `binary seed test` replays one row of a binary's table (check.h);
    # a name in no row is a failure, not a silent pass
    p = subprocess.run([str(c_build / "test_mprotect_extra"), "7", "registry"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    ran = [line for line in p.stdout.splitlines() if line.startswith("# ok ")]
    assert ran == ["# ok registry on mprotect"], p.stdout
    p = subprocess.run([str(c_build / "test_mprotect_extra"), "7", "no_such_test"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "no test named no_such_test" in p.stdout, p.stdout


def test_a_test_whose_needs_are_unmet_says_why(c_build):
    # uffd-async has no handler thread: those rows of test_uffd_extra's
    # table skip with a reason instead of silently not running
    p = subprocess.run([str(c_build / "test_uffd_extra"), "7", "handler_sigmask"],
                       capture_output=True, text=True, timeout=300)
    out = p.stdout
    if "SKIP uffd-async unavailable" in out:
        pytest.skip("uffd-async is unavailable here: " + out)
    assert "SKIP handler_sigmask on uffd-async: only uffd-sync has a handler thread" in out, out
