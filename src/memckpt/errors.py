"""The domain errors of memckpt, all under one base, MemckptError.

Failures of a system call surface as the OSError subclass for their errno
(PermissionError, FileNotFoundError, ...), raised by the binding's one helper.
"""


class MemckptError(Exception):
    """Base of every error memckpt raises for its own reasons."""


class TrackerUnavailable(MemckptError):
    """The dirty-tracking backend asked for cannot work on this kernel or with
    these privileges; the message says why and what to use instead."""


class TrackerBusy(MemckptError):
    """The arena (or, for soft-dirty, the process) already has a tracker that
    a second one would disturb."""


class ArenaFull(MemckptError, MemoryError):
    """An array does not fit in the space the arena has left."""


class CorruptionError(MemckptError):
    """Stored data does not match its digest, or is cut short."""


class FormatError(MemckptError):
    """A store file is not in a format (or version) this memckpt reads."""


class StoreLocked(MemckptError):
    """Another writer (a process, or another Store object in this one) holds
    the store's writer lock; the message names its pid."""


class EpochNotFound(MemckptError, KeyError):
    """The store has no committed epoch of that number."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# ---- fork mode -------------------------------------------------------------------
class ForkChildError(MemckptError):
    """A fork-mode child did not write its epoch (it reported a failure, or
    died); the epoch was discarded and the store keeps its last committed one.
    ``pid``, ``epoch``, ``stage`` (where it failed: "pack", "index", "sync",
    ... or "died"), ``errno`` (0 if unknown) and ``signal`` (0 if it was not
    killed) say what happened."""

    def __init__(self, message: str, *, pid: int, epoch: int, stage: str, errno: int,
                 signal: int) -> None:
        super().__init__(message)
        self.pid, self.epoch, self.stage, self.errno, self.signal = pid, epoch, stage, errno, signal


# ---- fork safety -----------------------------------------------------------------
class ForkDetached(MemckptError):
    """An object this process inherited through ``fork()`` (a Checkpointer, a
    DirtyTracker, an epoch writer) was asked to act: it belongs to the parent,
    ``owner``, and is detached here (docs/fork.md says what a child may do)."""

    def __init__(self, message: str, *, owner: int) -> None:
        super().__init__(message)
        self.owner = owner


class LibraryNotInstalled(MemckptError, FileNotFoundError):
    """memckpt's C library (header, libmemckpt.so, pkg-config and CMake files)
    is not installed beside the package: memckpt.config's functions say where
    they looked."""
