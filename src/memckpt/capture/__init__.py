"""Capture modes: how a checkpoint takes its snapshot, one module per mode
behind one table (the Python twin of the C backend table in csrc/tracker.c).

=============  ===============================  ==========================
mode           module                           C core
=============  ===============================  ==========================
``copy``       :mod:`memckpt.capture.copy`      ``csrc/pause.c`` (full epochs:
                                                ``capture_fork.c``)
``sync``       :mod:`memckpt.capture.copy`      ``csrc/pause.c``
``background`` :mod:`memckpt.capture.background` ``csrc/capture_bg.c``
``fork``       :mod:`memckpt.capture.fork`      ``csrc/capture_fork.c``
=============  ===============================  ==========================

A mode is made over a :class:`~memckpt.capture.base.Context` and implements
:class:`~memckpt.capture.base.CaptureMode`. Adding a mode is one module and
one line here.
"""
from __future__ import annotations

from typing import Callable

from .background import BackgroundMode, background_tracker
from .base import CallClock, Capture, CaptureMode, Collector, Context, Request
from .copy import CopyMode, SyncMode
from .fork import ForkMode

MODES: dict[str, Callable[[Context], CaptureMode]] = {
    "copy": CopyMode,
    "sync": SyncMode,
    "background": BackgroundMode,
    "fork": ForkMode,
}


def check_mode(mode: object, compress: str | None) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, not {mode!r}")
    if mode == "fork" and compress is not None:
        raise ValueError(f"mode='fork' cannot compress (compress={compress!r}): the fork child "
                         "may not allocate memory, which zstd and lz4 need; use mode='copy' "
                         "to compress, or compress=None with mode='fork'")


def tracker_for(mode: str, tracker: str) -> str:
    """The tracker a mode runs on, given the one asked for."""
    return background_tracker(tracker) if mode == "background" else tracker


__all__ = ["MODES", "CallClock", "Capture", "CaptureMode", "Collector", "Context", "Request", "check_mode",
           "tracker_for"]
