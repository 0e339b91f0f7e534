"""A spare pack file for a Store's next epoch.

Creating a file in the store directory is most of what ``begin()`` costs
(about 0.25 ms of 0.3 here: ``bench/probe_call.py``), and a Checkpointer's
``begin()`` runs inside ``checkpoint()``, before the pause. So right after
each commit, on the committing thread (a Checkpointer's persist thread, while
the program runs), the Store makes an unnamed file in its directory
(``O_TMPFILE``) for the next epoch's pack. The next ``begin()`` takes it
instead of creating one; the commit gives it its name (``linkat`` through
``/proc/self/fd``, before the manifest names it, so the manifest's rename and
the directory's fsync cover the name as they cover a file created by name).
A spare that is never named (an abort, a crash, the process ending) leaves
nothing behind: it has no name to sweep. A child of ``fork()`` never takes its
parent's spare (the file description is shared): it closes its copy of the fd.
Without ``O_TMPFILE`` (a filesystem that lacks it) or ``/proc``, no spare is
made and ``begin()`` creates the pack by name as before.
"""
from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

from .io import _FILE_MODE

_PROC_FD = "/proc/self/fd"


class Spare:
    """At most one unnamed file, made by ``make()``, taken by ``take()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        self.disabled = not hasattr(os, "O_TMPFILE") or not os.path.isdir(_PROC_FD)

    def make(self, directory: Path) -> None:
        """Have a spare ready (best effort: any failure just means none)."""
        if self.disabled:
            return
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                return
        try:
            fd = unnamed_file(directory)
        except OSError as exc:
            # the filesystem (EOPNOTSUPP) or the kernel (EISDIR: an old one
            # takes the flag for O_DIRECTORY) has no O_TMPFILE: stop trying;
            # anything else (a full disk, no fds left) may pass: none this time
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                self.disabled = True
            return
        with self._lock:
            old, self._fd, self._pid = self._fd, fd, os.getpid()
        if old is not None:
            os.close(old)

    def take(self) -> int | None:
        """The spare's fd (the caller's from now on), or None."""
        with self._lock:
            fd, self._fd = self._fd, None
            mine = self._pid == os.getpid()
        if fd is not None and not mine:
            os.close(fd)  # a fork child's copy of its parent's spare
            return None
        return fd

    def close(self) -> None:
        fd = self.take()
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def unnamed_file(directory: Path) -> int:
    """A new file in ``directory`` with no name (O_TMPFILE), open read-write."""
    return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, _FILE_MODE)


def reopen(fd: int) -> int:
    """A new read-only fd (its own offset) of the file open as ``fd``, named or not."""
    return os.open(f"{_PROC_FD}/{fd}", os.O_RDONLY | os.O_CLOEXEC)


def name_file(fd: int, path: Path) -> None:
    """Give the unnamed file ``fd`` the name ``path`` in its directory. A file
    of that name there is an uncommitted writer's garbage (the caller holds
    the writer lock and is about to commit epoch ``path``'s): replaced, as
    ``begin()``'s ``O_TRUNC`` replaces it when it creates the pack by name."""
    src = f"{_PROC_FD}/{fd}"
    # linkat(AT_SYMLINK_FOLLOW): os.link only passes the flag through linkat
    # when given a directory fd (an absolute src ignores it)
    d = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.link(src, path.name, src_dir_fd=d, dst_dir_fd=d, follow_symlinks=True)
        except FileExistsError:
            os.unlink(path.name, dir_fd=d)
            os.link(src, path.name, src_dir_fd=d, dst_dir_fd=d, follow_symlinks=True)
    finally:
        os.close(d)
