"""``memckpt calibrate MODULE:FUNCTION``: measure every (tracker, mode) pair
on the user's own step (memckpt.calibrate) and say which to use."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from .base import CliError, Command, json_arg, positive
from .output import fmt_bytes, fmt_seconds, table


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MODULE:FUNCTION",
                   help="FUNCTION(arena) makes its arrays in the arena and returns the step: a "
                        "callable with no arguments that writes them")
    p.add_argument("--mib", type=positive, default=64, help="the arena's size (default: 64 MiB)")
    p.add_argument("--steps", type=positive, default=5,
                   help="steps between two checkpoints while measuring (default: 5)")
    p.add_argument("--rounds", type=positive, default=4,
                   help="intervals measured per pair (default: 4)")
    p.add_argument("--pairs", help="only these pairs, e.g. uffd-async/copy,compare/copy "
                                   "(default: every pair this kernel offers)")
    p.add_argument("--mtbf", help="the job's MTBF (e.g. 6h): adds the expected lost work and "
                                  "costs each pair at its Daly interval")
    p.add_argument("--interval", help="cost the pairs at this interval (e.g. 5m)")
    p.add_argument("--workdir", help="where the trial stores go (default: the temporary "
                                     "directory; use the disk the real store will be on)")
    p.add_argument("--save", metavar="FILE.json",
                   help="also write the calibration to FILE.json, for "
                        "Checkpointer(mode='auto', calibration='FILE.json')")
    json_arg(p)


def _duration(flag: str, text: str | None) -> float | None:
    from ..tuning import parse_duration
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as e:
        raise CliError(f"{flag}: {e}") from None


def load_target(target: str) -> Any:
    """FUNCTION of MODULE:FUNCTION, imported: the user's own code, named on the
    command line (as `python -m MODULE` would run it); never anything read from
    a store. `memckpt calibrate` and `memckpt bench --workload` use it. MODULE
    is found as `python -m` finds one: the current directory first (the
    `memckpt` script's own sys.path starts at its bin/ directory), then
    PYTHONPATH and the installed packages."""
    mod, sep, fn = target.partition(":")
    if not sep or not mod or not fn:
        raise CliError(f"give MODULE:FUNCTION (e.g. mysim:make_step), not {target!r}")
    if not {"", os.getcwd()} & set(sys.path):
        sys.path.insert(0, os.getcwd())
    try:
        m = importlib.import_module(mod)
    except ImportError as e:
        raise CliError(f"cannot import {mod}: {e}") from None
    f = getattr(m, fn, None)
    if not callable(f):
        raise CliError(f"{mod} has no {fn} (a function of the arena returning the step)")
    return f


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..arena import Arena
    from ..calibrate import calibrate
    load_target(args.target)  # a wrong name fails before the arena is made
    pairs = None
    if args.pairs:
        try:
            pairs = [tuple(x.strip().split("/")) for x in args.pairs.split(",")]
            assert all(len(p) == 2 for p in pairs)
        except AssertionError:
            raise CliError(f"--pairs: give TRACKER/MODE,..., not {args.pairs!r}") from None
    arena = Arena(args.mib << 20)
    try:
        step = make_step(args.target, arena)
        cal = calibrate(step, arena, interval_steps=args.steps, rounds=args.rounds,
                        pairs=pairs,  # type: ignore[arg-type]
                        mtbf=_duration("--mtbf", args.mtbf),
                        interval=_duration("--interval", args.interval), workdir=args.workdir)
        del step
    finally:
        try:
            arena.close()
        except BufferError:  # the user's module keeps its arrays
            pass
    rep = cal.to_dict()
    rep["target"] = args.target
    if args.save:
        try:
            with open(args.save, "w", encoding="utf-8") as f:
                json.dump(rep, f, indent=1)
        except OSError as e:
            raise CliError(f"--save {args.save}: {e.strerror or e}") from None
        rep["saved"] = args.save
    return rep


def make_step(target: str, arena: Any) -> Any:
    """FUNCTION(arena), checked to return a step."""
    step = load_target(target)(arena)
    if not callable(step):
        raise CliError(f"{target}(arena) returned {type(step).__name__}, not a step "
                       f"(a callable with no arguments)")
    return step


def format_calibration(rep: dict[str, Any]) -> str:
    rows = []
    for p in sorted(rep["pairs"], key=lambda p: p["cost_fraction"]):
        if p["error"]:
            rows.append([p["tracker"], p["mode"], "-", "-", "-", "-", "-", "-", p["error"]])
            continue
        rows.append([p["tracker"], p["mode"], f"{100 * p['slowdown']:.3g}%",
                     fmt_seconds(p["pause_s"]), fmt_seconds(p["call_s"]),
                     fmt_seconds(p["total_s"]),
                     fmt_bytes(p["extra_bytes"]) if p["extra_bytes"] is not None else "-",
                     fmt_seconds(p["cost_s"]), f"{100 * p['cost_fraction']:.3g}%"])
    b = rep["best"]
    return "\n".join([
        f"calibration of {rep['target']}: {rep['rounds']} intervals of {rep['interval_steps']} "
        f"steps per pair",
        table(["tracker", "mode", "CPU slowdown", "pause", "call", "durable", "extra memory",
               "cost/interval", "of the work"], rows),
        "",
        f"picked {b['tracker']}/{b['mode']}: {rep['why']}",
        f"  use: Checkpointer(arena, store, tracker={b['tracker']!r}, mode={b['mode']!r})",
    ] + ([f"  or: Checkpointer(arena, store, mode='auto', calibration={rep['saved']!r}) "
          f"(saved there)"] if rep.get("saved") else []))


COMMAND = Command(
    "calibrate", arguments, run, format_calibration,
    help="measure each tracker and capture mode on your own step, and pick one",
    description="Run a few intervals of your step under each available tracker and capture mode "
                "and measure what each costs it: the CPU slowdown between checkpoints (tracking, "
                "checkpoint, persist), the pause, the time to durable and the extra memory; pick "
                "the pair with the least cost per interval (docs/tuning.md).",
    examples="  memckpt calibrate mysim:make_step --mib 256\n"
             "  memckpt calibrate mysim:make_step --pairs uffd-async/copy,compare/copy --json\n"
             "  memckpt calibrate mysim:make_step --save cal.json   then "
             "Checkpointer(..., mode='auto', calibration='cal.json')")
