"""The store header and the store's identity: race-free creation, and the
check a writer makes that the directory is still the store it opened."""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from ..errors import FormatError, MemckptError, StoreLocked
from . import format as fmt
from . import locking
from .io import _DIR_MODE, _fsync_dir, _read_small, _unlink, _write_durable


class _Header:
    """The first layer of Store: the header this Store opened."""

    path: Path
    page_size: int

    def _create(self, page_size: int) -> None:
        """Make the directory a store unless it is one. Race-free across
        processes: the header is made under the writer lock (no other
        creator, and no writer's sweep, can remove its temporary or see a
        half-made store), and it is published by link(), which never replaces
        a header another creator published first."""
        header = self.path / fmt.STORE_HEADER
        if os.path.lexists(header):  # a store already (or something _read_header will name)
            return
        try:
            os.mkdir(self.path, _DIR_MODE)
            os.chmod(self.path, _DIR_MODE)  # whatever the umask
        except FileExistsError:
            pass
        except FileNotFoundError:  # its parents too
            self.path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            os.chmod(self.path, _DIR_MODE)
        if not self.path.is_dir():
            raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(self.path))
        deadline = time.monotonic() + locking._LOCK_WAIT_S
        while True:
            try:
                lock = locking._Lock(self.path, "create", wait=0.0)
                break
            except StoreLocked:
                # another creator, or a writer of the store another creator
                # has just made (then there is nothing left to do)
                if os.path.lexists(header):
                    return
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.002)
        with lock:
            if os.path.lexists(header):  # another creator made it while we waited
                return
            others = [n for n in os.listdir(self.path)
                      if n != fmt.LOCK_NAME and not n.endswith(fmt.TMP_SUFFIX)]
            if others:
                raise FormatError(f"{self.path} is not empty and is not a memckpt store "
                                  f"(no {fmt.STORE_HEADER}); refusing to make a store of it")
            doc = fmt.sign({"format": fmt.STORE_FORMAT, "version": fmt.VERSION,
                            "page_size": page_size, "created": time.time()})
            tmp = self.path / f"{fmt.STORE_HEADER}.{os.getpid()}{fmt.TMP_SUFFIX}"
            try:
                _write_durable(tmp, fmt.dump_document(doc))
                os.link(tmp, header)  # exclusive: never replaces a header
            except FileExistsError:  # a creator that took no lock (an older memckpt) won
                pass
            finally:
                _unlink(tmp)
            _fsync_dir(self.path)

    def _read_header(self) -> int:
        where = f"store {self.path}: {fmt.STORE_HEADER}"
        if not self.path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such store directory", str(self.path))
        try:
            raw = _read_small(self.path / fmt.STORE_HEADER, fmt.MAX_HEADER_BYTES, where)
        except FileNotFoundError:
            raise FormatError(f"{self.path} is not a memckpt store (it has no {fmt.STORE_HEADER}); "
                              f"Store(path, create=True) makes one") from None
        doc = fmt.load_document(raw, where=where, fmt=fmt.STORE_FORMAT)
        ps = fmt.check_store_header(doc, where)
        if self._identity is None:
            d = os.stat(self.path)
            self._identity = (d.st_dev, d.st_ino, bytes(raw))
        return ps

    # the directory (device, inode) and the header's bytes this Store opened:
    # a writer refuses to write into anything else at self.path. The bytes,
    # not the header's inode: a file system may give a directory and header
    # made again at once the inodes just freed (tmpfs does)
    _identity: tuple[int, int, bytes] | None = None

    def _check_same_store(self) -> None:
        """Refuse to write unless the directory at self.path is still the store
        this Store opened, with its header: deleted (and perhaps re-created)
        under a live writer, it would take epochs that nothing can restore."""
        want = self._identity
        if want is None:
            return
        try:
            d = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            d = None
        raw = None
        if d is not None:
            try:
                raw = _read_small(self.path / fmt.STORE_HEADER, fmt.MAX_HEADER_BYTES,
                                  f"store {self.path}: {fmt.STORE_HEADER}")
            except (FileNotFoundError, NotADirectoryError):
                pass
            if (d.st_dev, d.st_ino, raw) == want:
                return
        if d is None:
            why = "the store directory was deleted"
        elif (d.st_dev, d.st_ino) != want[:2]:
            why = "the directory at this path is not the one it opened (deleted and re-created?)"
        elif raw is None:
            why = f"the store's {fmt.STORE_HEADER} is gone (it, or the directory, was deleted)"
        else:
            why = (f"the store's {fmt.STORE_HEADER} is not the one it opened (another store "
                   f"made at this path?)")
        raise MemckptError(f"store {self.path}: {why} since this process opened it; no epoch "
                           f"can be committed there (the epochs it held are not there any more): "
                           f"open the store again to start a new one")
