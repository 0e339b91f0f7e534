"""memckpt: incremental memory checkpointing.

Keep a program's state in an :class:`Arena` of named numpy arrays; a
:class:`DirtyTracker` tells which of its pages were written since the last
look, so that a checkpoint copies only those.
"""
from .arena import Arena
from .errors import (ArenaFull, CorruptionError, FormatError, MemckptError, TrackerBusy,
                     TrackerUnavailable)
from .kernel import Features, TrackerInfo, features, trackers
from .tracker import DirtyTracker

__version__ = "0.1.0"

__all__ = [
    "Arena", "ArenaFull", "CorruptionError", "DirtyTracker", "Features", "FormatError",
    "MemckptError", "TrackerBusy", "TrackerInfo", "TrackerUnavailable", "features", "trackers",
]
