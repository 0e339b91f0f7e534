"""examples/pde_checkpoint.py: a py-pde simulation checkpointed through
memckpt.allocating(), killed with SIGKILL mid-run, resumed from its store:
the final field equals an uninterrupted run's, and a run without memckpt's
checkpoints, bit for bit."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pde")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pde_checkpoint.py"


def run(*args, **kw):
    return subprocess.run([sys.executable, str(EXAMPLE), *map(str, args)], check=True,
                          capture_output=True, text=True, timeout=600, **kw)


def kill_after(store, step, *args):
    """Start a run and SIGKILL it once it reports ``step`` checkpointed."""
    p = subprocess.Popen([sys.executable, str(EXAMPLE), str(store), *map(str, args)],
                         stdout=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            if line.strip() == f"step {step}":
                os.kill(p.pid, signal.SIGKILL)
                break
    finally:
        p.wait(timeout=600)
        p.stdout.close()
    assert p.returncode == -signal.SIGKILL, f"the run ended before the kill ({p.returncode})"


@pytest.mark.parametrize("n,steps,every,kill", [
    (64, 240, 10, 80),
    pytest.param(256, 600, 50, 300, marks=pytest.mark.slow),
])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, n, steps, every, kill):
    common = ["--n", n, "--steps", steps, "--every", every]
    run(tmp_path / "base", *common, "--no-checkpoint", "--out", tmp_path / "base.npy")
    run(tmp_path / "whole", *common, "--out", tmp_path / "whole.npy")
    kill_after(tmp_path / "cut", kill, *common, "--out", tmp_path / "cut.npy")
    assert not (tmp_path / "cut.npy").exists()
    import memckpt
    st = memckpt.Store(tmp_path / "cut")
    latest = st.latest()
    assert latest is not None and st.info(latest).label != f"step {steps}"
    st.close()
    out = run(tmp_path / "cut", *common, "--resume", "--out", tmp_path / "cut.npy").stdout
    assert out.splitlines()[-1] == f"step {steps}"
    base, whole, cut = (np.load(tmp_path / f"{k}.npy") for k in ("base", "whole", "cut"))
    assert np.abs(base).sum() > 0 and not np.isnan(base).any()
    assert whole.tobytes() == base.tobytes()
    assert cut.tobytes() == base.tobytes()
