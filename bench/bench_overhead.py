"""Does the overhead account (memckpt.checkpoint.stats) agree with the wall clock?

One process, three arenas holding the same state (the third for the
untracked rounds), the same step on each, in pairs of blocks of ``--steps`` steps, the order alternating (A B, B A, ...):

- ``ckpt``: arena A under a Checkpointer: ``checkpoint()``, then each step
  followed by ``maybe_checkpoint()`` (``--interval``), then ``checkpoint()``
  (so that the block's epochs carry all its steps' records);
- ``bare``: arena B, not tracked, the same steps.

Measured: each pair's wall-clock difference ``ckpt - bare``, less the
untracked rounds the ckpt block ran (below: what measuring cost, reported
apart; ``ratio_sum_with_rounds`` keeps them on both sides). Account: the ckpt
blocks' epochs together, as ``memckpt show --overhead`` accounts a run
(``memckpt.checkpoint.stats``; each block's first epoch's step record left
out: it is of the block before): the calls (``call_s``), the persist
interference (the off-CPU time of the steps in flight and in the catch-up
after, beyond the steady steps' rate, recorded by the Checkpointer itself:
checkpoint/steps.py; handed to the blocks by their steps for the per-pair
spread), and the tracking term measured on the run
(``memckpt.checkpoint.tracking.measure_tracking``: at most once between two
checkpoints, with no epoch in flight and within ``--rounds-share`` of the
steps' CPU, ``--rounds-steps`` of the same step on a third, untracked arena;
the run's steps' CPU against theirs, paired in time, with a 90% bootstrap
interval). Reported: median and quartiles of the per-pair differences and
accounts, the ratio of the sums (account / measured) with a bootstrap
interval over pairs, and the ratio at both ends of the tracking slowdown's
interval (how sure the account is); for comparison, the ratio with the
slowdown of a calibration after the blocks (``--cal-rounds``) and with the
one measured against the bare blocks (the ckpt blocks' step CPU against
the bare blocks', median over pairs), which a real run does not have, and
the same decomposition with the bare blocks as the baseline
(``decomposition_against_bare_blocks``).

Workloads: ``sparse`` (a step writes ``--touch`` of the arena's pages at
random and computes ``--work-ms``), ``pde`` (py-pde's Cahn-Hilliard on an
``--n`` x ``--n`` grid, numpy backend, the field in the arena: every page
written every step).

    python bench/bench_overhead.py --workload sparse --mode copy --steps 1000 --interval 0.5 \
        --pairs 60 --rounds-steps 10 [--json FILE]
    python bench/bench_overhead.py --workload pde --n 512 --mode copy --steps 40 --interval 0.1 \
        --pairs 120 --rounds-steps 1
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

import memckpt
from memckpt.checkpoint.stats import account, baseline, interference, records
from memckpt.checkpoint.steps import AFTER_KEYS, BASE_KEYS, KEYS as STEP_KEYS
from memckpt.checkpoint.tracking import estimate as tracking_estimate, measure_tracking


def sparse_workload(a: argparse.Namespace) -> Callable[[], tuple[memckpt.Arena, Callable[[], None]]]:
    ps = memckpt.features().page_size
    npages = a.mib * 2**20 // ps
    k = max(1, int(npages * a.touch))
    work = np.ones((256, 256))
    # the compute is a fixed amount of work (not "until the clock says"): a step the
    # machine slows down must take longer, or the slowdown vanishes from the wall clock
    t0, reps = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.2:
        work.sum()
        reps += 1
    reps = max(1, round(reps * a.work_ms / 1e3 / (time.perf_counter() - t0)))

    def make() -> tuple[memckpt.Arena, Callable[[], None]]:
        ar = memckpt.Arena(npages * ps)
        f = ar.array("f", (npages, ps // 8))
        f[:] = 1.0
        rng = np.random.default_rng(1)

        def step() -> None:
            f[rng.integers(0, npages, k), 0] += 1.0
            for _ in range(reps):  # the step's own compute
                work.sum()
        return ar, step
    return make


def pde_workload(a: argparse.Namespace) -> Callable[[], tuple[memckpt.Arena, Callable[[], None]]]:
    import logging
    import warnings
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("pde").setLevel(logging.ERROR)
    import pde
    n, dt = a.n, 1e-3
    grid = pde.CartesianGrid([[0, n], [0, n]], [n, n], periodic=True)
    nbytes = (n + 2) ** 2 * 8

    def make() -> tuple[memckpt.Arena, Callable[[], None]]:
        ar = memckpt.Arena(4 * nbytes + (1 << 20))
        with memckpt.allocating(ar, threshold=nbytes):
            state = pde.ScalarField.random_uniform(grid, -1, 1, rng=np.random.default_rng(1))
        stepper = pde.EulerSolver(pde.CahnHilliardPDE(), backend="numpy").make_stepper(state, dt=dt)
        t = [0.0]

        def step() -> None:
            t[0] = stepper(state, t[0], t[0] + dt)
        return ar, step
    return make


def _pct(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    k = (len(ys) - 1) * q
    lo = int(k)
    return ys[lo] + (ys[min(lo + 1, len(ys) - 1)] - ys[lo]) * (k - lo)


def _boot(acc: list[float], meas: list[float], n: int = 2000) -> tuple[float, float]:
    """5th and 95th percentiles of sum(acc)/sum(meas) over pairs resampled."""
    rnd = random.Random(7)
    idx = range(len(acc))
    rs = []
    for _ in range(n):
        pick = [rnd.choice(idx) for _ in idx]
        m = sum(meas[i] for i in pick)
        if m > 0:
            rs.append(sum(acc[i] for i in pick) / m)
    if not rs:  # every resample measured no difference
        return math.nan, math.nan
    return _pct(rs, 0.05), _pct(rs, 0.95)


def _children() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _steady(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mb = statistics.median(r["bare"] for r in rows)
    keep = [r for r in rows if abs(r["bare"] / mb - 1) <= 0.15]
    m = sum(r["measured"] for r in keep)
    return {"pairs": len(keep), "measured_s": m, "account_s": sum(r["account"] for r in keep),
            "ratio_sum": sum(r["account"] for r in keep) / m if m > 0 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=("sparse", "pde"), default="sparse")
    ap.add_argument("--mib", type=int, default=32, help="sparse: the arena's size")
    ap.add_argument("--touch", type=float, default=0.005, help="sparse: pages a step writes")
    ap.add_argument("--work-ms", type=float, default=2.0, help="sparse: compute per step")
    ap.add_argument("--n", type=int, default=1024, help="pde: the grid's side")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=100, help="steps per block")
    ap.add_argument("--pairs", type=int, default=24, help="pairs of blocks (ckpt, bare)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="take no new pair after this many minutes of blocks (the report then "
                         "rests on the pairs done): a long pass that must end in time")
    ap.add_argument("--mode", default="copy")
    ap.add_argument("--tracker", default="auto")
    ap.add_argument("--cal-rounds", type=int, default=24,
                    help="rounds of the calibration after the blocks, for comparison (0: none)")
    ap.add_argument("--rounds-steps", type=int, default=2,
                    help="untracked steps a round (measure_tracking: on the third arena)")
    ap.add_argument("--rounds-warmup", type=int, default=1,
                    help="untimed untracked steps before them (the third arena is cold)")
    ap.add_argument("--rounds-share", type=float, default=0.05,
                    help="the rounds' largest share of the checkpointed steps' CPU")
    ap.add_argument("--json")
    a = ap.parse_args()
    load0 = os.getloadavg()
    make = sparse_workload(a) if a.workload == "sparse" else pde_workload(a)
    (ar_a, step_a), (ar_b, step_b), (ar_c, step_c) = make(), make(), make()
    for _ in range(3):
        step_a(), step_b(), step_c()
    t0 = time.perf_counter()
    for _ in range(5):
        step_b()
    step_s = (time.perf_counter() - t0) / 5
    tracker = a.tracker
    if tracker == "auto":
        with memckpt.DirtyTracker(ar_b, "auto") as tr:
            tracker = tr.backend
    rows: list[dict[str, Any]] = []
    blocks: list[tuple[list[Any], float]] = []  # each ckpt block's epochs and its end
    with tempfile.TemporaryDirectory() as d, \
            memckpt.Checkpointer(ar_a, d + "/s", mode=a.mode, tracker=tracker,
                                 interval=a.interval) as ck:
        ck.checkpoint().result()  # the full epoch is not part of the steady state
        # the tracking term, measured on the run: untracked rounds of the same step on
        # the third arena, between the checkpoints (checkpoint/tracking.py)
        measure_tracking(ck, step_c, steps=a.rounds_steps, share=a.rounds_share,
                         warmup=a.rounds_warmup)
        t_blocks = time.monotonic()
        for r in range(a.pairs):
            if a.minutes is not None and time.monotonic() - t_blocks > 60 * a.minutes:
                print(f"--minutes {a.minutes}: {r} pairs of {a.pairs} taken", file=sys.stderr)
                break
            row: dict[str, Any] = {}
            for kind in (("ckpt", "bare") if r % 2 == 0 else ("bare", "ckpt")):
                ck.wait()
                first = (ck.head or 0) + 1
                c0, p0, k0 = time.thread_time(), time.process_time(), _children()
                t0 = time.perf_counter()
                if kind == "ckpt":
                    ck.checkpoint()
                    for _ in range(a.steps):
                        step_a()
                        ck.maybe_checkpoint()
                    ck.checkpoint()
                else:
                    for _ in range(a.steps):
                        step_b()
                row[kind] = time.perf_counter() - t0
                row[kind + "_cpu"] = time.thread_time() - c0
                if kind == "ckpt":
                    end = time.time()
                    ck.wait()
                    # the CPU the checkpointing took outside the program's thread: the
                    # persist and writer threads, and fork children (reaped by now)
                    row["persist_cpu"] = (time.process_time() - p0 - row["ckpt_cpu"]
                                          + _children() - k0)
                    blocks.append(([e for e in ck.store.epochs() if e.epoch >= first], end))
            row["measured"] = row["ckpt"] - row["bare"]
            rows.append(row)
        backend = ck.tracker.backend
        measure_tracking(ck, None)
    # the tracking term: a calibration of this step and pair on a third arena, at
    # the blocks' own cadence (steps per epoch, the forced ones included)
    per_epoch = max(1, round(a.steps / statistics.median(len(es) for es, _ in blocks)))
    # the tracking slowdown measured on the run: every block's epochs together
    # (each block's first epoch's record is of the block before)
    est = tracking_estimate(records([e for es, _ in blocks for e in es[1:]]))
    if est is None:
        raise SystemExit("too few untracked rounds for a tracking estimate: more pairs, longer "
                         "blocks, or a larger --rounds-share")
    slow = est.slowdown
    cal_slow = pc = None
    if a.cal_rounds > 0:  # for comparison: a calibration after the blocks, at their cadence
        with tempfile.TemporaryDirectory() as d:
            cal = memckpt.calibrate(step_c, ar_c, interval_steps=per_epoch,
                                    rounds=a.cal_rounds, pairs=[(tracker, a.mode)], refine=0.0,
                                    workdir=d)
        pc = cal.cost_of(tracker, a.mode)
        if pc.error:
            raise SystemExit(f"calibration of {tracker}/{a.mode} failed: {pc.error}")
        cal_slow = max(0.0, pc.step_cpu_slowdown if pc.step_cpu_slowdown is not None
                       else pc.wall_slowdown)
    for row, (es, end) in zip(rows, blocks):
        o = account(es, now=end, tracking_slowdown=max(0.0, slow))
        recs = [e.extra.get("steps") or {} for e in es[1:]]
        row.update(epochs=len(es), calls=o.call_total_s, waits=o.wait_total_s,
                   wall=o.wall_s, interference_block=o.interference_s or 0.0,
                   tracking_block=(o.tracking_fraction or 0.0) * o.wall_s,
                   flight_steps=o.flight_steps, after_steps=o.after_steps,
                   idle_steps=o.idle_steps,
                   persist_total=sum(e.total_s for e in es),
                   **{k: sum(x.get(k, 0) for x in recs) for k in
                      ("flight_wall_s", "flight_cpu_s", "idle_wall_s", "idle_cpu_s",
                       "after_wall_s", "after_cpu_s", "base_steps", "base_wall_s",
                       "base_cpu_s", "base_round_cpu_s")})
        row["steps_cpu"] = row["flight_cpu_s"] + row["idle_cpu_s"] + row["after_cpu_s"]
        row["records"] = [[x.get(k, 0) for k in STEP_KEYS + AFTER_KEYS + BASE_KEYS]
                          for x in recs]
        row["account_block"] = row["calls"] + row["interference_block"] + row["tracking_block"]
        # the rounds ran in the checkpointed block: what measuring cost, apart
        row["measured_with_rounds"] = row["measured"]
        row["measured"] = row["measured_with_rounds"] - row["base_wall_s"]
    # The account of the run: every checkpointed block's epochs together, as
    # `memckpt show --overhead` accounts a program's run (each block's first
    # epoch left out: its record is of the block before). Its interference
    # rests on every idle step of the run; a block's own few idle steps make a
    # noisy baseline (kept as *_block, for comparison). The run's term is
    # handed to the blocks by their in-flight steps, for the per-pair spread.
    run_epochs = [e for es, _ in blocks for e in es[1:]]
    run_interf, _, _, _ = interference(run_epochs)
    run_recs = records(run_epochs)
    # the baseline the run's term rests on: the steady steps' off-CPU rate, or in
    # intervals too short for a steady step the untracked rounds' (stats.baseline)
    per_cpu, interf_from = baseline(run_recs, sum(r["flight_cpu_s"] + r["after_cpu_s"]
                                                  for r in run_recs))
    per_cpu = per_cpu or 0.0
    for row in rows:  # no steady step in the whole run: no term (None, counted 0)
        row["interference"] = 0.0 if run_interf is None else (
            row["flight_wall_s"] - row["flight_cpu_s"] + row["after_wall_s"]
            - row["after_cpu_s"] - per_cpu * (row["flight_cpu_s"] + row["after_cpu_s"]))
        row["between"] = row["wall"] - row["calls"] - row["interference"] - row["base_wall_s"]
        row["tracking"] = max(0.0, row["between"] * slow / (1 + slow))
        row["account"] = row["calls"] + row["interference"] + row["tracking"]
    assert run_interf is None or \
        abs(sum(r["interference"] for r in rows) - run_interf) <= 1e-6 * max(1.0, abs(run_interf))
    # the tracking slowdown measured against the bare blocks (which a real run does
    # not have): the ckpt blocks' steps' CPU (the stepping thread's, checkpoint calls
    # and rounds left out) against the bare blocks'
    # (median over pairs: an interval now and then takes several times its CPU)
    vs_bare = statistics.median(r["steps_cpu"] / r["bare_cpu"] - 1 for r in rows)

    def with_slowdown(x: float | None) -> float | None:
        """The ratio of the sums with the tracking term at slowdown x."""
        if x is None or math.isnan(x):
            return None
        acc_x = sum(r["account"] - r["tracking"] + max(0.0, r["between"] * x / (1 + x))
                    for r in rows)
        return acc_x / sum(r["measured"] for r in rows)
    # The same decomposition with the untracked blocks as the baseline (which a
    # real run does not have): the calls, the checkpointed steps' off-CPU time
    # beyond the bare blocks' rate, their CPU beyond the bare blocks' (with the
    # waiting that CPU meets at that rate). Near 1, the account's structure is
    # right and what it gets wrong is the baseline it estimates on the run.
    tot = {k: sum(r[k] for r in rows) for k in ("bare", "bare_cpu", "steps_cpu", "calls")}
    bare_rate = (tot["bare"] - tot["bare_cpu"]) / tot["bare_cpu"]
    steps_off = sum(r["flight_wall_s"] + r["idle_wall_s"] + r["after_wall_s"] for r in rows) \
        - tot["steps_cpu"]
    oracle = {"off_cpu_excess_s": steps_off - bare_rate * tot["steps_cpu"],
              "on_cpu_excess_s": (tot["steps_cpu"] - tot["bare_cpu"]) * (1 + bare_rate)}
    oracle["ratio_sum"] = (tot["calls"] + oracle["off_cpu_excess_s"] + oracle["on_cpu_excess_s"]) \
        / sum(r["measured"] for r in rows)
    meas = [r["measured"] for r in rows]
    acc = [r["account"] for r in rows]
    med = statistics.median
    lo, hi = _boot(acc, meas)
    rep = {
        "args": vars(a), "tracker": backend, "uptime_before": load0, "uptime_after": os.getloadavg(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "step_s": step_s,
        "steps_per_epoch": per_epoch,
        # the run's own (untracked rounds), with its 90% interval and what it rests on
        "tracking_slowdown": slow, "tracking_slowdown_90": [est.low, est.high],
        "tracking_rounds": est.segments, "tracking_run_steps": est.run_steps,
        "untracked_steps": est.base_steps,
        "rounds_s_sum": sum(r["base_wall_s"] for r in rows),
        "rounds_share_of_ckpt_wall": sum(r["base_wall_s"] for r in rows)
        / sum(r["ckpt"] for r in rows),
        "tracking_slowdown_vs_bare_blocks": vs_bare,
        "calibration_step_cpu_slowdown": cal_slow,
        "calibration_wall_slowdown": None if pc is None else pc.wall_slowdown,
        "calibration_cpu_slowdown": None if pc is None else pc.slowdown,
        "block_s_median": {"ckpt": med(r["ckpt"] for r in rows),
                           "bare": med(r["bare"] for r in rows)},
        "measured_s": {"median": med(meas), "q1": _pct(meas, .25), "q3": _pct(meas, .75),
                       "sum": sum(meas)},
        "account_s": {"median": med(acc), "q1": _pct(acc, .25), "q3": _pct(acc, .75),
                      "sum": sum(acc)},
        "persist_cpu_s_sum": sum(r["persist_cpu"] for r in rows),
        "terms_s_sum": {k: sum(r[k] for r in rows) for k in ("calls", "waits", "interference",
                                                              "tracking")},
        "ratio_sum": sum(acc) / sum(meas),
        # the account's own uncertainty: the ratio at the ends of the slowdown's interval
        "ratio_sum_at_tracking_90": [with_slowdown(est.low), with_slowdown(est.high)],
        # the rounds' time on both sides (what the program paid for the measuring)
        "ratio_sum_with_rounds": (sum(acc) + sum(r["base_wall_s"] for r in rows))
        / sum(r["measured_with_rounds"] for r in rows),
        "interference_measured": run_interf is not None,
        "interference_from": interf_from,
        "decomposition_against_bare_blocks": oracle,
        "ratio_sum_per_block_baseline": sum(r["account_block"] for r in rows) / sum(meas),
        "off_cpu_per_cpu_s": {
            "baseline": per_cpu, "bare_blocks": bare_rate,
            **{k + "_steps": sum(r[k + "_wall_s"] - r[k + "_cpu_s"] for r in rows)
               / max(1e-12, sum(r[k + "_cpu_s"] for r in rows)) for k in ("flight", "after")}},
        "ratio_sum_90": [lo, hi],
        "ratio_median": med(acc) / med(meas),
        "ratio_without_interference": (sum(acc) - sum(r["interference"] for r in rows)) / sum(meas),
        "ratio_sum_tracking_vs_bare_blocks": with_slowdown(vs_bare),
        "ratio_sum_tracking_calibrated": with_slowdown(cal_slow),
        # the pairs whose bare block took within 15% of the median bare block: the
        # machine's load about the same as usual (the others are in the sums above)
        "steady": _steady(rows),
        "epochs_per_block": med(r["epochs"] for r in rows),
        "flight_after_idle_steps": [sum(r[k] for r in rows) for k in
                                    ("flight_steps", "after_steps", "idle_steps")],
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in rep.items() if k != "rows"}, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rep, fh, indent=1)


if __name__ == "__main__":
    main()
