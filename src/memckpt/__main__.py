"""The memckpt command line: ``memckpt --help`` lists the commands."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from . import cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memckpt",
        description="Incremental memory checkpointing: find the pages a program wrote.",
        epilog="Start with `memckpt doctor` to see what this kernel offers.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("doctor", help="kernel features, and which trackers work here (and why not)",
                       description="Probe the kernel and list every dirty-tracking backend: "
                                   "available or not, with the reason, and the one `auto` picks.")
    d.add_argument("--json", action="store_true", help="print JSON for scripts")
    m = sub.add_parser("demo", help="watch a simulation's writes being tracked page by page",
                       description="Run a small 2-D heat-diffusion simulation in an arena and show, "
                                   "step by step, how many pages each backend finds written.")
    m.add_argument("--backend", default="auto", help="tracker backend (default: auto)")
    m.add_argument("--size-mib", type=int, default=64, help="arena size in MiB (default: 64)")
    m.add_argument("--steps", type=int, default=20, help="simulation steps (default: 20)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "doctor":
        report = cli.doctor()
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(cli.format_doctor(report))
        return 0
    if args.command == "demo":
        return cli.demo(args.backend, args.size_mib, args.steps)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
