"""``memckpt compact``: merge a run of one chain into a single epoch."""
from __future__ import annotations

import argparse
import time
from typing import Any

from .base import CliError, Command, json_arg, progress_arg, store_arg
from .output import Progress, fmt_bytes, fmt_epochs, progress_wanted
from .stores import epoch_dict, opened, resolve_epoch


def arguments(p: argparse.ArgumentParser) -> None:
    store_arg(p)
    p.add_argument("--first", metavar="A", help="first epoch of the run (default: its chain's full epoch)")
    p.add_argument("--last", metavar="B", help="last epoch of the run (default: the latest)")
    json_arg(p)
    progress_arg(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with opened(args.store) as store:
        progress = progress_wanted(args.progress)
        first, last = compact_range(store, args.first, args.last)
        return compact(store, first, last, progress=progress)


def compact_range(store: Any, first: str | None, last: str | None) -> tuple[int, int]:
    """The run first..last to merge; by default the latest chain's whole run."""
    b = resolve_epoch(store, last, what="--last")
    chain = [int(x) for x in store.chain(b)]
    a = chain[0] if first is None else resolve_epoch(store, first, what="--first")
    if a not in chain:
        raise CliError(f"epoch {a} is not in the chain of epoch {b} "
                       f"({' -> '.join(map(str, chain))}); --first must be an ancestor of --last")
    return a, b


def compact(store: Any, first: int, last: int, *, progress: bool = False) -> dict[str, Any]:
    chain = [int(x) for x in store.chain(last)]
    run = chain[chain.index(first):]
    before = {n: store.info(n) for n in run}
    bytes_before = sum(before[n].bytes_on_disk for n in run)
    t0 = time.monotonic()
    if len(run) == 1:
        return {"store": str(store.path), "first": first, "last": last, "merged": run,
                "removed": [], "epoch": epoch_dict(before[last]), "bytes_before": bytes_before,
                "bytes_after": bytes_before, "seconds": 0.0, "noop": True}
    with Progress(f"compact {first}..{last}", enabled=progress) as bar:
        info = store.compact(first, last, progress=bar.callback())
    after = set(store.epoch_numbers())
    return {"store": str(store.path), "first": first, "last": last, "merged": run,
            "removed": [n for n in run if n not in after], "epoch": epoch_dict(info),
            "bytes_before": bytes_before, "bytes_after": info.bytes_on_disk,
            "seconds": round(time.monotonic() - t0, 3), "noop": False}


def format_compact(rep: dict[str, Any]) -> str:
    e = rep["epoch"]
    if rep["noop"]:
        return (f"nothing to compact: epoch {rep['last']} is a {e['kind']} epoch whose chain "
                f"run {rep['first']}..{rep['last']} is that epoch alone")
    return (f"compacted epochs {fmt_epochs(rep['merged'])} into epoch {e['epoch']} ({e['kind']}"
            + (f", parent {e['parent']}" if e["parent"] is not None and e["kind"] != "full" else "")
            + f") in {rep['seconds']:.2f} s: removed {fmt_epochs(rep['removed'])}; "
            f"{fmt_bytes(rep['bytes_before'])} -> {fmt_bytes(rep['bytes_after'])} on disk")


COMMAND = Command(
    "compact", arguments, run, format_compact,
    help="merge a run of a chain into one epoch",
    description="Merge the epochs first..last of one chain into a single epoch numbered LAST (of "
                "FIRST's kind and parent), then retire the others. Default: the latest epoch's "
                "whole chain, which leaves one full epoch. Crash-safe: the old epochs go only once "
                "the merged one is committed.",
    examples="  memckpt compact memckpt-demo\n  memckpt compact memckpt-demo --first 3 --last 9")
