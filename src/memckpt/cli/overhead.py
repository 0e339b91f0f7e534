"""``memckpt show STORE --overhead``: what checkpointing cost a run
(:mod:`memckpt.checkpoint.stats`), as a table or JSON a harness can keep."""
from __future__ import annotations

import argparse
from typing import Any

from .base import CliError
from .output import fmt_bytes, fmt_seconds, table
from .stores import read_infos
from ..tuning import fmt_duration


def _duration(text: str) -> float:
    from ..tuning import parse_duration
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _fraction(text: str) -> float:
    try:
        v = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v < 10:
        raise argparse.ArgumentTypeError(f"must be a fraction such as 0.006 or 0.6%, not {text}")
    return v


def arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--overhead: what checkpointing cost a run")
    g.add_argument("--overhead", action="store_true",
                   help="account for a run's checkpointing cost instead of explaining one epoch "
                        "(EPOCH, if given, is the run's first epoch; default: the latest run)")
    g.add_argument("--mtbf", type=_duration, help="the job's MTBF (e.g. 6h): the model's "
                                                  "expected work lost per failure")
    g.add_argument("--interval", type=_duration,
                   help="the target interval to compare the achieved one with (e.g. 5m)")
    g.add_argument("--tracking-slowdown", type=_fraction, metavar="FRACTION",
                   help="the tracker's cost between checkpoints, from a calibration "
                        "(e.g. 0.006 or 0.6%%; default: the one a Checkpointer with "
                        "mode='auto' and a calibration recorded in the epochs, if any)")
    g.add_argument("--all", action="store_true", dest="all_runs",
                   help="account every epoch of the store as one run")


def report(store: Any, args: argparse.Namespace) -> dict[str, Any]:
    from ..checkpoint.stats import account, runs
    infos, bad = read_infos(store)
    if not infos:
        raise CliError(f"the store {store.path} has no committed epochs to account for")
    if args.epoch not in (None, "latest"):
        try:
            first = int(args.epoch)
        except ValueError:
            raise CliError(f"EPOCH must be a number (the run's first epoch), not {args.epoch!r}") \
                from None
        chosen = [e for e in infos if e.epoch >= first]
        if not chosen:
            raise CliError(f"no epochs from {first} on in {store.path}")
        how = f"epochs from {first}"
    elif args.all_runs:
        chosen, how = infos, "every epoch"
    else:
        rs = runs(infos)
        chosen, how = rs[-1], f"the latest of {len(rs)} run(s)"
    acc = account(chosen, interval=args.interval, mtbf=args.mtbf,
                  tracking_slowdown=args.tracking_slowdown)
    return {"store": str(store.path), "selection": how, "unreadable": [n for n, _ in bad],
            "overhead": acc.to_dict()}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.3g}%"


def _tracking(o: dict[str, Any]) -> str:
    if o["tracking_fraction"] is None:
        return ("- (give --tracking-slowdown from a calibration, or measure it on the run: "
                "memckpt.checkpoint.tracking.measure_tracking)")
    if o.get("tracking_from") == "run":
        lo, hi = o["tracking_fraction_90"] or (None, None)
        slo, shi = o["tracking_slowdown_90"] or (None, None)
        return (f"{_pct(o['tracking_fraction'])} [90%: {_pct(lo)}, {_pct(hi)}] (measured on the "
                f"run: steps {_pct(o['tracking_slowdown'])} slower in CPU than untracked ones "
                f"[{_pct(slo)}, {_pct(shi)}], {o['tracking_rounds']} rounds of "
                f"{o['untracked_steps']} untracked steps, which took "
                f"{fmt_seconds(o['untracked_s'])})")
    if o.get("tracking_from") == "calibration":
        return (f"{_pct(o['tracking_fraction'])} (estimated from the calibration the epochs "
                f"record: memckpt show STORE; --tracking-slowdown overrides it)")
    return _pct(o["tracking_fraction"])


def _interference(o: dict[str, Any]) -> str:
    if o.get("interference_s") is None:
        return ("- (needs maybe_checkpoint() at every step, and steps while an epoch "
                "persisted and long after: an interval over twice the persist, or "
                "untracked rounds: memckpt.checkpoint.tracking.measure_tracking)")
    base = f"; {o['flight_steps']} + {o.get('after_steps', 0)} steps"
    if o.get("interference_from") == "rounds":  # no steady step: the rounds' rate
        base = "the untracked rounds'" + base
    else:
        base = f"the steady steps'{base} vs {o['idle_steps']}"
    return (f"{_pct(o['interference_fraction'])} ({fmt_seconds(o['interference_s'])}: the "
            f"steps' off-CPU time while an epoch persisted and in the catch-up after it, "
            f"beyond {base})")


def format_overhead(rep: dict[str, Any]) -> str:
    o = rep["overhead"]
    s = fmt_seconds
    rows = [
        ["epochs", f"{o['epochs']} ({o['first_epoch']}-{o['last_epoch']}, {o['full_epochs']} full)"],
        ["wall time", f"{s(o['wall_s'])} (first checkpoint call to the last epoch durable)"],
        ["stopped by checkpoint()", f"{_pct(o['call_fraction'])} ({s(o['call_total_s'])})"],
        ["  of it in pauses", f"{_pct(o['pause_fraction'])} ({s(o['pause_total_s'])})"],
        ["  of it waiting (backpressure)",
         f"{_pct(o['wait_fraction'])} ({s(o['wait_total_s'])}: the epoch before was still "
         f"persisting)"],
        ["tracking between checkpoints", _tracking(o)],
        ["steps slowed while persisting", _interference(o)],
        *([["untracked rounds", f"{_pct(o['untracked_s'] / o['wall_s'])} "
                                f"({fmt_seconds(o['untracked_s'])}: measuring the tracking "
                                f"term; in the overhead)"]] if o.get("untracked_s") else []),
        ["overhead", _pct(o["overhead_fraction"])],
        ["pause p50 / p90 / p99 / max", " / ".join(s(o[k]) for k in
                                                  ("pause_p50_s", "pause_p90_s", "pause_p99_s",
                                                   "pause_max_s"))],
        ["checkpoint() call p50 / p99", f"{s(o['call_p50_s'])} / {s(o['call_p99_s'])}"],
        ["written", f"{fmt_bytes(o['bytes_on_disk'])}; "
                    f"{fmt_bytes(o['write_bytes_per_s'])}/s while persisting, "
                    f"{fmt_bytes(o['disk_bytes_per_wall_s'])}/s of wall time"],
        ["checkpoint cost C", f"{s(o['checkpoint_cost_s'])} (median total_s of the increments)"],
        ["interval achieved", s(o["interval_achieved_s"]) + " (median: the program ran this long "
                                                            "between checkpoint calls)"],
    ]
    if o["interval_target_s"] is not None:
        rows.append(["interval target", f"{s(o['interval_target_s'])} "
                                        f"(achieved / target = {o['interval_ratio']:.3g})"
                     if o["interval_ratio"] is not None else s(o["interval_target_s"])])
    rows += [
        ["work lost per failure", f"{s(o['lost_work_mean_s'])} mean, {s(o['lost_work_worst_s'])} "
                                  f"worst (measured: a failure at a uniform instant)"],
    ]
    if o["lost_work_model_s"] is not None:
        rows.append(["  at the MTBF", f"{s(o['lost_work_model_s'])} expected (MTBF "
                                      f"{fmt_duration(o['mtbf_s'])}, at the achieved interval)"])
    head = f"overhead of {rep['store']} ({rep['selection']})"
    if rep["unreadable"]:
        head += f"; unreadable epochs left out: {rep['unreadable']}"
    return "\n".join([head, table(["", "value"], rows)])
