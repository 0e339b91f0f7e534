"""The memckpt command line: ``memckpt --help`` lists the commands."""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import Any, Callable

from . import cli

COMPRESSORS = ["zstd", "lz4"]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks (descriptions are wrapped by hand)."""


def _sub(sub: Any, name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=textwrap.fill(description, 79),
                          epilog="examples:\n" + examples.strip("\n"),
                          formatter_class=_Formatter)


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", metavar="STORE", help="the store's directory")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def _progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action="store_true",
                   help="draw the progress line on stderr even when it is not a terminal")


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {v}")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memckpt",
        description=textwrap.fill("Incremental memory checkpointing: find the pages a program "
                                  "wrote, store only those, and restore any epoch.", 79),
        epilog="examples:\n"
               "  memckpt demo                      checkpoint a simulation, kill it, resume it\n"
               "  memckpt doctor                    what this kernel offers, which tracker is used\n"
               "  memckpt ls memckpt-demo           the epochs of a store\n"
               "  memckpt show memckpt-demo latest  what one epoch holds and cost\n"
               "  memckpt tune --mtbf 6h --rpo 5m --cost 2s   how often to checkpoint\n"
               "`memckpt COMMAND --help` explains each command.",
        formatter_class=_Formatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = _sub(sub, "doctor", "kernel features, and which trackers work here (and why not)",
             "Probe the kernel and list every dirty-tracking backend: available or not, with "
             "the reason, and the one `auto` picks.",
             "  memckpt doctor\n  memckpt doctor --json | jq .auto")
    _json_arg(d)

    m = _sub(sub, "demo", "checkpoint a simulation, SIGKILL it, resume it, check bit-identity",
             "Run a 2-D heat-diffusion simulation (a torch moving over a plate; a few hundred MiB "
             "of numpy arrays in an arena) in a worker process that checkpoints every --every "
             "steps; kill it with SIGKILL at a random step; resume from the store's latest epoch "
             "in a new process and run to the end; run the same simulation uninterrupted; and "
             "show that both end bit-identical, with the table of epochs (dirty pages, bytes, "
             "pause). The store is emptied first.",
             "  memckpt demo                         the default run (about a minute)\n"
             "  memckpt demo --tmp --size-mib 64     small, in a temporary store\n"
             "  memckpt demo --tracker mprotect --compress zstd --kill-at 150\n"
             "  memckpt ls memckpt-demo              the store it leaves behind")
    m.add_argument("--store", metavar="PATH",
                   help=f"the store directory (default: ./{'memckpt-demo'}); deleted first if it "
                        "is a memckpt store, refused if it is anything else")
    m.add_argument("--tmp", action="store_true",
                   help="use a temporary store, removed at the end")
    m.add_argument("--size-mib", type=_positive, default=384, metavar="MIB",
                   help="arena size in MiB (default: 384)")
    m.add_argument("--steps", type=_positive, default=400, help="simulation steps (default: 400)")
    m.add_argument("--every", type=_positive, default=25, metavar="K",
                   help="checkpoint every K steps (default: 25)")
    m.add_argument("--iters", type=_positive, default=4, metavar="N",
                   help="stencil iterations per step: compute between checkpoints (default: 4)")
    m.add_argument("--tracker", default="auto",
                   help="dirty-tracking backend (default: auto; see `memckpt doctor`)")
    m.add_argument("--compress", choices=COMPRESSORS, default=None,
                   help="compress pages in the store (default: none)")
    m.add_argument("--kill-at", type=_positive, default=None, metavar="STEP",
                   help="the step at which worker 1 is killed (default: a random step after the "
                        "third checkpoint)")
    _progress_arg(m)

    w = sub.add_parser("_demo-worker")  # no help=: not listed; the demo's own worker process
    w.add_argument("--role", choices=["first", "resume", "reference"], required=True)
    w.add_argument("--store", required=True)
    w.add_argument("--size-mib", type=float, required=True)
    w.add_argument("--steps", type=int, required=True)
    w.add_argument("--every", type=int, required=True)
    w.add_argument("--iters", type=int, required=True)
    w.add_argument("--tracker", default="auto")
    w.add_argument("--compress", default=None)

    ls = _sub(sub, "ls", "list a store's epochs",
              "List the committed epochs of a store: kind, parent, pages dirty and stored, "
              "bytes on disk, pause and total time, tracker, when, and label.",
              "  memckpt ls memckpt-demo\n  memckpt ls memckpt-demo --json | jq '.epochs[-1]'")
    _store_arg(ls)
    _json_arg(ls)

    sh = _sub(sub, "show", "explain one epoch: kind, chain, counts, timings, layout",
              "Explain one epoch: its kind and parent, the chain a restore reads, the tracker and "
              "capture mode, how many pages were dirty and stored, bytes on disk, pause and total "
              "time, and the arena's layout (its named arrays).",
              "  memckpt show memckpt-demo 3\n  memckpt show memckpt-demo latest\n"
              "  memckpt show memckpt-demo -1 --json | jq .layout")
    _store_arg(sh)
    sh.add_argument("epoch", metavar="EPOCH", help="an epoch number, 'latest', or -1, -2, ... "
                                                    "counting back from the latest")
    _json_arg(sh)

    v = _sub(sub, "verify", "check every digest of a store",
             "Read every page and file of every epoch (or of one epoch's chain) and check its "
             "BLAKE3 digest. Exit 0 when all match; 1, naming the epoch and file, when one does not.",
             "  memckpt verify memckpt-demo\n  memckpt verify memckpt-demo --epoch 7 --json")
    _store_arg(v)
    v.add_argument("--epoch", metavar="N", help="check only the chain of this epoch")
    _json_arg(v)
    _progress_arg(v)

    r = _sub(sub, "restore", "write an epoch's named arrays to a .npz file",
             "Restore an epoch (default: the latest) and write its named arrays to an .npz file "
             "(np.savez), for inspection with numpy.load. To continue a program from an epoch, "
             "use memckpt.Checkpointer.resume in Python.",
             "  memckpt restore memckpt-demo --out state.npz\n"
             "  memckpt restore memckpt-demo --epoch 3 --out epoch3.npz\n"
             "  python -c \"import numpy; print(numpy.load('state.npz')['temperature'].max())\"")
    _store_arg(r)
    r.add_argument("--epoch", metavar="N", help="the epoch (default: the latest)")
    r.add_argument("--out", required=True, metavar="FILE.npz", help="the file to write")
    _json_arg(r)
    _progress_arg(r)

    c = _sub(sub, "compact", "merge a run of a chain into one epoch",
             "Merge the epochs first..last of one chain into a single epoch numbered LAST (of "
             "FIRST's kind and parent), then retire the others. Default: the latest epoch's whole "
             "chain, which leaves one full epoch. Crash-safe: the old epochs go only once the "
             "merged one is committed.",
             "  memckpt compact memckpt-demo\n  memckpt compact memckpt-demo --first 3 --last 9")
    _store_arg(c)
    c.add_argument("--first", metavar="A", help="first epoch of the run (default: its chain's full epoch)")
    c.add_argument("--last", metavar="B", help="last epoch of the run (default: the latest)")
    _json_arg(c)
    _progress_arg(c)

    pr = _sub(sub, "prune", "remove old epochs, keeping the last N (and every Kth)",
              "Remove epochs, keeping the newest N, every Kth epoch if asked, and every "
              "ancestor a kept epoch needs to be restored.",
              "  memckpt prune memckpt-demo --keep-last 3\n"
              "  memckpt prune memckpt-demo --keep-last 2 --keep-every 10 --json")
    _store_arg(pr)
    pr.add_argument("--keep-last", type=_positive, required=True, metavar="N",
                    help="keep the newest N epochs")
    pr.add_argument("--keep-every", type=_positive, default=None, metavar="K",
                    help="also keep every epoch whose number is a multiple of K")
    _json_arg(pr)

    t = _sub(sub, "tune", "how often to checkpoint, from the MTBF, the RPO and the checkpoint cost",
             "Recommend a checkpoint interval: Daly's higher-order optimum for checkpoint cost C "
             "and mean time between failures M, capped so that no failure loses more than the "
             "RPO of work (interval + C <= RPO). C is --cost, or the median total time of a "
             "store's incremental epochs. Prints the expected overhead and lost work, and "
             "Young's, Daly's and the RPO cap's intervals side by side. Durations: 150ms, 2s, "
             "5m, 1.5h, 2d, or a number of seconds. See docs/tuning.md for the model.",
             "  memckpt tune --mtbf 6h --rpo 5m --cost 2s\n"
             "  memckpt tune --mtbf 24h --store memckpt-demo --step 0.1s\n"
             "  memckpt tune --mtbf 6h --rpo 5m --cost 2s --restart 30s --json | jq .recommended\n"
             "  memckpt tune --mtbf 2h --cost 20s --plot waste.png     (needs matplotlib)")
    t.add_argument("--mtbf", required=True, metavar="DURATION",
                   help="mean time between failures of the whole job")
    t.add_argument("--rpo", metavar="DURATION",
                   help="recovery point objective: the most work a failure may lose (default: none)")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--cost", metavar="DURATION", help="the time one checkpoint takes to be durable")
    src.add_argument("--store", metavar="STORE",
                     help="measure the cost: the median total time of this store's incremental epochs")
    t.add_argument("--restart", metavar="DURATION", default=None,
                   help="time to restart from a checkpoint after a failure (default: 0)")
    t.add_argument("--step", metavar="DURATION", default=None,
                   help="the length of one step of the program: also give the interval in steps")
    t.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw the expected overhead against the interval (needs matplotlib)")
    _json_arg(t)

    b = _sub(sub, "bench", "the standard benchmark: checkpoint cost beside the floor and np.save & co",
             "Measure backends x capture modes x dirty ratios x arena sizes: the median collect "
             "time, checkpoint pause (what the program is stopped for), total (until the epoch is "
             "durable) and extra memory, into a temporary store under --dir, beside the floor (a "
             "memcpy of the D dirty pages, plus one bare PAGEMAP_SCAN when the kernel has it) and "
             "beside what programs do today, timed in the same run on the same arrays: np.save, "
             "np.savez and pickle.dump (each with fsync), hashing every page with BLAKE3 and "
             "writing the changed ones, and a full arr.copy(). Then the program's own slowdown "
             "from tracking: a native stencil checkpointed every 1 and every 10 iterations, "
             "against the same run untracked. The default matrix (1 GiB; 1% and 10%; every "
             "backend in mode copy, and auto's backend in every other mode) takes about two "
             "minutes on 2 CPUs; --full measures every backend in every mode at 256 MiB and 1 GiB, "
             "0.1% to 100% (about 14 minutes). See docs/benchmarks.md.",
             "  memckpt bench                                the default matrix (~2 min)\n"
             "  memckpt bench --size-mib 256 --ratios 1      256 MiB, 1% dirty\n"
             "  memckpt bench --modes copy fork --backends uffd-async\n"
             "  memckpt bench --full --dir /scratch          the whole matrix, stores on /scratch\n"
             "  memckpt bench --size-mib 8 --rounds 1        a quick smoke run (seconds)\n"
             "  memckpt bench --json | jq '.rows[] | select(.backend == \"uffd-async\")'\n"
             "  memckpt bench --plot bench.png               (needs matplotlib)")
    b.add_argument("--full", action="store_true",
                   help="the whole matrix: every backend in every mode; 256 MiB and 1 GiB; "
                        "0.1%%, 1%%, 10%% and 100%%")
    b.add_argument("--size-mib", type=_positive, nargs="+", default=None, metavar="MIB",
                   help="arena size(s) in MiB (default: 1024; with --full: 256 1024)")
    b.add_argument("--ratios", type=_percent, nargs="+", default=None, metavar="PCT",
                   help="percent of the pages written between checkpoints "
                        "(default: 1 10; with --full: 0.1 1 10 100)")
    b.add_argument("--rounds", type=_positive, default=3, metavar="N",
                   help="rounds per measurement; the tables show medians (default: 3)")
    b.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help="only these backends (default: every available one)")
    b.add_argument("--modes", nargs="+", default=None, metavar="MODE",
                   help="measure every chosen backend in each of these capture modes (copy, fork, "
                        "background, sync; default: every backend in copy, auto's in the others)")
    b.add_argument("--dir", default=None, metavar="DIR",
                   help="where the temporary stores and files go, i.e. the filesystem "
                        "measured (default: the system's temporary directory)")
    b.add_argument("--no-slowdown", action="store_true",
                   help="skip the program-slowdown runs")
    b.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw the checkpoint totals and the peers' times (needs matplotlib)")
    _json_arg(b)
    _progress_arg(b)
    return p


def _percent(text: str) -> float:
    try:
        v = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v <= 100:
        raise argparse.ArgumentTypeError(f"must be a percentage in (0, 100], not {text}")
    return v


def _print(args: argparse.Namespace, rep: dict[str, Any], fmt: Callable[[dict[str, Any]], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(rep, indent=2, default=_json_default))
    else:
        print(fmt(rep))


def _json_default(o: Any) -> Any:
    import numpy as np
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "doctor":
        _print(args, cli.doctor(), cli.format_doctor)
        return 0
    if cmd == "demo":
        from . import demo
        return demo.run(args)
    if cmd == "_demo-worker":
        from . import demo
        return demo.worker(args)
    if cmd == "bench":
        from . import benchcmd
        _print(args, benchcmd.run(sizes_mib=args.size_mib, ratios=args.ratios, full=args.full,
                                  rounds=args.rounds, backends=args.backends, modes=args.modes,
                                  directory=args.dir,
                                  plot=args.plot, slowdown=not args.no_slowdown,
                                  progress=cli.progress_wanted(args.progress)),
               benchcmd.format_bench)
        return 0
    if cmd == "tune":
        _print(args, cli.tune(mtbf=args.mtbf, rpo=args.rpo, cost=args.cost, store=args.store,
                              restart=args.restart, step=args.step, plot=args.plot),
               cli.format_tune)
        return 0

    store = cli.open_store(args.store)
    try:
        progress = cli.progress_wanted(getattr(args, "progress", False))
        if cmd == "ls":
            rep = cli.ls(store)
            _print(args, rep, cli.format_ls)
            if rep["damaged"]:
                d = rep["damaged"][0]
                more = f" (and {len(rep['damaged']) - 1} more)" if len(rep["damaged"]) > 1 else ""
                raise cli.CliError(f"damaged store: {d['error']}{more}; the other epochs are listed")
        elif cmd == "show":
            _print(args, cli.show(store, cli.resolve_epoch(store, args.epoch)), cli.format_show)
        elif cmd == "verify":
            epoch = None if args.epoch is None else cli.resolve_epoch(store, args.epoch)
            _print(args, cli.verify(store, epoch, progress=progress), cli.format_verify)
        elif cmd == "restore":
            epoch = cli.resolve_epoch(store, args.epoch)
            _print(args, cli.restore_npz(store, epoch, args.out, progress=progress),
                   cli.format_restore)
        elif cmd == "compact":
            first, last = cli.compact_range(store, args.first, args.last)
            _print(args, cli.compact(store, first, last, progress=progress), cli.format_compact)
        elif cmd == "prune":
            _print(args, cli.prune(store, args.keep_last, args.keep_every), cli.format_prune)
        else:  # pragma: no cover - argparse only lets the commands above through
            raise cli.CliError(f"unknown command {cmd}")
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    return 0


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        msg = exc.args[0]  # str(KeyError) quotes its message
    if isinstance(exc, OSError) and exc.strerror:
        msg = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return " ".join(msg.split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .errors import CorruptionError, FormatError, MemckptError
    name = f"memckpt {args.command}"
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `memckpt ls STORE | head`: the reader left; not an error worth a word
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except cli.CliError as exc:
        print(f"{name}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except MemckptError as exc:
        # by class, not by name: subclasses (a missing file is a CorruptionError) say the same
        kind = ("damaged store" if isinstance(exc, CorruptionError)
                else "unreadable store" if isinstance(exc, FormatError) else None)
        print(f"{name}: {kind + ': ' if kind else ''}{_one_line(exc)}", file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError) as exc:
        print(f"{name}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, with the way to see more
        if os.environ.get("MEMCKPT_DEBUG"):
            raise
        print(f"{name}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              f"(MEMCKPT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
