"""``memckpt ls``: a store's epochs, one line each."""
from __future__ import annotations

import argparse
from typing import Any

from .base import CliError, Command, json_arg, store_arg
from .output import fmt_bytes, fmt_seconds, fmt_when, table
from .stores import epoch_dict, opened, read_infos


def arguments(p: argparse.ArgumentParser) -> None:
    store_arg(p)
    json_arg(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with opened(args.store) as store:
        return ls(store)


def after(rep: dict[str, Any]) -> None:
    """A damaged epoch fails the command, once the readable ones are listed."""
    if rep["damaged"]:
        d = rep["damaged"][0]
        more = f" (and {len(rep['damaged']) - 1} more)" if len(rep["damaged"]) > 1 else ""
        raise CliError(f"damaged store: {d['error']}{more}; the other epochs are listed")


def ls(store: Any) -> dict[str, Any]:
    infos, damaged = read_infos(store)
    chains: dict[int, int] = {}  # epoch -> the full epoch its chain starts at
    for e in infos:
        chains[e.epoch] = e.epoch if e.parent is None or e.kind == "full" else chains.get(e.parent, e.parent)
    return {
        "store": str(store.path),
        "latest": infos[-1].epoch if infos else None,
        "bytes_on_disk": sum(e.bytes_on_disk for e in infos),
        "chains": sorted(set(chains.values())),
        "epochs": [dict(epoch_dict(e), chain_start=chains[e.epoch]) for e in infos],
        "damaged": [{"epoch": n, "error": why} for n, why in damaged],
    }


def format_ls(rep: dict[str, Any]) -> str:
    eps = rep["epochs"]
    head = (f"store {rep['store']}: {len(eps)} epochs in {len(rep['chains'])} chain"
            f"{'s' if len(rep['chains']) != 1 else ''}, {fmt_bytes(rep['bytes_on_disk'])} on disk")
    if not eps and not rep["damaged"]:
        return head + "\n(no committed epochs)"
    rows = [[e["epoch"], e["kind"], "-" if e["parent"] is None else e["parent"],
             f"{e['pages_dirty']:,}", f"{e['pages_stored']:,}", fmt_bytes(e["bytes_on_disk"]),
             fmt_seconds(e["pause_s"]), fmt_seconds(e.get("call_s")), fmt_seconds(e["total_s"]),
             e["tracker"] or "-",
             fmt_when(e["created"]), e["label"] or ""] for e in eps]
    for d in rep["damaged"]:
        rows.append([d["epoch"], "DAMAGED", "", "", "", "", "", "", "", "", "", d["error"]])
    rows.sort(key=lambda r: int(r[0]))
    return "\n".join([head, table(["epoch", "kind", "parent", "dirty pages", "stored pages", "bytes",
                                   "pause", "call", "total", "tracker", "created", "label"], rows)])


COMMAND = Command(
    "ls", arguments, run, format_ls, after=after,
    help="list a store's epochs",
    description="List the committed epochs of a store: kind, parent, pages dirty and stored, "
                "bytes on disk, the pause (the program stopped), the call (checkpoint() blocked "
                "its caller; '-' in epochs written before it was recorded) and the total time "
                "(until durable), tracker, when, and label.",
    examples="  memckpt ls memckpt-demo\n  memckpt ls memckpt-demo --json | jq '.epochs[-1]'")
