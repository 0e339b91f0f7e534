"""``memckpt doctor``: what this kernel offers, and which tracker works here."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from .. import _core
from ..kernel import features, trackers
from .base import Command, json_arg
from .output import table


def arguments(p: argparse.ArgumentParser) -> None:
    json_arg(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    return doctor()


def doctor() -> dict[str, Any]:
    f = features()
    num, why = _core.backend_auto()
    return {
        "features": asdict(f),
        "trackers": [asdict(t) for t in trackers()],
        "auto": {"backend": _core.backend_names()[num] if num >= 0 else None, "reason": why},
    }


def format_doctor(report: dict[str, Any]) -> str:
    f = report["features"]
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    feats = [
        ["kernel", f["kernel_release"]],
        ["page size", f["page_size"]],
        ["transparent huge pages", f["thp_mode"]],
        ["userfaultfd", yes(f["uffd"]) + (f" ({f['uffd_reason']})" if f["uffd_reason"] else "")],
        ["  features offered", hex(f["uffd_features"])],
        ["  write-protect", yes(f["uffd_wp"])],
        ["  WP_ASYNC", yes(f["uffd_wp_async"])],
        ["  WP_UNPOPULATED", yes(f["uffd_wp_unpopulated"])],
        ["vm.unprivileged_userfaultfd", "unreadable" if f["unprivileged_userfaultfd"] is None
         else f["unprivileged_userfaultfd"]],
        ["PAGEMAP_SCAN", yes(f["pagemap_scan"]) + (f" ({f['pagemap_scan_reason']})"
                                                   if f["pagemap_scan_reason"] else "")],
        ["soft-dirty", yes(f["soft_dirty"]) + (f" ({f['soft_dirty_reason']})"
                                               if f["soft_dirty_reason"] else "")],
    ]
    rows = [[t["name"], yes(t["available"]), yes(t["exact"]), yes(t["kernel_writes"]),
             yes(t["concurrent"]), t["reason"]] for t in report["trackers"]]
    auto = report["auto"]
    return "\n".join([
        "Kernel features",
        table(["feature", "value"], feats),
        "",
        "Dirty-page trackers (in the order `auto` prefers them)",
        table(["backend", "available", "exact", "kernel writes", "concurrent collect", "reason"], rows),
        "",
        f"auto picks: {auto['backend'] or 'nothing'} ({auto['reason']})",
    ])


COMMAND = Command(
    "doctor", arguments, run, format_doctor,
    help="kernel features, and which trackers work here (and why not)",
    description="Probe the kernel and list every dirty-tracking backend: available or not, with "
                "the reason, and the one `auto` picks.",
    examples="  memckpt doctor\n  memckpt doctor --json | jq .auto")
