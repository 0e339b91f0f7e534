"""What every command module shares: the table's row type, the one error a
user can fix, and the arguments several commands take.

Kept free of imports from the command modules and of memckpt's heavier
layers, so that any command (or a test) can import it without a cycle.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from ..store.binary import COMPRESSORS as _CODECS

# --compress's choices: the store format's codecs, the one list of them
COMPRESSORS = list(_CODECS)


class CliError(Exception):
    """A mistake the user can fix, said in one line; the command exits 1."""


@dataclass(frozen=True)
class Command:
    """One row of the command table: how `memckpt NAME` is parsed, run and printed.

    ``run`` returns either a JSON-ready dict, which ``format`` turns into what a
    person reads (or ``--json`` prints as it is), so the two outputs never
    disagree; or an exit status, when the command writes as it goes (the demo).
    ``after`` runs once the report is printed, for an error that must not hide
    the report (``ls`` lists the readable epochs of a damaged store, then fails).
    A command without ``help`` is not listed in ``memckpt --help``.
    """

    name: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], "dict[str, Any] | int"]
    format: Callable[[dict[str, Any]], str] | None = None
    help: str | None = None
    description: str = ""
    examples: str = ""
    after: Callable[[dict[str, Any]], None] | None = None


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks (descriptions are wrapped by hand)."""


def store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", metavar="STORE", help="the store's directory")


def json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action="store_true",
                   help="draw the progress line on stderr even when it is not a terminal")


def positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {v}")
    return v


def percent(text: str) -> float:
    try:
        v = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v <= 100:
        raise argparse.ArgumentTypeError(f"must be a percentage in (0, 100], not {text}")
    return v
