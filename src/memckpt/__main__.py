"""The memckpt command line: ``memckpt --help`` lists the commands.

The entry point of ``python -m memckpt`` and of the ``memckpt`` console
script (pyproject's [project.scripts]); the commands live in memckpt.cli.
"""
from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
