"""``memckpt bench --workload MODULE:FUNCTION``: the benchmark matrix on the
user's own step instead of the standard random-page writer.

``FUNCTION(arena)`` makes its arrays in the arena and returns the step (the
convention of ``memckpt calibrate``, whose import helper this uses). Every
(tracker, capture mode) pair this kernel runs (sync included: the baseline
of the modes) is measured by :func:`memckpt.calibrate` (its measuring loop:
untracked intervals of ``--steps`` steps beside tracked ones ending in a
checkpoint) with no re-measuring of near ties; the report keeps what a
benchmark wants of each: the pause, the ``checkpoint()`` call, the time to
durable, the step's wall-clock slowdown between checkpoints, the CPU
checkpointing took (tracking, checkpoint, persist), the bytes an interval's
epoch wrote and the extra memory. Beside them, in the same run and on the
same arrays, what a program does without memckpt: ``np.save`` of every array
with ``fsync`` (and the other peers of ``memckpt bench``), measured before
and after the pairs (a noisy machine drifts: the two medians are averaged).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .base import CliError
from .bench_measure import peers_fixed
from .calibrate import load_target, make_step
from .output import fmt_bytes, fmt_seconds, table

DEFAULT_MIB = 64
BASELINE = "np.save+fsync"


def pairs(backends: list[str] | None, modes: list[str] | None) -> list[tuple[str, str]]:
    """Every pair this kernel runs, narrowed by --backends and --modes."""
    from ..calibrate import ALL_MODES, pairs_available
    from ..kernel import trackers
    infos = {t.name: t for t in trackers()}
    for b in backends or []:
        if b not in infos:
            raise CliError(f"--backends: unknown backend {b!r}; known: {', '.join(infos)}")
        if not infos[b].available:
            raise CliError(f"--backends: {b} is not available here: {infos[b].reason}")
    for m in modes or []:
        if m not in ALL_MODES:
            raise CliError(f"--modes: unknown capture mode {m!r}; known: {', '.join(ALL_MODES)}")
    out = [(t, m) for t, m in pairs_available(ALL_MODES)
           if (not backends or t in backends) and (not modes or m in modes)]
    if not out:
        raise CliError(f"no pair this kernel runs is in --backends {backends} x --modes {modes} "
                       f"(background runs only on uffd-sync)")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..arena import Arena
    from ..calibrate import calibrate
    for flag, given in (("--full", args.full), ("--ratios", args.ratios), ("--plot", args.plot),
                        ("--no-slowdown", args.no_slowdown)):
        if given:
            raise CliError(f"{flag} is for the standard matrix, not with --workload (whose step "
                           f"decides what is written)")
    if args.size_mib is not None and len(args.size_mib) > 1:
        raise CliError("--workload runs on one arena: give one --size-mib")
    if args.dir is not None and not Path(args.dir).is_dir():
        raise CliError(f"--dir {args.dir}: no such directory")
    todo = pairs(args.backends, args.modes)
    load_target(args.workload)  # a wrong name fails before the arena is made
    mib = args.size_mib[0] if args.size_mib else DEFAULT_MIB
    load0, t0 = os.getloadavg(), time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="memckpt-bench-", dir=args.dir))
    arena = Arena(mib << 20)
    try:
        step = make_step(args.workload, arena)
        step()  # its first touch of the arena's pages: not the steady state
        before = peers_fixed(arena, args.rounds, tmp)
        cal = calibrate(step, arena, interval_steps=args.steps, rounds=args.rounds,
                        pairs=todo, refine=0.0, workdir=args.dir)
        after = peers_fixed(arena, args.rounds, tmp)
        del step
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            arena.close()
        except BufferError:  # the user's module keeps its arrays
            pass
    peers = {k: statistics.mean((before[k], after[k])) for k in before}
    base = peers[BASELINE]
    rows = []
    for p in sorted(cal.pairs, key=lambda p: p.cost_fraction):
        r: dict[str, Any] = {"tracker": p.tracker, "mode": p.mode, "error": p.error}
        if p.error is None:
            r.update(pause_s=p.pause_s, call_s=p.call_s, total_s=p.total_s,
                     wall_slowdown=p.wall_slowdown, cpu_slowdown=p.slowdown,
                     epoch_bytes=p.epoch_bytes, pages_dirty=p.pages_dirty,
                     extra_bytes=p.extra_bytes, cost_s=p.cost_s, cost_fraction=p.cost_fraction,
                     baseline_over_total=base / p.total_s if p.total_s > 0 else None,
                     baseline_over_call=base / p.call_s if p.call_s > 0 else None)
        rows.append(r)
    steps = [p.step_s for p in cal.pairs if p.error is None]
    return {
        "workload": args.workload,
        "config": {"size_mib": mib, "steps": args.steps, "rounds": args.rounds,
                   "pairs": [list(p) for p in todo], "dir": args.dir or tempfile.gettempdir()},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "host": platform.node(),
                    "loadavg_start": [round(x, 2) for x in load0],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "seconds": round(time.monotonic() - t0, 1),
        "step_s": statistics.median(steps) if steps else None,
        "baseline": BASELINE, "peers_s": peers,
        "peers_s_before": before, "peers_s_after": after,
        "rows": rows,
    }


def _x(v: float | None) -> str:
    return "-" if v is None else (f"{v:.2f}x" if v < 10 else f"{v:.0f}x")


def _pct(v: float) -> str:
    return f"{100 * v:+.1f}%"


def format_workload(rep: dict[str, Any]) -> str:
    c, m = rep["config"], rep["machine"]
    out = [f"memckpt bench --workload {rep['workload']}: {c['size_mib']} MiB arena; per pair "
           f"{c['rounds']} intervals of {c['steps']} steps, each ending in a checkpoint "
           f"(medians); a step takes {fmt_seconds(rep['step_s'])} untracked",
           f"{m['cpus']} CPUs, kernel {m['kernel']}, load average {m['loadavg_start'][0]:.2f} at "
           f"the start, {m['loadavg_end'][0]:.2f} at the end; {rep['seconds']:.0f} s",
           f"{rep['baseline']} of every array (same run, same arrays): "
           f"{fmt_seconds(rep['peers_s'][rep['baseline']])}"]
    body = []
    for r in rep["rows"]:
        if r["error"]:
            body.append([r["tracker"], r["mode"]] + ["-"] * 10 + [r["error"]])
            continue
        body.append([r["tracker"], r["mode"], fmt_seconds(r["pause_s"]),
                     fmt_seconds(r["call_s"]), fmt_seconds(r["total_s"]),
                     _x(r["baseline_over_total"]), _pct(r["wall_slowdown"]),
                     _pct(r["cpu_slowdown"]), fmt_bytes(r["epoch_bytes"]),
                     f"{r['pages_dirty']:,}",
                     fmt_bytes(r["extra_bytes"]) if r["extra_bytes"] is not None else "-",
                     f"{100 * r['cost_fraction']:.3g}%", ""])
    out += ["", "pause: the program stopped; call: checkpoint() blocked it; durable: until the "
            "epoch was on disk; np.save/durable: above 1x memckpt is faster; slowdown: the "
            "steps between checkpoints (wall clock, fastest interval); CPU: tracking, "
            "checkpoints and persists against the untracked steps; epoch: what one interval "
            "wrote; cost: checkpointing's CPU per interval, of the work",
            table(["tracker", "mode", "pause", "call", "durable", "np.save/durable", "slowdown",
                   "CPU", "epoch", "pages", "extra mem", "cost", "error"], body)]
    return "\n".join(out)
