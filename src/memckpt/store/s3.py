"""S3Store: the store contract over an S3 bucket (s3://bucket/prefix).

The objects are the local store's files, byte for byte (docs/format.md):
the header, each epoch's pack and index, and its manifest, the commit
record (docs/object-store.md says why this is safe without rename or
flock). Everything is done through a *mirror*: a private local Store in a
temporary directory that holds the manifests and indexes read so far and
each pack as a sparse file holding only the byte ranges fetched. So the
local store's reader, verifier and writer do the work unchanged:

- reading: the chain's manifests and indexes are fetched whole, the page
  runs the read needs are fetched with ranged GETs (in parallel, adjacent
  runs coalesced) into the sparse packs, then the local read_into runs on
  them (the C reader, digests checked as always);
- writing (s3commit.py): the local writer writes the epoch into the mirror
  (the spool), its pack and index are uploaded under fresh names, and the
  manifest last, with a PUT that refuses to overwrite.

The S3 listing is the truth: an epoch exists when its manifest object does."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from ..epoch import EpochInfo
from ..errors import CorruptionError, EpochNotFound, FormatError, MemckptError
from . import format as fmt
from .io import _as_pages
from .local import Store
from .s3client import Bucket
from .s3commit import _S3Writing
from .urls import UnsupportedURL, split_url

__all__ = ["S3Store"]

_GAP = 256 << 10       # runs closer than this are fetched in one GET (a GET costs ~ this many bytes)


def _parse(url: str) -> tuple[str, str]:
    parts = split_url(url)
    if parts is None or parts[0] != "s3":
        raise UnsupportedURL(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = parts[1].partition("/")
    if not bucket:
        raise UnsupportedURL(f"store {url!r}: the URL names no bucket (s3://bucket/prefix)")
    return bucket, prefix


class S3Store(_S3Writing):
    """A store of checkpoint epochs in S3; see memckpt.store.contract and
    docs/object-store.md. ``storage_options``: keyword arguments of
    boto3.client("s3", ...) (endpoint_url, region_name, aws_access_key_id,
    aws_secret_access_key, ...) plus ``max_workers`` (parallel requests,
    default 16) and ``part_size`` (the largest ranged GET, default 8 MiB). ``spool_dir``: where the local mirror lives (default: the
    temporary directory). ``keep_local``: keep the packs this process
    writes in the mirror after upload (default: sparse again, no disk kept)."""

    def __init__(self, url: str, create: bool = False, *, page_size: int | None = None,
                 storage_options: dict[str, Any] | None = None, spool_dir: str | None = None,
                 keep_local: bool = False) -> None:
        bucket, prefix = _parse(os.fspath(url))
        self._bucket = Bucket(bucket, prefix, storage_options)
        self.url = self._bucket.url().rstrip("/")
        self.path = self.url  # what messages and the CLI print (a str: os.fspath keeps it)
        self.keep_local = keep_local
        self._lock = threading.RLock()       # the mirror's manifests, the writer's publish
        self._ranges_lock = threading.Lock()
        self._fetched: dict[str, list[tuple[int, int]]] = {}  # pack name -> byte ranges held
        self._spooling: set[int] = set()  # epochs committed in the mirror, not yet in S3
        self.page_size = self._open_header(create, page_size)
        self._dir = tempfile.mkdtemp(prefix="memckpt-s3-", dir=spool_dir)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, True)
        self._local = Store(os.path.join(self._dir, "mirror"), create=True, page_size=self.page_size)

    def __repr__(self) -> str:
        return f"<memckpt.S3Store {self.url!r}>"

    @property
    def bucket(self) -> Bucket:
        """The S3 client wrapper: ``sent`` and ``received`` count object bytes."""
        return self._bucket

    # -- the header -------------------------------------------------------------------------
    def _open_header(self, create: bool, page_size: int | None) -> int:
        if page_size is not None and not fmt.valid_page_size(page_size):
            raise ValueError(f"page_size {page_size!r} must be a power of two in "
                             f"{fmt.MIN_PAGE_SIZE}..{fmt.MAX_PAGE_SIZE}")
        b = self._bucket
        where = f"store {self.url}: {fmt.STORE_HEADER}"
        try:
            raw = b.get(fmt.STORE_HEADER, fmt.MAX_HEADER_BYTES)
        except FileNotFoundError:
            if not create:
                if b.list():
                    raise FormatError(f"{self.url} is not a memckpt store (it holds objects "
                                      f"but no {fmt.STORE_HEADER})") from None
                raise FileNotFoundError(2, "no store here (no header object)", self.url) from None
            import mmap
            import time
            doc = fmt.sign({"format": fmt.STORE_FORMAT, "version": fmt.VERSION,
                            "page_size": page_size or mmap.PAGESIZE, "created": time.time()})
            data = fmt.dump_document(doc)
            try:  # a creator racing us may win: then its header is the store's
                b.put(fmt.STORE_HEADER, data, len(data), exclusive=True)
            except MemckptError:
                pass
            raw = b.get(fmt.STORE_HEADER, fmt.MAX_HEADER_BYTES)
        doc = fmt.load_document(raw, where=where, fmt=fmt.STORE_FORMAT)
        ps = fmt.check_store_header(doc, where)
        if page_size is not None and page_size != ps:
            raise ValueError(f"store {self.url} has page size {ps}, not {page_size}")
        return ps

    # -- the mirror -------------------------------------------------------------------------
    def _mpath(self, name: str) -> str:
        return os.path.join(self._local.path, name)

    def _listing(self) -> dict[str, tuple[int, float]]:
        return self._bucket.list()

    def epoch_numbers(self) -> list[int]:
        return sorted(e for e in map(fmt.parse_manifest_name, self._listing()) if e is not None)

    def latest(self) -> int | None:
        nums = self.epoch_numbers()
        return nums[-1] if nums else None

    def _refresh(self, listing: dict[str, tuple[int, float]], *, fetch_all: bool) -> list[int]:
        """Make the mirror's manifests the listing's: drop those gone from S3
        (retired by a prune elsewhere) and, if ``fetch_all``, fetch the rest."""
        nums = sorted(e for e in map(fmt.parse_manifest_name, listing) if e is not None)
        with self._lock:
            have = {e for e in map(fmt.parse_manifest_name, os.listdir(self._local.path))
                    if e is not None}
            for gone in have.difference(nums).difference(self._spooling):
                os.unlink(self._mpath(fmt.manifest_name(gone)))
            if fetch_all:
                todo = [e for e in nums if e not in have]
                if todo:
                    with ThreadPoolExecutor(self._bucket.max_workers) as ex:
                        list(ex.map(self._fetch_manifest, todo))
        return nums

    def _fetch_manifest(self, epoch: int) -> None:
        name = fmt.manifest_name(epoch)
        if os.path.lexists(self._mpath(name)):
            return
        try:
            raw = self._bucket.get(name, fmt.MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise EpochNotFound(f"store {self.url} has no epoch {epoch}") from None
        self._put_local(name, raw)

    def _put_local(self, name: str, raw: bytes) -> None:
        tmp = self._mpath(f"{name}.{threading.get_ident()}{fmt.TMP_SUFFIX}")
        with open(tmp, "wb") as f:
            f.write(raw)
        os.replace(tmp, self._mpath(name))

    def _ensure_chain(self, epoch: int) -> list[int]:
        """The chain of ``epoch`` with every manifest of it in the mirror."""
        e: int | None = self._epoch_arg(epoch)
        while e is not None:
            self._fetch_manifest(e)
            doc = self._named(self._local.manifest, e)
            e = None if doc["kind"] == "full" else doc["parent"]
        return self._named(self._local.chain, epoch)

    def _epoch_arg(self, epoch: Any) -> int:
        try:
            e = int(epoch.__index__())
        except (AttributeError, TypeError):
            raise EpochNotFound(f"store {self.url} has no epoch {epoch!r}") from None
        if isinstance(epoch, bool) or not 0 <= e <= fmt.MAX_EPOCH:
            raise EpochNotFound(f"store {self.url} has no epoch {epoch!r}")
        return e

    def _named(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """fn(...) on the mirror, its errors naming the S3 store, not the mirror."""
        try:
            return fn(*args, **kw)
        except MemckptError as exc:
            msg = str(exc).replace(str(self._local.path), self.url)
            if not msg.startswith(f"store {self.url}"):
                msg = f"store {self.url}: {msg}"
            raise type(exc)(msg) from None

    def _object_check(self, listing: dict[str, tuple[int, float]], epoch: int, f: dict[str, Any]) -> None:
        got = listing.get(f["name"])
        url = self._bucket.url(f["name"])
        if got is None:
            raise CorruptionError(f"epoch {epoch}: {url}: the object is missing")
        if got[0] != f["size"]:
            raise CorruptionError(f"epoch {epoch}: {url}: is {got[0]} bytes but the manifest "
                                  f"says {f['size']} ({'truncated' if got[0] < f['size'] else 'extended'})")

    def _ensure_data(self, epoch: int, listing: dict[str, tuple[int, float]]) -> dict[str, Any]:
        """The epoch's index fetched whole into the mirror, its pack there as a
        sparse file of its size with the header fetched; the manifest."""
        doc = self._named(self._local.manifest, epoch)
        files = doc["files"]
        for ext in ("idx", "pack"):
            self._object_check(listing, epoch, files[ext])
        idx = files["idx"]["name"]
        if not os.path.lexists(self._mpath(idx)):
            self._put_local(idx, self._bucket.get(idx))
        pack = files["pack"]["name"]
        with self._ranges_lock:
            if pack not in self._fetched:
                with open(self._mpath(pack), "wb") as fh:
                    fh.truncate(files["pack"]["size"])
                self._fetched[pack] = []
        self._fetch_ranges(pack, [(0, min(fmt.PACK_HEADER_SIZE, files["pack"]["size"]))])
        return doc

    def _fetch_ranges(self, pack: str, want: list[tuple[int, int]]) -> None:
        """Fetch into the sparse pack the parts of ``want`` (sorted, disjoint) not held yet."""
        with self._ranges_lock:
            todo = _subtract(want, self._fetched[pack])
        step = self._bucket.part_size
        pieces = [(x, min(b, x + step)) for a, b in todo for x in range(a, b, step)]
        if not pieces:
            return
        fd = os.open(self._mpath(pack), os.O_WRONLY | os.O_CLOEXEC)
        try:
            def get(r: tuple[int, int]) -> None:
                data = self._bucket.get_range(pack, r[0], r[1])
                os.pwrite(fd, data, r[0])
            if len(pieces) == 1:
                get(pieces[0])
            else:
                with ThreadPoolExecutor(min(self._bucket.max_workers, len(pieces))) as ex:
                    list(ex.map(get, pieces))
        finally:
            os.close(fd)
        with self._ranges_lock:
            self._fetched[pack] = _merge(self._fetched[pack] + todo)

    # -- reading ---------------------------------------------------------------------------
    def epochs(self) -> list[EpochInfo]:
        self._refresh(self._listing(), fetch_all=True)
        return self._named(self._local.epochs)

    def info(self, epoch: int) -> EpochInfo:
        self._fetch_manifest(self._epoch_arg(epoch))
        return self._named(self._local.info, epoch)

    def manifest(self, epoch: int) -> dict[str, Any]:
        self._fetch_manifest(self._epoch_arg(epoch))
        return self._named(self._local.manifest, epoch)

    def layout(self, epoch: int) -> dict[str, Any]:
        return self.manifest(epoch)["layout"]

    def chain(self, epoch: int) -> list[int]:
        return self._ensure_chain(epoch)

    def read_into(self, epoch: int, out: np.ndarray, pages: Any = None, *,
                  progress: Callable[[int, int], None] | None = None,
                  out_is_zero: bool = False, verify: bool = True,
                  threads: int | None = None, fill_huge: bool = False) -> None:
        """See memckpt.store.contract: the page runs the read needs are
        fetched with ranged GETs, then read and checked as a local store's."""
        listing = self._listing()
        self._refresh(listing, fetch_all=False)
        chain = self._ensure_chain(epoch)
        docs = [self._ensure_data(e, listing) for e in chain]
        req = None if pages is None else np.unique(_as_pages(pages, "pages"))
        npages = docs[-1]["npages"]
        if isinstance(out, np.ndarray) and out.ndim == 2 and out.shape[0] == npages:
            if req is not None and len(req) and int(req[-1]) >= npages:
                raise ValueError(f"page {int(req[-1])} is beyond epoch {epoch}'s {npages} pages")
            indexes = [self._named(self._local._index, e, doc=d) for e, d in zip(chain, docs)]
            _, owner, ridx = self._local._resolve(indexes, npages, req)
            for pos, (e, d) in enumerate(zip(chain, docs)):
                recs = indexes[pos][ridx[owner == pos]]
                recs = recs[(recs["flags"] & fmt.FLAG_ZERO) == 0]
                self._fetch_ranges(d["files"]["pack"]["name"], _runs(recs))
        self._named(self._local.read_into, epoch, out, pages, progress=progress,
                    out_is_zero=out_is_zero, verify=verify, threads=threads,
                    fill_huge=fill_huge)

    def changed_pages(self, a: int, b: int) -> np.ndarray | None:
        listing = self._listing()
        for e in set(self._ensure_chain(a) + self._ensure_chain(b)):
            self._ensure_data(e, listing)
        return self._named(self._local.changed_pages, a, b)

    def verify(self, epoch: int | None = None, *,
               progress: Callable[[int, int], None] | None = None) -> None:
        """See memckpt.store.contract: every object of the store (or of one
        epoch's chain) is fetched whole and checked as a local store's."""
        listing = self._listing()
        nums = self._refresh(listing, fetch_all=epoch is None)
        targets = nums if epoch is None else self._ensure_chain(epoch)
        for e in targets:
            doc = self._ensure_data(e, listing)
            f = doc["files"]["pack"]
            self._fetch_ranges(f["name"], [(0, f["size"])])
        self._named(self._local.verify, epoch, progress=progress)

    def close(self) -> None:
        """Drop cached manifests and indexes (the mirror stays until the
        S3Store is collected or the process exits)."""
        self._local.close()

    def __enter__(self) -> S3Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _runs(recs: np.ndarray) -> list[tuple[int, int]]:
    """The byte ranges holding ``recs``, runs closer than _GAP joined."""
    if not len(recs):
        return []
    start = np.unique(recs["offset"].astype(np.int64))
    order = np.argsort(recs["offset"], kind="stable")
    ends = (recs["offset"][order].astype(np.int64) + recs["length"][order].astype(np.int64))
    # dedup'd records share an offset: the end of each distinct start
    first = np.searchsorted(recs["offset"][order].astype(np.int64), start, side="left")
    end = ends[first]
    brk = np.flatnonzero(start[1:] - np.maximum.accumulate(end)[:-1] > _GAP) + 1
    lo = np.concatenate(([0], brk))
    hi = np.concatenate((brk, [len(start)]))
    cum = np.maximum.accumulate(end)
    return [(int(start[a]), int(cum[b - 1])) for a, b in zip(lo.tolist(), hi.tolist())]


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _subtract(want: list[tuple[int, int]], have: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``want`` not covered by ``have`` (both sorted and disjoint)."""
    out = []
    j = 0
    for a, b in want:
        while j < len(have) and have[j][1] <= a:
            j += 1
        k = j
        while a < b:
            if k < len(have) and have[k][0] <= a:
                a = max(a, have[k][1])
                k += 1
            elif k < len(have) and have[k][0] < b:
                out.append((a, have[k][0]))
                a = have[k][1]
                k += 1
            else:
                out.append((a, b))
                break
    return out
