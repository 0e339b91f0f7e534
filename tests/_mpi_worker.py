"""One rank of the MPI jobs tests/test_mpi.py starts under mpiexec.

Each rank writes its own pattern into its own arena, step after step; step
s's writes are a function of (rank, s) alone, so any process recomputes the
state a rank must hold after step s (``expected``). Every global epoch is
labelled with its step.

    python _mpi_worker.py ROOT OUT STEPS [--fresh] [--defer] [--keep K] [--own DIR]
                          [--kill RANK STEP DELAY]

- ``--fresh``: a new job (step 0 is checkpointed first); else resume from the
  newest global epoch and check this rank's arena against ``expected`` for its
  step, bit for bit.
- ``--defer``: leave each global commit to the next checkpoint (default: commit
  each one at once with ``result()``).
- ``--own DIR``: each rank's store is DIR/node-N, outside ROOT (a node-local disk).
- ``--keep K``: ``keep_last=K`` (the last K global epochs kept restorable).
- ``--kill RANK STEP DELAY``: rank RANK is SIGKILLed DELAY seconds after the
  start of step STEP's checkpoint (by a separate process: the kill lands
  whatever this process is doing); DELAY -1: the rank kills itself once its
  own epoch is durable, before the ranks agree (every rank's epoch of that
  step is then durable, and no global record names them).

Each rank writes OUT/resume-rank-N.json once resumed (the step and global
epoch it resumed from, its epoch, whether its arena matched) and
OUT/end-rank-N.json at the end (the step and global epoch it ended at).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np

import memckpt
from memckpt.mpi import Coordinator

PS = memckpt.features().page_size
NPAGES = 48


def apply_step(data: np.ndarray, rank: int, step: int) -> None:
    """Rank r's writes at step s: each rank its own pattern."""
    rng = np.random.default_rng([rank, step])
    pages = data.reshape(NPAGES, PS)
    if rank == 0:    # a few scattered pages, new bytes at their start
        idx = rng.choice(NPAGES, size=5, replace=False)
        pages[idx, :128] = rng.integers(0, 256, size=(5, 128), dtype=np.uint8)
    elif rank == 1:  # dense: every page, every step
        pages += np.uint8(step % 251 + 1)
    elif rank == 2:  # a block that slides
        start = (step * 7) % (NPAGES - 8)
        pages[start:start + 8] = rng.integers(0, 256, size=(8, PS), dtype=np.uint8)
    else:            # single bytes here and there, and now and then a page zeroed
        n = step % 4 + 1
        idx = rng.choice(NPAGES, size=n, replace=False)
        pages[idx, rng.integers(0, PS, size=n)] = np.uint8(rank + step)
        if step % 3 == 0:
            pages[int(rng.integers(0, NPAGES))] = 0


def expected(rank: int, step: int) -> np.ndarray:
    data = np.zeros(NPAGES * PS, dtype=np.uint8)
    for s in range(1, step + 1):
        apply_step(data, rank, s)
    return data


def killer(delay: float) -> None:
    """SIGKILL this process ``delay`` seconds from now, from another process."""
    subprocess.Popen(["sh", "-c", f"sleep {delay:.6f}; kill -KILL {os.getpid()}"],
                     stdin=subprocess.DEVNULL, start_new_session=True)


def main(argv: list[str]) -> None:
    from mpi4py import MPI

    root, out, steps = argv[0], argv[1], int(argv[2])
    fresh, defer = "--fresh" in argv, "--defer" in argv
    kill = None
    keep = int(argv[argv.index("--keep") + 1]) if "--keep" in argv else None
    own = argv[argv.index("--own") + 1] if "--own" in argv else None
    if "--kill" in argv:
        i = argv.index("--kill")
        kill = (int(argv[i + 1]), int(argv[i + 2]), float(argv[i + 3]))
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    store = None if own is None else os.path.join(own, f"node-{rank}")
    report: dict = {"rank": rank, "pid": os.getpid()}
    if fresh:
        arena = memckpt.Arena(NPAGES * PS)
        arena.array("data", (NPAGES * PS,), np.uint8)
        co = Coordinator(comm, arena, root, store=store, keep_last=keep)
        step = 0
        co.checkpoint(label="0").result()
    else:
        co = Coordinator.resume(comm, root, store=store, keep_last=keep)
        assert co.last is not None
        step = int(co.last.label)
        report.update(resumed_global=co.last.number, resumed_step=step,
                      resumed_epoch=co.checkpointer.head,
                      bit_exact=bool(np.array_equal(co.arena.arrays()["data"],
                                                    expected(rank, step))))
        _write(out, f"resume-rank-{rank}.json", report)
        # every rank's report is on disk before any rank steps on to a kill:
        # a rank slow to write its report (a loaded machine) was killed with
        # the job before writing it, and the trial could not check its resume
        comm.Barrier()
    data = co.arena.arrays()["data"]
    for _ in range(steps):
        step += 1
        apply_step(data, rank, step)
        here = kill is not None and kill[0] == rank and kill[1] == step
        if here and kill[2] >= 0:
            killer(kill[2])
        g = co.checkpoint(label=str(step))
        if here and kill[2] < 0:
            g.epoch.result()
            os.kill(os.getpid(), signal.SIGKILL)
        if not defer:
            g.result()
    co.close()
    assert co.last is not None
    report.update(end_step=step, end_global=co.last.number)
    _write(out, f"end-rank-{rank}.json", report)
    comm.Barrier()


def _write(out: str, name: str, report: dict) -> None:
    with open(os.path.join(out, name + ".tmp"), "w") as f:
        json.dump(report, f)
    os.rename(os.path.join(out, name + ".tmp"), os.path.join(out, name))


if __name__ == "__main__":
    main(sys.argv[1:])
