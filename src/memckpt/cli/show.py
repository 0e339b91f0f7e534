"""``memckpt show``: one epoch explained: kind, chain, counts, timings, layout."""
from __future__ import annotations

import argparse
import math
from typing import Any

from ..checkpoint.auto import summary as auto_summary
from . import overhead
from .base import Command, json_arg, store_arg
from .output import fmt_bytes, fmt_seconds, fmt_when, table
from .stores import dtype_name, epoch_dict, opened, read_infos, resolve_epoch


def arguments(p: argparse.ArgumentParser) -> None:
    store_arg(p)
    p.add_argument("epoch", metavar="EPOCH", nargs="?", default="latest",
                   help="an epoch number, 'latest' (the default), or -1, -2, ... counting back "
                        "from the latest")
    json_arg(p)
    overhead.arguments(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with opened(args.store) as store:
        if getattr(args, "overhead", False):
            return overhead.report(store, args)
        return show(store, resolve_epoch(store, args.epoch))


def show(store: Any, epoch: int) -> dict[str, Any]:
    info = store.info(epoch)
    children = [e for e in read_infos(store)[0] if e.parent == epoch and e.epoch != epoch]
    return {
        "store": str(store.path),
        "epoch": epoch_dict(info),
        "chain": [int(x) for x in store.chain(epoch)],
        "children": [c.epoch for c in children],
        "children_info": [{"epoch": c.epoch, "kind": c.kind} for c in children],
        "layout": store.layout(epoch),
        "manifest": store.manifest(epoch),
        # mode="auto": the pair chosen and why (checkpoint/auto.py), or None
        "auto": (info.extra or {}).get("auto"),
    }


def format_show(rep: dict[str, Any]) -> str:
    if "overhead" in rep:
        return overhead.format_overhead(rep)
    e = rep["epoch"]
    lay = rep["layout"]
    man = rep["manifest"]
    chain = rep["chain"]
    page_size = int(lay.get("page_size") or man.get("page_size") or 4096)
    npages = int(man.get("npages") or lay.get("nbytes", 0) // page_size)
    kind = e["kind"]
    if kind == "full":
        what = "holds every non-zero page of the arena; a chain starts here"
    else:
        what = (f"holds the pages written since epoch {e['parent']}; a restore reads "
                f"{len(chain)} epoch{'s' if len(chain) != 1 else ''}")
    pct = f" ({100 * e['pages_dirty'] / npages:.2f}% of {npages:,})" if npages else ""
    rows: list[list[Any]] = [
        ["kind", f"{kind}: {what}"],
        ["parent", "-" if e["parent"] is None else
         e["parent"] if kind != "full" else
         f"{e['parent']} (lineage only: the epoch this full epoch follows; a restore reads none of it)"],
        ["chain", " -> ".join(str(c) for c in chain)],
        ["children", ", ".join(f"{c['epoch']} ({c['kind']})" for c in rep.get("children_info", []))
         or "none"],
        ["label", e["label"] or "-"],
        ["created", fmt_when(e["created"])],
        ["tracker", e["tracker"] or "-"],
        ["capture mode", e["mode"] or "-"],
        ["pages dirty", f"{e['pages_dirty']:,}{pct}"],
        ["pages stored", f"{e['pages_stored']:,} (after zero pages were elided and identical pages "
                         f"stored once)"],
        ["bytes on disk", f"{fmt_bytes(e['bytes_on_disk'])} ({e['bytes_on_disk']:,} B)"],
        ["pause", f"{fmt_seconds(e['pause_s'])} (the program was stopped this long)"],
        ["call", f"{fmt_seconds(e.get('call_s'))} (checkpoint() blocked its caller this long)"
         if e.get("call_s") is not None else "- (not recorded: an epoch of an older writer)"],
        ["total", f"{fmt_seconds(e['total_s'])} (until the epoch was durable)"],
        ["page size", f"{page_size} B"],
        ["arena", f"{fmt_bytes(lay.get('nbytes'))}, {npages:,} pages"
                  + (", huge pages" if lay.get("hugepages") else "")],
    ]
    for key in ("compress", "compression", "format_version", "version"):
        if key in man and not isinstance(man[key], (dict, list)):
            rows.append([key.replace("_", " "), man[key] if man[key] is not None else "none"])
    for key, val in sorted((e.get("extra") or {}).items()):
        if isinstance(val, (dict, list)):
            continue
        if isinstance(val, (int, float)) and key.endswith("_s"):
            val, key = fmt_seconds(val), key[:-2]
        elif key == "follows":
            val = f"epoch {val} (the previous chain's head, when this full epoch was taken)"
        rows.append([key.replace("_", " "), val])
    if rep.get("auto") is not None:
        rows += [list(r) for r in auto_summary(rep["auto"])]
    arrays = [[a["name"], dtype_name(a),
               "x".join(map(str, a["shape"])) or "scalar", a["offset"] // page_size,
               math.ceil(a["nbytes"] / page_size), fmt_bytes(a["nbytes"])]
              for a in lay.get("arrays", [])]
    return "\n".join([
        f"epoch {e['epoch']} of {rep['store']}",
        table(["field", "value"], rows),
        "",
        "layout (named arrays, each starts on a page boundary)",
        table(["array", "dtype", "shape", "first page", "pages", "bytes"], arrays),
    ])


COMMAND = Command(
    "show", arguments, run, format_show,
    help="explain one epoch: kind, chain, counts, timings, layout",
    description="Explain one epoch: its kind and parent, the chain a restore reads, the tracker and "
                "capture mode, how many pages were dirty and stored, bytes on disk, pause and total "
                "time, the arena's layout (its named arrays), and for a Checkpointer made with "
                "mode='auto' the pair chosen, why, and each pair's measured cost.",
    examples="  memckpt show memckpt-demo 3\n  memckpt show memckpt-demo latest\n"
             "  memckpt show memckpt-demo -1 --json | jq .layout\n"
             "  memckpt show memckpt-demo --overhead --mtbf 6h --json")
