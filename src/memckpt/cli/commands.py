"""The command table: every `memckpt` command, in the order `memckpt --help`
lists them. Adding a command is one module with a ``COMMAND`` row (its
arguments, its run, its formatting) and one line here."""
from __future__ import annotations

from . import (bench, compact, demo, demo_worker, doctor, ls, prune, restore, show, tune,
               verify)
from . import calibrate
from .base import Command

COMMANDS: list[Command] = [
    doctor.COMMAND,
    demo.COMMAND,
    demo_worker.COMMAND,
    ls.COMMAND,
    show.COMMAND,
    verify.COMMAND,
    restore.COMMAND,
    compact.COMMAND,
    prune.COMMAND,
    tune.COMMAND,
    bench.COMMAND,
    calibrate.COMMAND,
]

BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}
