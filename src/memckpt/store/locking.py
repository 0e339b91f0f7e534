"""The writer lock: an exclusive flock on STORE/lock, held by one writer
(an epoch writer from begin() to commit()/abort(), a compaction, a prune, a
sweep, a creator) at a time. Readers never take it.

While held, the file says "<pid> <role>" of its holder. A holder may leave
a line of its own when it lets go (``leave``, "- free <token>"), and the
next holder reads what was there (``found``) before writing its own: a Store
that finds the token it left knows no other writer held the lock since, so
the store is as it left it (store/head.py). Lines are padded to one width
and written over each other: the file keeps its size and its block, so taking
and letting go of the lock changes no allocation (a truncate and a rewrite
did, at every epoch)."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from .. import _forksafe, _signals
from ..errors import StoreLocked
from . import format as fmt
from .io import _open_file

_LOCK_WAIT_S = 5.0            # how long a write waits out a creator or a sweep (never a writer)
_FREE = "free"                # the role word of a line a holder leaves when it lets go
_LINE = 64                    # bytes a line takes, padded (older versions wrote "pid role\n" only)


def _line(text: str) -> bytes:
    """``text`` as a line of the lock file: padded with spaces to _LINE bytes."""
    return (text[:_LINE - 1].ljust(_LINE - 1) + "\n").encode("ascii")


def _close_copies_of(path: Path) -> None:
    """In a fork child: close every fd of this process open on the file at
    ``path``. For a lock forked in the middle of its open or release, whose
    fd number the child cannot trust: it may be closed and reused already,
    and closing an unrelated fd (a Pool worker's pipe) would be worse than
    keeping the lock."""
    try:
        st = os.stat(path, follow_symlinks=False)
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        try:
            fst = os.fstat(int(name))
        except (OSError, ValueError):
            continue
        if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino):
            os.close(int(name))


class _Lock:
    """An exclusive flock on STORE/lock; the file holds "pid role" of its holder.

    A flock belongs to the open file description, which a child of fork()
    shares: while any child kept its copy of the fd, the lock would outlive
    the parent's release. So the child closes its copy at once
    (:meth:`_detach_in_child`), and never unlocks or truncates: that would
    be the parent's lock and the parent's pid."""

    def __init__(self, store_path: Path, role: str, *, wait: float, leave: bytes = b"",
                 any_holder: bool = False) -> None:
        self.fd: int | None = None
        # what the file held when this lock was taken (the line the last
        # holder left), and what release() leaves in it
        self.found = b""
        self.leave = leave
        self._owner_pid = os.getpid()
        self._path = store_path / fmt.LOCK_NAME
        # True while an fd of ours may exist that self.fd does not show (here,
        # and in release): a child forked then finds its copy by identity
        self._busy = True
        _forksafe.register(self)
        try:
            # never lock (or truncate) a file through a link, nor a FIFO or device
            # planted as the lock (flock on those fails with a bare EINVAL)
            fd = _open_file(self._path,
                            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
                            | os.O_NOCTTY, f"store {store_path}: {fmt.LOCK_NAME}")
        except BaseException:
            self._busy = False
            raise
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = os.pread(fd, _LINE, 0).decode("ascii", "replace").split()
                    if len(holder) > 1 and holder[1] == _FREE:
                        holder = []  # the last holder's line: the new one is starting
                    pid = holder[0] if holder else "?"
                    what = holder[1] if len(holder) > 1 else ""
                    # a process creating the store, or sweeping it, holds
                    # the lock for a moment: wait it out
                    # (any_holder: a writer off its caller's path waits out
                    # any holder, a prune or compaction of another process)
                    if (any_holder or what in ("create", "sweep", "")) and time.monotonic() < deadline:
                        time.sleep(0.002)
                        continue
                    who = ("this process" if pid == str(os.getpid()) else f"pid {pid}" if holder
                           else f"a process that has not written its pid into {fmt.LOCK_NAME} "
                                "(a writer starting, or another program locking the file)")
                    raise StoreLocked(f"store {store_path} is locked by {who}"
                                      f"{' (' + what + ')' if what else ''}: one writer at a time") from None
            try:
                self.found = os.pread(fd, _LINE + 1, 0)
                if len(self.found) > _LINE:  # not a line of ours: make it one
                    os.ftruncate(fd, 0)
                os.pwrite(fd, _line(f"{os.getpid()} {role}"), 0)
            except OSError as exc:  # a full disk: say where
                raise type(exc)(exc.errno, f"{exc.strerror} (writing the holder's pid into the "
                                f"lock of store {store_path})", str(self._path)) from None
        except BaseException:
            os.close(fd)
            self._busy = False
            raise
        self.fd = fd
        self._busy = False

    def _detach_in_child(self) -> None:
        """In a child of fork(): close the child's copy of the fd, which is
        all it holds of the parent's lock (no unlock, no truncate)."""
        fd, self.fd = self.fd, None
        if self._busy:
            _close_copies_of(self._path)
        elif fd is not None:
            os.close(fd)

    def release(self) -> None:
        if self._owner_pid != os.getpid():
            return self._detach_in_child()
        self._busy = True
        fd, self.fd = self.fd, None
        try:
            if fd is not None:
                try:
                    if self.leave:
                        os.pwrite(fd, self.leave, 0)  # over the holder's line, as wide
                    else:
                        os.ftruncate(fd, 0)
                finally:
                    os.close(fd)  # closing the last fd of the description drops the flock
        finally:
            self._busy = False

    def __enter__(self) -> _Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _HeldLock:
    """The writer lock around a maintenance call (compact, prune), taken and
    released whole: an exception from a signal handler (Ctrl-C) that lands
    just after the lock is taken would otherwise leave its fd, and so the
    flock, held for good by this process."""

    def __init__(self, store_path: Path, role: str, leave: bytes = b"") -> None:
        self._args = (store_path, role)
        self._leave = leave
        self._lock: _Lock | None = None
        self.found = b""

    def __enter__(self) -> _HeldLock:
        try:
            with _signals.deferred():
                self._lock = _Lock(*self._args, wait=_LOCK_WAIT_S, leave=self._leave)
                self.found = self._lock.found
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with _signals.deferred():
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()
