#!/usr/bin/env python3
"""Turn a pytest-benchmark JSON of bench/bench_capture.py into a markdown table.

    .venv/bin/python bench/report_capture.py bench/results/capture-1gib.json

One row per capture mode and dirty ratio: medians over the rounds, p99 of the
pause, and ratios between medians of the same run (the floor is measured in
the same rounds as the checkpoints).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import cli, fmt_load, fmt_ratio, fmt_time  # noqa: E402  (bench/report.py)

MODE_ORDER = ["copy", "fork", "background", "sync"]


def mib(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**20:,.1f} MiB"


def rows(doc: dict) -> list[dict]:
    out = [b["extra_info"] for b in doc.get("benchmarks", [])
           if b.get("extra_info", {}).get("kind") == "capture"]
    order = {m: i for i, m in enumerate(MODE_ORDER)}
    return sorted(out, key=lambda e: (e["ratio"], order.get(e["mode"], 99)))


def goals(by: dict) -> list[str]:
    lines = []
    c = by.get(("copy", 0.01))
    if c:
        r = c["pause_median_s"] / c["floor_memcpy_median_s"]
        lines.append(f"- copy, 1% dirty: pause {fmt_time(c['pause_median_s'])} is "
                     f"{fmt_ratio(c['pause_median_s'], c['floor_memcpy_median_s'])} the memcpy floor ({fmt_time(c['floor_memcpy_median_s'])}); "
                     f"goal within 2x: {'met' if r <= 2 else 'missed'}.")
    b = by.get(("background", 0.1))
    if b:
        p = b["pause_median_s"]
        lines.append(f"- background, 10% dirty: pause {fmt_time(p)} (p99 {fmt_time(b['pause_p99_s'])}); "
                     f"goal under 1 ms: {'met' if p < 1e-3 else f'missed by {p / 1e-3:.1f}x'}.")
    for ratio in (0.01, 0.1, 0.5):
        f = by.get(("fork", ratio))
        if f and f.get("fork_median_s"):
            lines.append(f"- fork, {ratio * 100:g}% dirty: pause {fmt_time(f['pause_median_s'])}, of "
                         f"which fork() {fmt_time(f['fork_median_s'])} "
                         f"({fmt_ratio(f['pause_median_s'], f['fork_median_s'])}); goal: the fork itself.")
    return lines


def report(doc: dict) -> str:
    rs = rows(doc)
    if not rs:
        return "no capture benchmarks in this file\n"
    meta = doc.get("memckpt", {})
    mi = doc.get("machine_info", {})
    npages, ps = rs[0]["arena_pages"], rs[0]["page_size"]
    lines: list[str] = []
    w = lines.append
    w(f"Arena: {npages * ps / 2**20:g} MiB = {npages:,} pages of {ps} B, resident, random bytes; "
      f"tracker {rs[0].get('tracker', '?')}. Machine: {mi.get('cpus_usable', '?')} usable CPUs, "
      f"Linux {mi.get('release', '?')}.")
    if meta:
        w(f"Command: `{meta.get('command', '?')}`; session {meta.get('session_seconds', '?')} s"
          + (f", load average {fmt_load(meta['loadavg_start'])} at the start, "
             f"{fmt_load(meta['loadavg_end'])} at the end." if "loadavg_start" in meta else "."))
    w("")
    w("| mode | dirty | pause (median) | pause p99 | pause ÷ floor | persist | extra memory | "
      "slowdown during persist | floor: memcpy of the D pages |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    by = {}
    for e in rs:
        by[(e["mode"], e["ratio"])] = e
        fl = e.get("floor_memcpy_median_s")
        sd = e.get("slowdown_median")
        w(f"| {e['mode']} | {e['ratio'] * 100:g}% | {fmt_time(e['pause_median_s'])} | "
          f"{fmt_time(e['pause_p99_s'])} | {fmt_ratio(e['pause_median_s'], fl)} | "
          f"{fmt_time(e['persist_median_s'])} | {mib(e.get('extra_bytes_median'))} | "
          f"{'–' if sd is None else f'{sd:.2f}x'} | {fmt_time(fl) if fl else '–'} |")
    w("")
    w("pause: `checkpoint()` until it returns (collect + the mode's snapshot). persist: from the "
      "end of the pause until the epoch is durable (in mode sync it is inside the pause). extra "
      "memory: staging bytes (copy, background, sync); in fork mode, what the parent's writes "
      "duplicated while the child ran. slowdown: time per stencil sweep while the epoch persists "
      "÷ the same sweeps with nothing persisting (– in mode sync: the program is stopped).")
    g = goals(by)
    if g:
        w("")
        w("Goals (issue 4):")
        lines.extend(g)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return cli(report, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
