"""memckpt: incremental memory checkpointing.

Keep a program's state in an :class:`Arena` of named numpy arrays; a
:class:`DirtyTracker` tells which of its pages were written since the last
look, so that a checkpoint copies only those. A :class:`Checkpointer` writes
those pages to a :class:`Store` as chained epochs; :func:`restore` brings any
epoch back into a new arena, and :meth:`Checkpointer.rollback` into the same one.
"""
from .arena import Arena
from .checkpoint import Checkpointer, PendingEpoch, RollbackInfo
from .epoch import EpochInfo
from .errors import (ArenaFull, CorruptionError, EpochNotFound, FormatError, MemckptError,
                     StoreLocked, TrackerBusy, TrackerUnavailable)
from .kernel import Features, TrackerInfo, features, trackers
from .restore import restore
from .store import Store
from .store.contract import open_url as open_store  # a path, file:// or s3:// (docs/object-store.md)
from .tracker import DirtyTracker
from .track import track  # memory the program already has: docs/embedding.md
from .alloc import allocating  # numpy arrays made in an arena: docs/embedding.md
from .errors import ForkChildError  # fork mode
from .errors import ForkDetached  # fork safety: docs/fork.md
from .config import get_cmake_dir, get_include, get_library_dir, get_pkgconfig_dir  # the C library
from .errors import LibraryNotInstalled
from .preempt import Preemption, on_preemption  # checkpoint on preemption: docs/preemption.md
from .calibrate import Calibration, calibrate  # the pairs on the user's step: docs/tuning.md

__version__ = "0.1.0"

__all__ = [
    "Arena", "ArenaFull", "CorruptionError", "DirtyTracker", "Features", "FormatError",
    "MemckptError", "TrackerBusy", "TrackerInfo", "TrackerUnavailable", "features", "trackers",
    "Checkpointer", "EpochInfo", "EpochNotFound", "PendingEpoch", "RollbackInfo", "Store",
    "StoreLocked", "restore", "open_store",
    "ForkChildError", "ForkDetached",
    "track", "allocating",
    "get_include", "get_library_dir", "get_cmake_dir", "get_pkgconfig_dir", "LibraryNotInstalled",
    "Preemption", "on_preemption", "Calibration", "calibrate",
]
