#!/usr/bin/env python3
"""Turn a pytest-benchmark JSON of bench/bench_tracking.py into markdown tables.

    python bench/report.py bench/results/tracking.json

Every figure is a median over the rounds of one benchmark; every ratio divides
two medians of the same run (the floor and the backend measured minutes apart
on the same machine, arena and pages), which is what this noisy machine can
vouch for: quote the ratios, not the absolute times.
"""
from __future__ import annotations

import argparse
import json
import sys


def fmt_time(s: float | None) -> str:
    if s is None:
        return "–"
    a = abs(s)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if a >= scale or unit == "ns":
            v = s / scale
            return f"{v:.3g} {unit}" if abs(v) >= 1 else f"{v:.2g} {unit}"
    return f"{s} s"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "–"
    r = a / b
    return f"{r:.3g}×" if r >= 0.01 else f"{r:.1e}×"


def fmt_load(load: list[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def pct(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def index(doc: dict):
    """{(kind, backend, ratio): benchmark} from the extra_info each benchmark carries."""
    out = {}
    for b in doc.get("benchmarks", []):
        e = b.get("extra_info", {})
        if "kind" not in e:
            continue
        out[(e["kind"], e.get("backend"), e["ratio"])] = b
    return out


def med(b: dict | None) -> float | None:
    return None if b is None else b["stats"]["median"]


def scan_floor(idx: dict, r: float) -> float | None:
    """The "bare scan" every collect is divided by: PAGEMAP_SCAN of all N pages
    under uffd-async's write-protection with D pages written (kind scan-wp),
    i.e. uffd-async's collect minus its re-protect. None where not measured
    (no uffd-async here); the untracked scan is a different question (it lists
    all N pages) and is only shown in the floors table."""
    return med(idx.get(("scan-wp", "uffd-async", r)))


def report(doc: dict) -> str:
    idx = index(doc)
    if not idx:
        return "no memckpt benchmarks in this file\n"
    ratios = sorted({k[2] for k in idx})
    some = next(iter(idx.values()))["extra_info"]
    npages, page_size = some["arena_pages"], some["page_size"]
    dirty = {r: next(b["extra_info"]["dirty_pages"] for k, b in idx.items() if k[2] == r)
             for r in ratios}
    mi = doc.get("machine_info", {})
    trackers = mi.get("memckpt_trackers", [])
    order = [t["name"] for t in trackers] or sorted({k[1] for k in idx if k[1]})
    measured = [name for name in order
                if any(k[0] in ("collect", "first-write") and k[1] == name for k in idx)]
    meta = doc.get("memckpt", {})
    lines = []
    w = lines.append

    w(f"Arena: {npages * page_size / 2**20:g} MiB = {npages} pages of {page_size} B, every page "
      f"resident; D random distinct pages dirty. Medians; ratios are between medians of this run.")
    w("")
    w(f"Machine: {mi.get('cpus_usable', '?')} usable CPUs ({mi.get('cpu', {}).get('brand_raw', '?')}), "
      f"{(mi.get('mem_total_bytes') or 0) / 2**30:.0f} GiB RAM, Linux {mi.get('release', '?')}, "
      f"Python {mi.get('python_version', '?')}, vm.max_map_count={mi.get('vm_max_map_count', '?')}.")
    if meta:
        w(f"Command: `{meta.get('command', '?')}`"
          + (f" with {' '.join(f'{k}={v}' for k, v in meta['env'].items())}" if meta.get("env") else "")
          + f"; the session took {meta.get('session_seconds', '?')} s ({doc.get('datetime', '?')})"
          + (f"; load average (1/5/15 min) {fmt_load(meta['loadavg_start'])} at the start, "
             f"{fmt_load(meta['loadavg_end'])} at the end." if "loadavg_start" in meta else "."))
    w("")

    # -- the main table -----------------------------------------------------
    w("| backend | dirty | D | collect | collect ÷ memcpy(D) | collect ÷ bare scan(N) "
      "| first write, per page | untracked write, per page | tracking cost per page | first write ÷ untracked |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in measured:
        for r in ratios:
            d = dirty[r]
            col = med(idx.get(("collect", name, r)))
            fw = med(idx.get(("first-write", name, r)))
            base = med(idx.get(("first-write-baseline", None, r)))
            mc = med(idx.get(("memcpy", None, r)))
            sc = scan_floor(idx, r)
            over = None if fw is None or base is None else (fw - base) / d
            w(f"| {name} | {pct(r)} | {d} | {fmt_time(col)} | {fmt_ratio(col, mc)} | {fmt_ratio(col, sc)} "
              f"| {fmt_time(None if fw is None else fw / d)} | {fmt_time(None if base is None else base / d)} "
              f"| {fmt_time(over)} | {fmt_ratio(fw, base)} |")
    w("")

    # -- the floors -----------------------------------------------------------
    w("Floors, same run. memcpy: the D pages gathered into a resident buffer (np.take). "
      "Bare scans (PAGEMAP_SCAN for PAGE_IS_WRITTEN, no re-protect, through "
      "`_core.pagemap_scan_count`, worded as uffd-async's collect words it) of all N pages: "
      "untracked (every resident page counts as written: returns N), and under uffd-async's "
      "write-protection with D pages written (returns D). \"collect ÷ bare scan(N)\" above "
      "divides by the latter: uffd-async's collect minus its re-protect.")
    w("")
    w("| dirty | D | memcpy of D pages | per page | scan, untracked | scan under uffd-wp "
      "| collect(uffd-async) ÷ scan under uffd-wp | rounds |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in ratios:
        d = dirty[r]
        mcb = idx.get(("memcpy", None, r))
        mc = med(mcb)
        sc = med(idx.get(("scan", None, r)))
        swp = scan_floor(idx, r)
        ua = med(idx.get(("collect", "uffd-async", r)))
        rounds = mcb["stats"]["rounds"] if mcb else "–"
        w(f"| {pct(r)} | {d} | {fmt_time(mc)} | {fmt_time(None if mc is None else mc / d)} | {fmt_time(sc)} "
          f"| {fmt_time(swp)} | {fmt_ratio(ua, swp)} | {rounds} |")
    w("")

    # -- spread, so that a reader can tell signal from noise ------------------
    w("Spread of collect over its rounds (min – max, and the number of rounds):")
    w("")
    w("| backend | " + " | ".join(pct(r) for r in ratios) + " |")
    w("|---|" + "---:|" * len(ratios))
    for name in measured:
        cells = []
        for r in ratios:
            b = idx.get(("collect", name, r))
            cells.append("–" if b is None else
                         f"{fmt_time(b['stats']['min'])} – {fmt_time(b['stats']['max'])} ({b['stats']['rounds']})")
        w(f"| {name} | " + " | ".join(cells) + " |")
    w("")

    skipped = [t for t in trackers if not t.get("available")]
    if skipped:
        w("Not measured here: " + "; ".join(f"{t['name']} ({t['reason']})" for t in skipped) + ".")
        w("")
    return "\n".join(lines)


def cli(render, doc: str, argv: list[str] | None = None) -> int:
    """`python bench/<script>.py FILE.json`: print render(the loaded JSON)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("json", help="a file written by pytest --benchmark-json")
    args = ap.parse_args(argv)
    sys.stdout.write(render(load(args.json)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli(report, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
