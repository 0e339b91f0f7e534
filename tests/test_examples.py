"""The examples in examples/, built and run as a user would (issue 14).

examples/c_stencil: a C simulator built with CMake against the installed
package, driven from Python through cffi, its state in an arena: run to the
end; run again on a new store, SIGKILLed after a random number of
checkpoints, resumed; the final grid is the uninterrupted run's, bit for
bit, and the C library's digest of it agrees with one computed here."""
from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import blake3
import numpy as np
import pytest

import test_c_library as clib

ROOT = Path(__file__).resolve().parent.parent
STENCIL = ROOT / "examples" / "c_stencil"
N, STEPS, EVERY = 192, 240, 20


@pytest.fixture(scope="module")
def libstencil(tmp_path_factory) -> Path:
    pytest.importorskip("cffi", reason="the example drives C through cffi (the test extra has it)")
    cmake = clib.need("cmake", "`pip install '.[test]'` brings it")
    tmp = tmp_path_factory.mktemp("stencil")
    src = tmp / "src"
    shutil.copytree(STENCIL, src)
    gen = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={clib.which('ninja')}"] if clib.which("ninja") else []
    clib.run([cmake, "-S", str(src), "-B", str(tmp / "build"), *gen,
              f"-DCMAKE_PREFIX_PATH={clib.memckpt_config('--cmake-dir')}"])
    clib.run([cmake, "--build", str(tmp / "build")])
    lib = tmp / "build" / "libstencil.so"
    assert lib.is_file(), sorted(p.name for p in (tmp / "build").iterdir())
    return lib


def _driver(lib: Path, store: Path, out: Path) -> list[str]:
    return [sys.executable, str(STENCIL / "run.py"), "--lib", str(lib), "--store", str(store),
            "--n", str(N), "--steps", str(STEPS), "--every", str(EVERY), "--out", str(out)]


def _done(stdout: str) -> tuple[int, str]:
    line = [s for s in stdout.splitlines() if s.startswith("DONE ")]
    assert line, stdout
    _, step, digest = line[-1].split()
    return int(step), digest


def test_c_stencil_killed_and_resumed_ends_bit_exact(libstencil, tmp_path):
    # uninterrupted
    p = subprocess.run(_driver(libstencil, tmp_path / "a.ckpt", tmp_path / "a.npy"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    step, digest = _done(p.stdout)
    want = np.load(tmp_path / "a.npy")
    assert step == STEPS and want.shape == (N, N)
    assert blake3.blake3(want.tobytes()).hexdigest() == digest  # the C library's digest is BLAKE3
    assert 0 < want[N // 2, N // 2] < 100  # heat got in: the simulation did something
    # killed after a random number of durable checkpoints, then resumed
    kill_after = random.Random(14).randint(2, STEPS // EVERY - 2)
    store = tmp_path / "b.ckpt"
    proc = subprocess.Popen(_driver(libstencil, store, tmp_path / "b.npy"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("CKPT "):
            seen += 1
            if seen == kill_after:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "b.npy").exists()
    p = subprocess.run(_driver(libstencil, store, tmp_path / "b.npy"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    start = int(p.stdout.split("START ", 1)[1].split()[0])
    assert start >= kill_after * EVERY and start % EVERY == 0, p.stdout  # resumed, not restarted
    assert _done(p.stdout) == (STEPS, digest)
    assert np.array_equal(np.load(tmp_path / "b.npy"), want)
