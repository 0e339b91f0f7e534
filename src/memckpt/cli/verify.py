"""``memckpt verify``: check every digest of a store, or of one epoch's chain."""
from __future__ import annotations

import argparse
import time
from typing import Any

from .base import Command, json_arg, progress_arg, store_arg
from .output import Progress, fmt_bytes, fmt_epochs, progress_wanted
from .stores import opened, read_infos, resolve_epoch


def arguments(p: argparse.ArgumentParser) -> None:
    store_arg(p)
    p.add_argument("--epoch", metavar="N", help="check only the chain of this epoch")
    json_arg(p)
    progress_arg(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with opened(args.store) as store:
        progress = progress_wanted(args.progress)
        epoch = None if args.epoch is None else resolve_epoch(store, args.epoch)
        return verify(store, epoch, progress=progress)


def verify(store: Any, epoch: int | None, *, progress: bool = False) -> dict[str, Any]:
    """Check every digest of every epoch (or of one epoch's chain). A damaged
    store raises CorruptionError/FormatError, which name the epoch and file."""
    t0 = time.monotonic()
    with Progress("verify", unit="", enabled=progress) as bar:
        store.verify(epoch, progress=bar.callback())
    checked = [int(x) for x in store.chain(epoch)] if epoch is not None else store.epoch_numbers()
    infos = {e.epoch: e for e in read_infos(store)[0]}
    nbytes = sum(infos[n].bytes_on_disk for n in checked if n in infos)
    return {"store": str(store.path), "ok": True, "epochs": checked,
            "pages": sum(infos[n].pages_stored for n in checked if n in infos),
            "bytes": nbytes, "seconds": round(time.monotonic() - t0, 3)}


def format_verify(rep: dict[str, Any]) -> str:
    return (f"ok: {len(rep['epochs'])} epochs ({fmt_epochs(rep['epochs'])}), "
            f"{rep['pages']:,} stored pages, {fmt_bytes(rep['bytes'])} checked in "
            f"{rep['seconds']:.2f} s; every digest matches")


COMMAND = Command(
    "verify", arguments, run, format_verify,
    help="check every digest of a store",
    description="Read every page and file of every epoch (or of one epoch's chain) and check its "
                "BLAKE3 digest. Exit 0 when all match; 1, naming the epoch and file, when one "
                "does not.",
    examples="  memckpt verify memckpt-demo\n  memckpt verify memckpt-demo --epoch 7 --json")
