"""``memckpt``: the parser built from the command table, the dispatch, and
the one place where an error becomes one line on stderr and an exit status.

Exit statuses: 0 done; 1 an error the user can act on (a wrong path, an
absent epoch, a damaged store), said in one line; 2 a command line argparse
refuses (or no command); 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

from .base import CliError, Command, Formatter
from .commands import COMMANDS, BY_NAME
from .output import print_report


def parser() -> argparse.ArgumentParser:
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
        formatter_class=Formatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        cmd.arguments(_subparser(sub, cmd))
    return p


def _subparser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]",
               cmd: Command) -> argparse.ArgumentParser:
    if cmd.help is None:  # hidden: argparse lists any subparser given a help=
        return sub.add_parser(cmd.name)
    return sub.add_parser(cmd.name, help=cmd.help, description=textwrap.fill(cmd.description, 79),
                          epilog="examples:\n" + cmd.examples.strip("\n"),
                          formatter_class=Formatter)


def run(args: argparse.Namespace) -> int:
    """Run one command: print its report (table or JSON), or return its own status."""
    cmd = BY_NAME[args.command]
    got = cmd.run(args)
    if isinstance(got, int):
        return got
    assert cmd.format is not None, f"{cmd.name} returns a report but has no format"
    print_report(args, got, cmd.format)
    if cmd.after is not None:
        cmd.after(got)
    return 0


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        msg = exc.args[0]  # str(KeyError) quotes its message
    if isinstance(exc, OSError) and exc.strerror:
        msg = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return " ".join(msg.split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    from ..errors import CorruptionError, FormatError, MemckptError
    name = f"memckpt {args.command}"
    try:
        return run(args)
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
    except CliError as exc:
        print(f"{name}: {one_line(exc)}", file=sys.stderr)
        return 1
    except MemckptError as exc:
        # by class, not by name: subclasses (a missing file is a CorruptionError) say the same
        kind = ("damaged store" if isinstance(exc, CorruptionError)
                else "unreadable store" if isinstance(exc, FormatError) else None)
        print(f"{name}: {kind + ': ' if kind else ''}{one_line(exc)}", file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError) as exc:
        print(f"{name}: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, with the way to see more
        if os.environ.get("MEMCKPT_DEBUG"):
            raise
        print(f"{name}: internal error: {type(exc).__name__}: {one_line(exc)} "
              f"(MEMCKPT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
