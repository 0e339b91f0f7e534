"""What coordinating costs: a global epoch of N ranks (memckpt.mpi) beside
each rank's own checkpoint of the same writes, at 1, 2 and 4 ranks, in the
same run.

The script starts ``mpiexec -n N`` (the mpich wheel's, beside this Python)
running itself as the ranks. Each rank holds two arenas of the same size and
writes the same pages into both at each step (a new random 1/16 of the pages):

- ``np.save + fsync``: what a user would pick: each rank saves its array to a
  new file and fsyncs it.
- ``per-rank``: arena A under a plain :class:`memckpt.Checkpointer`:
  ``checkpoint().result()``, i.e. pause to durable.
- ``global``: arena B under a :class:`memckpt.mpi.Coordinator`:
  ``checkpoint().result()``, i.e. pause, every rank durable, the ranks agree,
  rank 0's global record durable, every rank told.
- ``record``: rank 0 alone makes one global record durable (temporary file,
  fsync, rename, directory fsync): the part of the extra cost no
  coordination can avoid.

The ranks meet at a barrier before each timed operation; a step's time is
its slowest rank's (the job waits for it). The three run in turn each
step, starting one later each step, so noise falls on all alike. Reported:
medians over the steps, and the extra cost of coordination (the median of
global - per-rank, step by step) as a ratio to the per-rank cost.
``call`` is how long ``checkpoint()`` blocked (the pause and the meeting).

    .venv/bin/python bench/bench_mpi.py                      # 16 MiB per rank, 30 steps
    .venv/bin/python bench/bench_mpi.py --mib 64 --steps 50 --ranks 1 2 4
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

PS = 4096


def _worker(mib: int, steps: int, root: str, out: str) -> None:
    from mpi4py import MPI

    import memckpt
    from memckpt.mpi import Coordinator, records
    from memckpt.mpi.records import GlobalEpoch, RankEpoch

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    npages = mib * 256
    arenas = []
    for _ in range(2):
        a = memckpt.Arena(npages * PS)
        a.array("x", (npages, PS // 8), np.float64)[:] = np.random.default_rng(rank).random(
            (npages, PS // 8))
        arenas.append(a)
    plain = memckpt.Checkpointer(arenas[0], Path(root) / f"plain-{rank:05d}")
    co = Coordinator(comm, arenas[1], Path(root) / "global-run")
    plain.checkpoint().result()  # the full epochs, not timed
    co.checkpoint().result()
    saves = Path(root) / f"save-{rank:05d}.npy"
    xs = [a.arrays()["x"] for a in arenas]

    def np_save() -> None:
        with open(saves, "wb") as f:
            np.save(f, xs[0])
            f.flush()
            os.fsync(f.fileno())

    def per_rank() -> dict:
        p = plain.checkpoint()
        p.result()
        return {"pause": p.pause_s, "call": p.call_s}

    def coordinated() -> dict:
        t = time.perf_counter()
        g = co.checkpoint()
        call = time.perf_counter() - t
        g.result()
        return {"pause": g.epoch.pause_s, "call": call}

    scratch = Path(root) / "records-floor"
    count = [0]

    def record_only() -> None:
        # the floor of the global commit: rank 0 makes one record durable
        if rank == 0:
            count[0] += 1
            rec = GlobalEpoch(count[0], tuple(RankEpoch(r, f"rank-{r:05d}", 1, "0" * 64)
                                              for r in range(size)), time.time(), None)
            records.write_record(scratch, rec)

    methods = {"np.save + fsync": np_save, "per-rank": per_rank, "global": coordinated,
               "record": record_only}
    names = list(methods)
    rows = []
    rng = np.random.default_rng(100 + rank)
    for step in range(steps):
        idx = rng.choice(npages, size=max(1, npages // 16), replace=False)
        vals = rng.random((idx.size, PS // 8))
        for x in xs:
            x[idx] = vals
        row = {}
        for k in range(len(names)):
            name = names[(step + k) % len(names)]
            comm.Barrier()
            t = time.perf_counter()
            extra = methods[name]() or {}
            row[name] = time.perf_counter() - t
            for key, v in extra.items():
                row[f"{name} {key}"] = v
        rows.append(row)
    plain.close()
    co.close()
    every = comm.gather(rows, root=0)
    if rank == 0:
        Path(out).write_text(json.dumps(every))


def _median(vals: list[float]) -> float:
    return statistics.median(vals)


def _summary(every: list[list[dict]]) -> dict:
    """Per step, the slowest rank's time of each; then medians over the steps."""
    steps = len(every[0])
    keys = every[0][0].keys()
    slowest = [{k: max(r[s][k] for r in every) for k in keys} for s in range(steps)]
    out = {k: _median([row[k] for row in slowest]) for k in keys}
    out["extra"] = _median([row["global"] - row["per-rank"] for row in slowest])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=16, help="MiB per arena per rank")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temporary "
                    "directory in the current one)")
    ap.add_argument("--json", default=None, help="also write the medians here")
    ap.add_argument("--worker", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args.mib, args.steps, *args.worker)
    mpiexec = Path(sysconfig.get_path("scripts")) / "mpiexec"
    if not mpiexec.exists():
        found = shutil.which("mpiexec")
        if found is None:
            sys.exit("no mpiexec: pip install 'memckpt[mpi]' (the mpich and mpi4py wheels)")
        mpiexec = Path(found)
    cpus = len(os.sched_getaffinity(0))
    results = {}
    for n in args.ranks:
        with tempfile.TemporaryDirectory(dir=args.dir or ".") as root:
            out = Path(root) / "rows.json"
            cmd = [str(mpiexec), "-launcher", "fork", "-n", str(n), sys.executable, __file__,
                   "--mib", str(args.mib), "--steps", str(args.steps), "--worker", root, str(out)]
            subprocess.run(cmd, check=True, timeout=3600)
            results[n] = _summary(json.loads(out.read_text()))
    print(f"{args.mib} MiB per arena per rank, 1/16 of its pages written per step, "
          f"{args.steps} steps; medians of the slowest rank per step")
    print(f"{cpus} CPUs for {max(args.ranks)} ranks: "
          + ("oversubscribed (ranks, their persist threads and the writer's threads share them)"
             if max(args.ranks) > cpus else "not oversubscribed"))
    head = (f"{'ranks':>5} {'np.save+fsync':>14} {'per-rank':>10} {'global':>10} {'extra':>10} "
            f"{'extra/per-rank':>15} {'record':>10} {'per-rank call':>14} {'global call':>12}")
    print(head)
    for n, r in results.items():
        print(f"{n:>5} {r['np.save + fsync'] * 1e3:>11.2f} ms {r['per-rank'] * 1e3:>7.2f} ms "
              f"{r['global'] * 1e3:>7.2f} ms {r['extra'] * 1e3:>7.2f} ms "
              f"{r['extra'] / r['per-rank']:>15.2f} {r['record'] * 1e3:>7.2f} ms "
              f"{r['per-rank call'] * 1e3:>11.2f} ms "
              f"{r['global call'] * 1e3:>9.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpus": cpus, "mib": args.mib,
                                               "steps": args.steps, "results": results}, indent=1))


if __name__ == "__main__":
    main()
