"""The memckpt command line: a table of commands (:mod:`.commands`), one module each.

Each command module holds its arguments (a function adding them to its
argparse subparser), its run (returning the JSON-ready dict that ``--json``
prints, or an exit status) and its formatting, and ends in one ``COMMAND``
row. :mod:`.app` builds the parser from the table, dispatches, and turns
every error into one line on stderr and an exit status. What the commands
share: :mod:`.base` (the row type, CliError, common arguments),
:mod:`.output` (tables, sizes, durations, JSON, the progress line) and
:mod:`.stores` (opening a store, naming its epochs).
"""
from __future__ import annotations

from .app import main

__all__ = ["main"]
