"""The store's small I/O helpers: every store file is opened O_NOFOLLOW |
O_NONBLOCK and fstat-checked to be a regular file before it is read or
written (a FIFO or device planted at a store file's name is a FormatError,
never a hang); writes finish short writes; reads refuse to run short.
Also the argument checks the store's public methods share."""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptionError, FormatError
from . import format as fmt

# O_NONBLOCK: a FIFO (or a device) planted at a store file's name must not
# hang whoever opens it; O_NOCTTY: nor become our terminal. Every fd opened
# here is fstat-checked to be a regular file before it is read or written.
_O_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_O_CREATE = (os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
             | os.O_NONBLOCK | os.O_NOCTTY)
_FILE_MODE = 0o600
_DIR_MODE = 0o700
try:
    _IOV_MAX = max(16, min(int(os.sysconf("SC_IOV_MAX")), 1024))
except (ValueError, OSError):  # pragma: no cover
    _IOV_MAX = 1024
# page data moves in batches this big (add_pages, read_into, compaction): bounded temporaries
_CHUNK_BYTES = 32 << 20


class _MissingFile(CorruptionError):
    """A file a committed manifest names is absent (a concurrent compact/prune, or damage)."""


# -- small I/O helpers ---------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _kind_of(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return what
    return "not a regular file"


def _not_regular(where: str, mode: int) -> FormatError:
    return FormatError(f"{where}: is {_kind_of(mode)}, not a regular file; "
                       "store files must be regular files")


def _check_regular(fd: int, where: str) -> os.stat_result:
    """fstat(fd), refusing anything but a regular file: a FIFO, device or
    socket planted at a store file's name would hang or mislead a read."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(where, st.st_mode)
    return st


def _open_file(path: Path, flags: int, where: str, mode: int = _FILE_MODE) -> int:
    """os.open(path, flags) for a store file, checked to be a regular file.
    FileNotFoundError passes through; a symbolic link, FIFO, device, socket
    or directory at ``path`` is a FormatError naming ``where``."""
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise FormatError(f"{where}: is a symbolic link; store files must be regular files") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP):
            # a socket, a FIFO opened for writing with no reader, a directory,
            # a device without a driver: say what it is, not the bare errno
            try:
                st = os.lstat(path)
            except OSError:
                raise exc from None
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(where, st.st_mode) from None
        raise
    try:
        _check_regular(fd, where)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_durable(path: Path, data: bytes) -> os.stat_result:
    """Create ``path`` (owner-only, never through a symlink) holding ``data``,
    fsynced: the step before a rename or link publishes it. Returns its
    fstat once written (a rename keeps inode, size and mtime)."""
    fd = _open_file(path, _O_CREATE, str(path))
    try:
        _write_all(fd, data, 0)
        os.fsync(fd)
        return os.fstat(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: Any, offset: int) -> None:
    mv = memoryview(data).cast("B")
    while mv.nbytes:
        n = os.pwrite(fd, mv, offset)
        mv = mv[n:]
        offset += n


def _nbytes(b: Any) -> int:
    n = getattr(b, "nbytes", None)
    return int(n) if n is not None else len(b)


def _pwritev_all(fd: int, bufs: list[Any], offset: int) -> None:
    """Write bufs back to back from offset, IOV_MAX at a time, finishing short writes."""
    for i in range(0, len(bufs), _IOV_MAX):
        part = bufs[i:i + _IOV_MAX]
        sizes = [_nbytes(b) for b in part]
        want = sum(sizes)
        n = os.pwritev(fd, part, offset)
        if n != want:  # short write (a signal, or > 2 GiB in one call): finish piecewise
            pos = 0
            for b, sz in zip(part, sizes):
                if pos + sz > n:
                    skip = max(0, n - pos)
                    _write_all(fd, memoryview(b).cast("B")[skip:], offset + pos + skip)
                pos += sz
        offset += want


def _preadv_exact(fd: int, bufs: list[Any], offset: int, where: str) -> None:
    want = sum(_nbytes(b) for b in bufs)
    n = os.preadv(fd, bufs, offset)
    if n == want:
        return
    views = [memoryview(b).cast("B") for b in bufs]
    while True:
        while views and n >= views[0].nbytes:
            n -= views[0].nbytes
            offset += views[0].nbytes
            views.pop(0)
        if not views:
            return
        if n:
            offset += n
            views[0] = views[0][n:]
        got = os.preadv(fd, views[:_IOV_MAX], offset)
        if got == 0:
            raise CorruptionError(f"{where}: file ends early (at byte {offset}); truncated?")
        n = got


def _read_small(path: Path, limit: int, where: str) -> bytes:
    fd = _open_file(path, _O_READ, where)
    try:
        return _read_fd(fd, limit, where)
    finally:
        os.close(fd)


def _read_fd(fd: int, limit: int, where: str) -> bytes:
    """The whole (small) file open on fd, refusing more than limit bytes."""
    size = os.fstat(fd).st_size
    if size > limit:
        raise FormatError(f"{where}: {size} bytes is more than a store file of this "
                          f"kind may hold ({limit})")
    parts: list[bytes] = []
    got = 0
    while True:
        b = os.pread(fd, size + 1 - got if got <= size else 4096, got)
        if not b:
            return b"".join(parts)
        parts.append(b)
        got += len(b)
        if got > limit:
            raise FormatError(f"{where}: more than a store file of this kind may hold ({limit})")


def _fmt_epochs(epochs: list[int]) -> str:
    head = ", ".join(str(e) for e in epochs[:5])
    more = f" and {len(epochs) - 5} more" if len(epochs) > 5 else ""
    return f"epoch{'s' if len(epochs) > 1 else ''} {head}{more}"


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False

# -- argument checks -----------------------------------------------------------------
def _as_pages(page_numbers: Any, what: str = "page_numbers") -> np.ndarray:
    p = np.asarray(page_numbers)
    if p.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, not of shape {p.shape}")
    if p.size == 0:
        return np.empty(0, np.uint64)
    if p.dtype.kind == "i":
        if (p < 0).any():
            raise ValueError(f"{what} must not be negative")
    elif p.dtype.kind != "u":
        raise TypeError(f"{what} must be integers, not {p.dtype}")
    return p.astype(np.uint64, copy=False)

def _index_arg(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        return int(v.__index__())
    except (AttributeError, TypeError):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}") from None


def _jsonable(obj: Any, what: str) -> Any:
    """A JSON round-trip copy (tuples become lists), or ValueError naming `what`."""
    try:
        out = json.loads(fmt.canonical_json(obj))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable (plain str/int/float/bool/None, "
                         f"lists and dicts with str keys): {exc}") from None
    # readers refuse deeper documents (format.MAX_JSON_DEPTH): refuse to write one
    if fmt.json_depth(out) > fmt.MAX_JSON_DEPTH - 2:
        raise ValueError(f"{what} nests deeper than {fmt.MAX_JSON_DEPTH - 2} levels")
    return out
