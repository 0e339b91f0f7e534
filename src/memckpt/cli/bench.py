"""``memckpt bench``: the standard benchmark matrix, measured in one run.

For backends x capture modes x dirty ratios x arena sizes: the median collect
time, checkpoint pause, total and extra memory, beside the floor and beside
what users do today on the same arrays in the same run, then the program's own
slowdown from tracking. This module holds the command's arguments, its tables
and its plot; :mod:`.bench_run` runs the matrix, :mod:`.bench_measure` each
measurement.
"""
from __future__ import annotations

import argparse
from typing import Any

from . import bench_run, bench_workload
from .base import Command, json_arg, percent, positive, progress_arg
from .bench_measure import PEERS
from .output import fmt_seconds, progress_wanted, pyplot, table


def arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("--full", action="store_true",
                   help="the whole matrix: every backend in every mode; 256 MiB and 1 GiB; "
                        "0.1%%, 1%%, 10%% and 100%%")
    b.add_argument("--size-mib", type=positive, nargs="+", default=None, metavar="MIB",
                   help="arena size(s) in MiB (default: 1024; with --full: 256 1024)")
    b.add_argument("--ratios", type=percent, nargs="+", default=None, metavar="PCT",
                   help="percent of the pages written between checkpoints "
                        "(default: 1 10; with --full: 0.1 1 10 100)")
    b.add_argument("--rounds", type=positive, default=3, metavar="N",
                   help="rounds per measurement; the tables show medians (default: 3)")
    b.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help="only these backends (default: every available one)")
    b.add_argument("--modes", nargs="+", default=None, metavar="MODE",
                   help="measure every chosen backend in each of these capture modes (copy, fork, "
                        "background, sync; default: every backend in copy, auto's in the others)")
    b.add_argument("--dir", default=None, metavar="DIR",
                   help="where the temporary stores and files go, i.e. the filesystem "
                        "measured (default: the system's temporary directory)")
    b.add_argument("--no-slowdown", action="store_true",
                   help="skip the program-slowdown runs")
    b.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw the checkpoint totals and the peers' times (needs matplotlib)")
    b.add_argument("--workload", metavar="MODULE:FUNCTION", default=None,
                   help="measure every tracker x mode on your own step instead: FUNCTION(arena) "
                        "makes its arrays in the arena and returns the step (as for `memckpt "
                        "calibrate`); --size-mib is the arena's (default: 64), --rounds the "
                        "intervals per pair")
    b.add_argument("--steps", type=positive, default=5, metavar="N",
                   help="with --workload: steps between two checkpoints (default: 5)")
    json_arg(b)
    progress_arg(b)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.workload is not None:
        return bench_workload.run(args)
    if args.plot is not None:
        pyplot()  # fail now, not after the work
    rep = bench_run.run(sizes_mib=args.size_mib, ratios=args.ratios, full=args.full,
                        rounds=args.rounds, backends=args.backends, modes=args.modes,
                        directory=args.dir, slowdown=not args.no_slowdown,
                        progress=progress_wanted(args.progress))
    if args.plot is not None:
        plot_bench(rep, args.plot)
        rep["plot"] = args.plot
    return rep


def plot_bench(rep: dict[str, Any], out: str) -> None:
    """Checkpoint total per backend and each peer's time, against the dirty ratio."""
    plt = pyplot()
    sizes = rep["config"]["sizes_mib"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for b, mode in rep["config"]["pairs"]:
            rs = [r for r in rep["rows"]
                  if r["backend"] == b and r["mode"] == mode and r["size_mib"] == size]
            if rs:
                ax.plot([r["ratio_pct"] for r in rs], [r["total_s"] for r in rs], "o-",
                        label=f"{b} {mode}")
        ps = [p for p in rep["peers"] if p["size_mib"] == size]
        x = [p["ratio_pct"] for p in ps]
        ax.plot(x, [p["floor_s"] for p in ps], "k--", label="floor")
        for name in PEERS:
            ax.plot(x, [p["peers_s"][name] for p in ps], ":", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pages written between checkpoints (%)")
        ax.set_ylabel("seconds (median)")
        ax.set_title(f"{size} MiB arena")
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(out)
    finally:
        plt.close(fig)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _x(v: float) -> str:
    return f"{v:.1f}x" if v < 100 else f"{v:.0f}x"


def format_bench(rep: dict[str, Any]) -> str:
    if "workload" in rep:
        return bench_workload.format_workload(rep)
    c, m = rep["config"], rep["machine"]
    out = [f"memckpt bench: {', '.join(f'{s} MiB' for s in c['sizes_mib'])} arena; "
           f"{', '.join(f'{p:g}%' for p in c['ratios_pct'])} of its pages written between "
           f"checkpoints; medians of {c['rounds']} round(s); store in {c['dir']}",
           f"{m['cpus']} CPUs, kernel {m['kernel']}, load average {m['loadavg_start'][0]:.2f} at "
           f"the start, {m['loadavg_end'][0]:.2f} at the end; {rep['seconds']:.0f} s"]
    for s in c["skipped"]:
        out.append(f"skipped {s['backend']}: {s['reason']}")
    for s in c.get("impossible", []):
        out.append(f"skipped {s['backend']} in mode {s['mode']}: {s['reason']}")
    if c["note"]:
        out.append(f"note: {c['note']}")
    short = {"np.save+fsync": "np.save", "np.savez+fsync": "savez", "pickle+fsync": "pickle",
             "blake3-pages+fsync": "blake3", "arr.copy": "copy"}
    headers = ["backend", "mode", "arena", "dirty", "pages", "collect", "pause", "call", "total", "floor",
               "pause/floor", "total/floor", "extra mem"] + [f"{short[p]}/total (/pause)" for p in PEERS]
    body = []
    for r in rep["rows"]:
        body.append([r["backend"], r["mode"], f"{r['size_mib']} MiB", f"{r['ratio_pct']:g}%",
                     f"{r['dirty_pages']:,}", fmt_seconds(r["collect_s"]),
                     fmt_seconds(r["pause_s"]), fmt_seconds(r.get("call_s")),
                     fmt_seconds(r["total_s"]),
                     fmt_seconds(r["floor_s"]), _x(r["pause_over_floor"]),
                     _x(r["total_over_floor"]), _mib(r["extra_bytes"])]
                    + [f"{_x(r['peer_over_total'][p])} ({_x(r['peer_over_pause'][p])})"
                       for p in PEERS])
    out += ["", "Checkpoints (medians) against the floor and against each peer: "
            "peer's time / memckpt's checkpoint total (/ pause); above 1x, memckpt is faster. "
            "pause: what the program is stopped for; total: until the epoch is durable; "
            "extra mem: staging (copy, background, sync) or what the parent's writes "
            "duplicated (fork)",
            table(headers, body)]
    ph = ["arena", "dirty", "floor copy", "floor scan"] + PEERS
    pb = [[f"{p['size_mib']} MiB", f"{p['ratio_pct']:g}%", fmt_seconds(p["floor_copy_s"]),
           fmt_seconds(p["floor_scan_s"])] + [fmt_seconds(p["peers_s"][n]) for n in PEERS]
          for p in rep["peers"]]
    out += ["", "The floor (memcpy of the dirty pages; one bare PAGEMAP_SCAN) and the peers "
            "(medians, same arrays, same run)", table(ph, pb)]
    s = rep["slowdown"]
    if s:
        sh = ["backend", "mode", "checkpoint every", "compute", "slowdown", "with pauses"]
        sb = [[r["backend"], r["mode"], f"{r['every']} iteration{'s' if r['every'] > 1 else ''}",
               fmt_seconds(r["compute_s"]), _x(r["slowdown"]), _x(r["slowdown_with_pauses"])]
              for r in s["rows"]]
        out += ["", f"The program's slowdown from tracking: {s['iterations']} stencil iterations "
                f"over {s['window_rows']} of {s['grid'][0]} rows of a {s['size_mib']} MiB grid "
                f"({s['written_per_iteration_mib']} MiB written per iteration); untracked "
                f"{fmt_seconds(s['untracked_s'])}; ratios to that", table(sh, sb)]
    if rep["plot"]:
        out += ["", f"plot written to {rep['plot']}"]
    return "\n".join(out)


COMMAND = Command(
    "bench", arguments, run, format_bench,
    help="the standard benchmark: checkpoint cost beside the floor and np.save & co",
    description="Measure backends x capture modes x dirty ratios x arena sizes: the median collect "
                "time, checkpoint pause (what the program is stopped for), total (until the epoch is "
                "durable) and extra memory, into a temporary store under --dir, beside the floor (a "
                "memcpy of the D dirty pages, plus one bare PAGEMAP_SCAN when the kernel has it) and "
                "beside what programs do today, timed in the same run on the same arrays: np.save, "
                "np.savez and pickle.dump (each with fsync), hashing every page with BLAKE3 and "
                "writing the changed ones, and a full arr.copy(). Then the program's own slowdown "
                "from tracking: a native stencil checkpointed every 1 and every 10 iterations, "
                "against the same run untracked. The default matrix (1 GiB; 1% and 10%; every "
                "backend in mode copy, and auto's backend in every other mode) takes about two "
                "minutes on 2 CPUs; --full measures every backend in every mode at 256 MiB and 1 GiB, "
                "0.1% to 100% (about 14 minutes). See docs/benchmarks.md.",
    examples="  memckpt bench                                the default matrix (~2 min)\n"
             "  memckpt bench --size-mib 256 --ratios 1      256 MiB, 1% dirty\n"
             "  memckpt bench --modes copy fork --backends uffd-async\n"
             "  memckpt bench --full --dir /scratch          the whole matrix, stores on /scratch\n"
             "  memckpt bench --size-mib 8 --rounds 1        a quick smoke run (seconds)\n"
             "  memckpt bench --json | jq '.rows[] | select(.backend == \"uffd-async\")'\n"
             "  memckpt bench --plot bench.png               (needs matplotlib)\n"
             "  memckpt bench --workload mysim:make_step --size-mib 256 --steps 10\n"
             "                                               every pair on your own step")
