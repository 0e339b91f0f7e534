"""``memckpt prune``: remove old epochs, keeping the newest N (and every Kth)."""
from __future__ import annotations

import argparse
from typing import Any

from .base import Command, json_arg, positive, store_arg
from .output import fmt_bytes, fmt_epochs
from .stores import opened, read_infos


def arguments(p: argparse.ArgumentParser) -> None:
    store_arg(p)
    p.add_argument("--keep-last", type=positive, required=True, metavar="N",
                   help="keep the newest N epochs")
    p.add_argument("--keep-every", type=positive, default=None, metavar="K",
                   help="also keep every epoch whose number is a multiple of K")
    p.add_argument("--no-rebase", dest="rebase", action="store_false",
                   help="keep whole chains: without --keep-every, prune first rebases the oldest "
                        "kept epoch (compacts its chain into one full epoch), so that a single "
                        "chain keeps only the last N; this skips that write")
    json_arg(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with opened(args.store) as store:
        return prune(store, args.keep_last, args.keep_every,
                     rebase=args.rebase and args.keep_every is None)


def prune(store: Any, keep_last: int, keep_every: int | None, *, rebase: bool = False
          ) -> dict[str, Any]:
    before = read_infos(store)[0]
    removed = sorted(int(x) for x in store.prune(keep_last=keep_last, keep_every=keep_every,
                                                 rebase=rebase))
    kept = store.epoch_numbers()
    freed = sum(e.bytes_on_disk for e in before if e.epoch in set(removed))
    return {"store": str(store.path), "keep_last": keep_last, "keep_every": keep_every,
            "rebased": rebase, "removed": removed, "kept": kept, "bytes_freed": freed}


def format_prune(rep: dict[str, Any]) -> str:
    rule = f"the last {rep['keep_last']}"
    if rep["keep_every"]:
        rule += f" and every {rep['keep_every']}th"
    if not rep["removed"]:
        return f"nothing to prune: keeping {rule} (and their ancestors) keeps all of {fmt_epochs(rep['kept'])}"
    return (f"removed epochs {fmt_epochs(rep['removed'])} ({fmt_bytes(rep['bytes_freed'])}); "
            f"kept {fmt_epochs(rep['kept'])} ({rule}, and the ancestors they need)")


COMMAND = Command(
    "prune", arguments, run, format_prune,
    help="remove old epochs, keeping the last N (and every Kth)",
    description="Remove epochs, keeping the newest N, every Kth epoch if asked, and every "
                "ancestor a kept epoch needs to be restored. With --keep-last alone, the oldest "
                "kept epoch is first rebased (its chain compacted into one full epoch, "
                "crash-safe), so that a program that writes every page every step, whose "
                "epochs form one long chain, keeps only the last N.",
    examples="  memckpt prune memckpt-demo --keep-last 3\n"
             "  memckpt prune memckpt-demo --keep-last 2 --keep-every 10 --json")
