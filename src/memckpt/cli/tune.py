"""``memckpt tune``: how often to checkpoint, from the MTBF, the RPO and the checkpoint cost."""
from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from .base import CliError, Command, json_arg
from .output import pyplot, table
from .stores import close_store, open_store


def arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--mtbf", required=True, metavar="DURATION",
                   help="mean time between failures of the whole job")
    t.add_argument("--rpo", metavar="DURATION",
                   help="recovery point objective: the most work a failure may lose (default: none)")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--cost", metavar="DURATION", help="the time one checkpoint takes to be durable")
    src.add_argument("--store", metavar="STORE",
                     help="measure the cost: the median total time of this store's incremental epochs")
    t.add_argument("--restart", metavar="DURATION", default=None,
                   help="time to restart from a checkpoint after a failure (default: 0)")
    t.add_argument("--step", metavar="DURATION", default=None,
                   help="the length of one step of the program: also give the interval in steps")
    t.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw the expected overhead against the interval (needs matplotlib)")
    json_arg(t)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return tune(mtbf=args.mtbf, rpo=args.rpo, cost=args.cost, store=args.store,
                restart=args.restart, step=args.step, plot=args.plot)


def _duration(flag: str, text: str | None) -> float | None:
    from ..tuning import parse_duration
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CliError(f"{flag}: {exc}") from None


def tune(*, mtbf: str, rpo: str | None = None, cost: str | None = None, store: str | None = None,
         restart: str | None = None, step: str | None = None, plot: str | None = None) -> dict[str, Any]:
    """The checkpoint interval for an MTBF, an RPO and a cost (given, or the median
    ``total_s`` of a store's incremental epochs): the recommendation, and Young's,
    Daly's and the RPO cap's intervals side by side. Draws the waste curve to
    ``plot`` if asked (needs matplotlib)."""
    from .. import tuning as tn
    if plot is not None:
        pyplot()  # fail now, not after the work
    mtbf_s = _duration("--mtbf", mtbf)
    rpo_s = _duration("--rpo", rpo)
    restart_s = _duration("--restart", restart) or 0.0
    step_s = _duration("--step", step)
    assert mtbf_s is not None
    for flag, v in (("--mtbf", mtbf_s), ("--rpo", rpo_s), ("--step", step_s)):
        if v is not None and v <= 0:
            raise CliError(f"{flag} must be longer than zero")
    if (cost is None) == (store is None):
        raise CliError("give the checkpoint cost: --cost DURATION, or --store STORE to measure it")
    if cost is not None:
        cost_s = _duration("--cost", cost)
        assert cost_s is not None
        if cost_s <= 0:
            raise CliError("--cost must be longer than zero")
        source = "--cost"
        measured = None
    else:
        st = open_store(store)  # type: ignore[arg-type]
        try:
            cost_s = tn.cost_from_store(st)
            incs = [e for e in st.epochs() if e.kind == "incremental"]
            measured = {"epochs": len(incs), "median_total_s": cost_s,
                        "median_pause_s": float(np.median([e.pause_s for e in incs]))}
        finally:
            close_store(st)
        source = f"store {store} (median total_s of {measured['epochs']} incremental epochs)"
    rec = tn.recommend(cost_s, mtbf_s, rpo_s, restart_s, step_s)

    def row(method: str, interval: float) -> dict[str, Any]:
        return {"method": method, "interval_s": interval,
                "interval_steps": None if step_s is None else max(1, (
                    math.floor if method == "rpo-cap" else round)(interval / step_s * (1 + 1e-12))),
                "expected_overhead": tn.expected_overhead(interval, cost_s, mtbf_s, restart_s),
                "expected_waste": tn.expected_waste(interval, cost_s, mtbf_s, restart_s),
                "expected_lost_work_s": tn.expected_lost_work(interval, cost_s, mtbf_s),
                "worst_lost_work_s": interval + cost_s,
                "within_rpo": None if rpo_s is None else interval + cost_s <= rpo_s * (1 + 1e-12)}

    methods = [row("young", tn.young_interval(cost_s, mtbf_s)),
               row("daly", tn.daly_interval(cost_s, mtbf_s))]
    if rpo_s is not None:
        methods.append(row("rpo-cap", tn.rpo_cap(rpo_s, cost_s)))
    rep: dict[str, Any] = {
        "inputs": {"cost_s": cost_s, "cost_source": source, "measured": measured,
                   "mtbf_s": mtbf_s, "rpo_s": rpo_s, "restart_s": restart_s, "step_s": step_s},
        "recommended": {"interval_s": rec.interval_s, "interval_steps": rec.interval_steps,
                        "method": rec.method, "expected_overhead": rec.expected_overhead,
                        "expected_waste": tn.expected_waste(rec.interval_s, cost_s, mtbf_s,
                                                            restart_s),
                        "expected_lost_work_s": rec.expected_lost_work,
                        "worst_lost_work_s": rec.worst_lost_work_s, "why": rec.why},
        "methods": methods,
        "plot": None,
    }
    if plot is not None:
        plot_waste(rep, plot)
        rep["plot"] = plot
    return rep


def plot_waste(rep: dict[str, Any], out: str) -> None:
    """Expected overhead against the interval (log scale), with the choices marked."""
    plt = pyplot()

    from .. import tuning as tn
    i = rep["inputs"]
    c, m, r = i["cost_s"], i["mtbf_s"], i["restart_s"]
    xs = [row["interval_s"] for row in rep["methods"]] + [rep["recommended"]["interval_s"]]
    lo, hi = min(xs) / 20, min(max(xs) * 20, 50 * m)
    grid = np.geomspace(lo, hi, 400)
    ys = [100 * tn.expected_overhead(float(x), c, m, r) for x in grid]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(grid, ys, color="black", lw=1.5, label="expected overhead")
    styles = {"young": ("tab:blue", "--"), "daly": ("tab:green", ":"), "rpo-cap": ("tab:red", "-")}
    for row in rep["methods"]:
        col, ls = styles[row["method"]]
        ax.axvline(row["interval_s"], color=col, ls=ls, lw=1,
                   label=f"{row['method']}: {tn.fmt_duration(row['interval_s'])}")
    if i["rpo_s"] is not None:
        ax.axvspan(rep["methods"][-1]["interval_s"], hi, color="tab:red", alpha=0.07,
                   label="beyond the RPO")
    rc = rep["recommended"]
    ax.plot([rc["interval_s"]], [100 * rc["expected_overhead"]], "o", color="tab:orange",
            label=f"recommended ({rc['method']})")
    ax.set_xscale("log")
    ax.set_xlabel("checkpoint interval (s of work)")
    ax.set_ylabel("expected overhead (% of wall time)")
    ax.set_ylim(0, min(100, max(5 * 100 * rc["expected_overhead"], 1)))
    ax.set_title(f"C = {tn.fmt_duration(c)}, MTBF = {tn.fmt_duration(m)}, "
                 f"R = {tn.fmt_duration(r)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(out)
    finally:
        plt.close(fig)


def format_tune(rep: dict[str, Any]) -> str:
    from ..tuning import fmt_duration as fd
    i, rc = rep["inputs"], rep["recommended"]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731

    def secs(v: float) -> str:
        return f"{v:.3g} s" if v < 100 else f"{v:.0f} s"

    steps = (f" = {rc['interval_steps']} steps of {fd(i['step_s'])}"
             if rc["interval_steps"] is not None else "")
    head = [f"checkpoint cost C {fd(i['cost_s'])} ({i['cost_source']})",
            f"MTBF M {fd(i['mtbf_s'])}, RPO {fd(i['rpo_s']) if i['rpo_s'] is not None else 'none'}"
            f", restart R {fd(i['restart_s'])}"]
    if i["measured"]:
        head[0] += f"; median pause {fd(i['measured']['median_pause_s'])}"
    step = i["step_s"] is not None
    rpo = i["rpo_s"] is not None
    headers = ["method", "interval"] + (["steps"] if step else []) + \
        ["overhead", "lost work (mean)", "lost work (worst)"] + (["within RPO"] if rpo else [])
    rows = []
    for row in rep["methods"]:
        rows.append([row["method"], secs(row["interval_s"])]
                    + ([row["interval_steps"]] if step else [])
                    + [pct(row["expected_overhead"]), secs(row["expected_lost_work_s"]),
                       secs(row["worst_lost_work_s"])]
                    + ([("yes" if row["within_rpo"] else "no")] if rpo else []))
    out = head + [
        "",
        f"checkpoint every {secs(rc['interval_s'])}"
        + (f" ({fd(rc['interval_s'])})" if rc["interval_s"] >= 120 else "") + f" of work{steps}"
        f"  [{rc['method']}]",
        f"  expected overhead   {pct(rc['expected_overhead'])} of wall time",
        f"  expected lost work  {secs(rc['expected_lost_work_s'])} per failure "
        f"(at most {secs(rc['worst_lost_work_s'])})",
        f"  why: {rc['why']}",
        "",
        table(headers, rows),
    ]
    if rep["plot"]:
        out += ["", f"plot written to {rep['plot']}"]
    return "\n".join(out)


COMMAND = Command(
    "tune", arguments, run, format_tune,
    help="how often to checkpoint, from the MTBF, the RPO and the checkpoint cost",
    description="Recommend a checkpoint interval: Daly's higher-order optimum for checkpoint cost C "
                "and mean time between failures M, capped so that no failure loses more than the "
                "RPO of work (interval + C <= RPO). C is --cost, or the median total time of a "
                "store's incremental epochs. Prints the expected overhead and lost work, and "
                "Young's, Daly's and the RPO cap's intervals side by side. Durations: 150ms, 2s, "
                "5m, 1.5h, 2d, or a number of seconds. See docs/tuning.md for the model.",
    examples="  memckpt tune --mtbf 6h --rpo 5m --cost 2s\n"
             "  memckpt tune --mtbf 24h --store memckpt-demo --step 0.1s\n"
             "  memckpt tune --mtbf 6h --rpo 5m --cost 2s --restart 30s --json | jq .recommended\n"
             "  memckpt tune --mtbf 2h --cost 20s --plot waste.png     (needs matplotlib)")
