"""What the command line prints: tables for people, dicts for --json."""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np

from . import _core
from .arena import Arena
from .errors import MemckptError
from .kernel import features, trackers
from .tracker import DirtyTracker


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


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


def demo(backend: str, size_mib: int, steps: int) -> int:
    """A heat-diffusion field where only a hot spot's neighbourhood changes per
    step, so the tracker's page counts show what an incremental checkpoint
    would copy."""
    if size_mib <= 0 or steps <= 0:
        print("memckpt demo: --size-mib and --steps must be positive")
        return 2
    n = int(np.sqrt(size_mib * 2**20 / 8))
    with Arena(n * n * 8 + 2**20) as arena:
        field = arena.array("temperature", (n, n), np.float64)
        try:
            tracker = DirtyTracker(arena, backend)
        except (MemckptError, ValueError) as exc:
            print(f"memckpt demo: {exc}")
            return 1
        with tracker:
            print(f"arena: {arena.nbytes / 2**20:.0f} MiB, {arena.npages} pages; "
                  f"field {n}x{n} float64")
            print(f"tracker: {tracker.reason}")
            rows = []
            matched = 0
            base = field.ctypes.data - arena.address
            for step in range(steps):
                # a moving hot spot: a band of rows around it diffuses
                c = (step * n // steps) % n
                lo, hi = max(1, c - n // 32), min(n - 1, c + n // 32)
                field[c, n // 2] = 100.0
                t0 = time.perf_counter()
                f = field[lo - 1:hi + 1]
                field[lo:hi, 1:-1] = f[1:-1, 1:-1] + 0.2 * (
                    f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:] - 4 * f[1:-1, 1:-1])
                t1 = time.perf_counter()
                dirty = tracker.collect()
                t2 = time.perf_counter()
                # the pages numpy stored to: the hot spot, and the band's rows
                ps = arena.page_size
                first = (base + (lo * n + 1) * 8) // ps
                last = (base + ((hi - 1) * n + n - 2) * 8) // ps
                expect = set(range(first, last + 1)) | {(base + (c * n + n // 2) * 8) // ps}
                same = set(dirty.tolist()) == expect
                matched += same
                rows.append([step, len(dirty), len(expect), "yes" if same else "no",
                             f"{100 * len(dirty) / arena.npages:.1f}%",
                             f"{(t1 - t0) * 1e3:.2f}", f"{(t2 - t1) * 1e3:.3f}"])
            print(table(["step", "pages reported", "pages stored to", "same", "of arena",
                         "step ms", "collect ms"], rows))
            print(f"the tracker reported exactly the pages written in {matched} of {steps} steps"
                  + ("" if tracker.backend != "compare" else
                     " (compare reports pages whose content changed, not every page stored to)"))
    return 0
