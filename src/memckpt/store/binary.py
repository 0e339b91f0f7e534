"""The store's file names, versions, limits and page flags, and the binary
files (index and pack): their layouts and their parsing. Pure: no I/O.
memckpt.store.format re-exports all of it (docs/format.md is the reference)."""
from __future__ import annotations

import re
import struct
from functools import lru_cache
from typing import Any

import blake3
import numpy as np

from ..errors import CorruptionError, FormatError, MemckptError

# -- versions ------------------------------------------------------------------
#: The format version this code writes. Readers accept any minor version of
#: the same major (minor versions only add fields a 1.0 reader may ignore)
#: and refuse any other major.
FORMAT_MAJOR = 1
#: 1.1 added ``parent_digest`` (the manifest ties an epoch to its parent's
#: content) and ``compacted.identity`` (which keeps those ties valid when
#: compaction rewrites a parent's manifest); 1.2 dropped the pack file's
#: whole-file digest (``files.pack.blake3``): every image in a pack is covered
#: by its record's digest, the records by the index's digest, so that second
#: pass over every byte written only cost the writer time. A 1.0/1.1 reader
#: refuses a 1.2 manifest (it requires the field) instead of misreading it.
FORMAT_MINOR = 2
VERSION = [FORMAT_MAJOR, FORMAT_MINOR]
#: The minor version the index and pack headers say: their layouts have not
#: changed since 1.0, so files a 1.0 reader checks byte for byte stay 1.0.
DATA_MINOR = 0

STORE_FORMAT = "memckpt-store"
EPOCH_FORMAT = "memckpt-epoch"

# -- file names ------------------------------------------------------------------
STORE_HEADER = "memckpt-store.json"
LOCK_NAME = "lock"
TMP_SUFFIX = ".tmp"

MANIFEST_RE = re.compile(r"^e([0-9]{8,19})\.json$")
DATA_RE = re.compile(r"^e([0-9]{8,19})-(0|[1-9][0-9]{0,8})\.(idx|pack)$")

MAX_EPOCH = 10**19 - 1          # what the 8..19-digit names can spell
MAX_GEN = 10**9 - 1
MAX_MANIFEST_BYTES = 64 << 20   # far above any real manifest; bounds memory on a hostile one
MAX_HEADER_BYTES = 1 << 20
#: how deep a store document may nest: far above what a layout or an `extra`
#: needs, far below the depth where copy.deepcopy (~2 frames a level) or the
#: JSON codec would hit Python's recursion limit
MAX_JSON_DEPTH = 64


def manifest_name(epoch: int) -> str:
    return f"e{epoch:08d}.json"


def data_name(epoch: int, gen: int, ext: str) -> str:
    return f"e{epoch:08d}-{gen}.{ext}"


def parse_manifest_name(name: str) -> int | None:
    """The epoch a manifest file name spells, or None if it is not one
    (names must be canonical: ``e00000007.json``, never ``e0000007.json``)."""
    m = MANIFEST_RE.match(name)
    if m is None:
        return None
    epoch = int(m.group(1))
    return epoch if manifest_name(epoch) == name else None


def parse_data_name(name: str) -> tuple[int, int, str] | None:
    """(epoch, generation, "idx"|"pack") for a canonical data file name, else None."""
    m = DATA_RE.match(name)
    if m is None:
        return None
    epoch, gen, ext = int(m.group(1)), int(m.group(2)), m.group(3)
    return (epoch, gen, ext) if data_name(epoch, gen, ext) == name else None


# -- page flags ------------------------------------------------------------------
FLAG_ZERO = 1 << 0   # the page is all zero; nothing stored (offset 0, length 0)
FLAG_ZSTD = 1 << 1   # stored bytes are one zstd frame of the page
FLAG_LZ4 = 1 << 2    # stored bytes are one lz4 block of the page
KNOWN_FLAGS = FLAG_ZERO | FLAG_ZSTD | FLAG_LZ4
COMPRESSORS = {"zstd": FLAG_ZSTD, "lz4": FLAG_LZ4}
ZSTD_LEVEL = 1       # per-page frames: level 1 compresses as well as 3 here, and faster

# -- index file --------------------------------------------------------------------
IDX_MAGIC = b"MCKP-IDX"
#: magic, major, minor, header_size, record_size, page_size, epoch, count, reserved
IDX_HEADER = struct.Struct("<8sHHIIIQQQ")
IDX_HEADER_SIZE = IDX_HEADER.size  # 48
RECORD_DTYPE = np.dtype([
    ("page", "<u8"),        # page number in the arena
    ("offset", "<u8"),      # byte offset of the stored bytes in the pack
    ("length", "<u4"),      # stored length (page_size raw, less if compressed, 0 if ZERO)
    ("flags", "<u4"),       # FLAG_*
    ("digest", "u1", (32,)),  # BLAKE3 of the uncompressed page
])
RECORD_SIZE = RECORD_DTYPE.itemsize  # 56

# -- pack file ----------------------------------------------------------------------
PACK_MAGIC = b"MCKPPACK"
#: magic, major, minor, header_size, page_size, reserved, epoch
PACK_HEADER = struct.Struct("<8sHHIIIQ")
PACK_HEADER_SIZE = PACK_HEADER.size  # 32

MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 1 << 30
MAX_NPAGES = 1 << 48


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def valid_page_size(ps: object) -> bool:
    return (_is_int(ps) and MIN_PAGE_SIZE <= ps <= MAX_PAGE_SIZE  # type: ignore[operator]
            and ps & (ps - 1) == 0)  # type: ignore[operator]


@lru_cache(maxsize=8)
def zero_digest(page_size: int) -> bytes:
    return blake3.blake3(bytes(page_size)).digest()


def pack_header(epoch: int, page_size: int) -> bytes:
    return PACK_HEADER.pack(PACK_MAGIC, FORMAT_MAJOR, DATA_MINOR, PACK_HEADER_SIZE,
                            page_size, 0, epoch)


def idx_header(epoch: int, page_size: int, count: int) -> bytes:
    return IDX_HEADER.pack(IDX_MAGIC, FORMAT_MAJOR, DATA_MINOR, IDX_HEADER_SIZE,
                           RECORD_SIZE, page_size, epoch, count, 0)


def _version_error(what: str, major: int, minor: int) -> FormatError:
    if major > FORMAT_MAJOR:
        return FormatError(f"{what}: store written by a newer memckpt: format {major}.{minor}, "
                           f"this reads {FORMAT_MAJOR}.x; upgrade memckpt to read it")
    return FormatError(f"{what}: format {major}.{minor} is not one this memckpt reads "
                       f"(it reads {FORMAT_MAJOR}.x)")


def parse_pack_header(buf: bytes, *, epoch: int, page_size: int, minor: int, where: str) -> int:
    """Check a pack file's header against its manifest (of format 1.``minor``);
    return the header's size (where the page data may start)."""
    if len(buf) < PACK_HEADER_SIZE:
        raise CorruptionError(f"{where}: pack header cut short ({len(buf)} of {PACK_HEADER_SIZE} bytes)")
    magic, major, hminor, hsize, ps, _res, ep = PACK_HEADER.unpack_from(buf)
    if magic != PACK_MAGIC:
        raise FormatError(f"{where}: not a memckpt pack file (magic {magic!r})")
    if major != FORMAT_MAJOR:
        raise _version_error(where, major, hminor)
    if hminor > minor:
        raise CorruptionError(f"{where}: pack header says format {major}.{hminor}, newer than "
                              f"its manifest's {FORMAT_MAJOR}.{minor}")
    if hminor <= DATA_MINOR:
        # a layout this code writes: every byte is known, so any change is damage
        if bytes(buf[:PACK_HEADER_SIZE]) != PACK_HEADER.pack(PACK_MAGIC, FORMAT_MAJOR, hminor,
                                                             PACK_HEADER_SIZE, page_size, 0, epoch):
            raise CorruptionError(f"{where}: pack header is damaged (it does not match its manifest)")
    elif hsize < PACK_HEADER_SIZE or ps != page_size or ep != epoch:
        raise CorruptionError(f"{where}: pack header does not match its manifest "
                              f"(header size {hsize}, page size {ps}, epoch {ep})")
    return int(hsize)


def parse_index(buf: bytes | bytearray, *, epoch: int, page_size: int, npages: int, pack_size: int,
                where: str) -> np.ndarray:
    """Parse and validate an index file's bytes into a read-only record array
    (RECORD_DTYPE fields; extra trailing bytes of a newer minor's records are dropped)."""
    hsize, rsize, count = parse_index_header(buf, len(buf), epoch=epoch, page_size=page_size,
                                             npages=npages, where=where)
    if rsize == RECORD_SIZE:
        recs = np.frombuffer(buf, dtype=RECORD_DTYPE, count=count, offset=hsize)
    else:  # a newer minor version's longer records: keep the fields we know
        raw = np.frombuffer(buf, dtype=np.uint8, count=count * rsize, offset=hsize)
        recs = np.ascontiguousarray(raw.reshape(count, rsize)[:, :RECORD_SIZE]).view(RECORD_DTYPE)[:, 0]
    check_records(recs, page_size=page_size, npages=npages, pack_size=pack_size, where=where)
    recs.flags.writeable = False
    return recs


def parse_index_header(buf: Any, size: int, *, epoch: int, page_size: int, npages: int,
                       where: str) -> tuple[int, int, int]:
    """(header size, record size, count) of an index file of ``size`` bytes
    from its first bytes ``buf``, checked against its manifest."""
    if len(buf) < IDX_HEADER_SIZE:
        raise CorruptionError(f"{where}: index header cut short ({len(buf)} of {IDX_HEADER_SIZE} bytes)")
    magic, major, minor, hsize, rsize, ps, ep, count, _res = IDX_HEADER.unpack_from(buf)
    if magic != IDX_MAGIC:
        raise FormatError(f"{where}: not a memckpt index file (magic {magic!r})")
    if major != FORMAT_MAJOR:
        raise _version_error(where, major, minor)
    if hsize < IDX_HEADER_SIZE or rsize < RECORD_SIZE:
        raise FormatError(f"{where}: index header size {hsize} / record size {rsize} too small")
    if ps != page_size or ep != epoch:
        raise CorruptionError(f"{where}: index header (epoch {ep}, page size {ps}) does not "
                              f"match its manifest (epoch {epoch}, page size {page_size})")
    if count > npages or hsize + count * rsize != size:
        raise CorruptionError(f"{where}: index of {size} bytes cannot hold {count} records "
                              f"of {rsize} bytes after a {hsize}-byte header")
    return hsize, rsize, count


def check_records(recs: np.ndarray, *, page_size: int, npages: int, pack_size: int,
                  where: str) -> None:
    """Every record must be one the reader can follow without leaving the
    pack or the arena: vectorised, so a 262144-record index checks in ms."""
    if recs.size == 0:
        return
    page = recs["page"]
    off = recs["offset"]
    length = recs["length"].astype(np.uint64)
    flags = recs["flags"]

    def bad(mask: np.ndarray, why: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise FormatError(f"{where}: record {i} (page {int(page[i])}) {why}")

    bad(page >= np.uint64(npages), f"is beyond the arena's {npages} pages")
    if recs.size > 1:
        bad(np.concatenate(([False], page[1:] <= page[:-1])), "is not in strictly increasing page order")
    bad((flags & np.uint32(~KNOWN_FLAGS & 0xFFFFFFFF)) != 0,
        "has page flags this memckpt does not know (written by a newer memckpt?)")
    zero = (flags & FLAG_ZERO) != 0
    zstd = (flags & FLAG_ZSTD) != 0
    lz4 = (flags & FLAG_LZ4) != 0
    bad(zstd & lz4, "is flagged both zstd and lz4")
    bad(zero & (zstd | lz4), "is flagged zero and compressed")
    bad(zero & ((off != 0) | (length != 0)), "is a zero page with stored bytes")
    if zero.any():
        zd = np.frombuffer(zero_digest(page_size), dtype=np.uint8)
        bad(zero & (recs["digest"] != zd).any(axis=1), "is a zero page with the wrong digest")
    stored = ~zero
    raw = stored & ~(zstd | lz4)
    bad(raw & (length != np.uint64(page_size)), f"is stored raw but is not {page_size} bytes long")
    bad(stored & ((length == 0) | (length > np.uint64(page_size))),
        f"has a stored length outside 1..{page_size}")
    # offset + length <= pack_size, without uint64 wrap-around
    limit = np.uint64(max(pack_size, 0))
    bad(stored & ((off < np.uint64(PACK_HEADER_SIZE)) | (length > limit) | (off > limit - length)),
        f"points outside the pack's {pack_size} bytes")


def codec(name: str) -> Any:
    """The compression module for ``name``, or a MemckptError naming the pip extra."""
    try:
        if name == "zstd":
            import zstandard
            return zstandard
        if name == "lz4":
            import lz4.block  # type: ignore[import-untyped]
            return lz4.block
    except ImportError:
        pkg = {"zstd": "zstandard", "lz4": "lz4"}[name]
        raise MemckptError(f"compress={name!r} needs the {pkg} package: "
                           f"pip install 'memckpt[{name}]'") from None
    raise ValueError(f"unknown compression {name!r}; choose None, 'zstd' or 'lz4'")
