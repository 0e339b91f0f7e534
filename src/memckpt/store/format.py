"""The on-disk formats of a store, version 1.1 (docs/format.md is the reference).

A store directory holds:

- ``memckpt-store.json``: the store header (format, version, page size), a
  self-digesting JSON document written once, when the store is created.
- per committed epoch N: ``eNNNNNNNN.json``, the manifest and commit record;
  ``eNNNNNNNN-G.idx``, the page index; ``eNNNNNNNN-G.pack``, the page data.
  ``G`` is the generation: compaction rewrites epoch N under generation G+1
  and then atomically swaps the manifest, so the old and the new files never
  share a name.
- ``lock``: the writer lock (``flock``), holding the pid and role of its holder.

Everything here is pure: parsing and validation of bytes and JSON, with no
I/O. Every check raises :class:`FormatError` (not a format or version this
reads, or a structurally impossible value) or :class:`CorruptionError` (a
digest or size that does not match), with a message naming the file, so a
damaged or hostile file never surfaces as ``KeyError``/``TypeError``.
"""
from __future__ import annotations

import json
import math
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
#: compaction rewrites a parent's manifest)
FORMAT_MINOR = 1
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


def parse_index(buf: bytes, *, epoch: int, page_size: int, npages: int, pack_size: int,
                where: str) -> np.ndarray:
    """Parse and validate an index file's bytes into a read-only record array
    (RECORD_DTYPE fields; extra trailing bytes of a newer minor's records are dropped)."""
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
    if count > npages or hsize + count * rsize != len(buf):
        raise CorruptionError(f"{where}: index of {len(buf)} bytes cannot hold {count} records "
                              f"of {rsize} bytes after a {hsize}-byte header")
    if rsize == RECORD_SIZE:
        recs = np.frombuffer(buf, dtype=RECORD_DTYPE, count=count, offset=hsize)
    else:  # a newer minor version's longer records: keep the fields we know
        raw = np.frombuffer(buf, dtype=np.uint8, count=count * rsize, offset=hsize)
        recs = np.ascontiguousarray(raw.reshape(count, rsize)[:, :RECORD_SIZE]).view(RECORD_DTYPE)[:, 0]
    check_records(recs, page_size=page_size, npages=npages, pack_size=pack_size, where=where)
    recs.flags.writeable = False
    return recs


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


# -- JSON documents ------------------------------------------------------------------
def canonical_json(obj: Any) -> bytes:
    """The bytes a digest covers: sorted keys, no whitespace, ASCII, shortest
    round-trip floats, no NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def digest_hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def sign(doc: dict[str, Any]) -> dict[str, Any]:
    """doc with its "digest" field set (over the canonical JSON without it)."""
    body = {k: v for k, v in doc.items() if k != "digest"}
    return dict(body, digest=digest_hex(canonical_json(body)))


def dump_document(doc: dict[str, Any]) -> bytes:
    """A signed document as written to disk: readable, one key per line."""
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False)
            + "\n").encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON here")


def json_depth(obj: Any) -> int:
    """How deep lists and objects nest in obj (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        if d <= MAX_JSON_DEPTH:  # deeper than that is all the caller needs to know
            stack.extend((x, d + 1) for x in v)
    return deepest


def load_document(raw: bytes, *, where: str, fmt: str) -> dict[str, Any]:
    """Parse a signed JSON document; check format, major version and digest."""
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptionError(f"{where}: not valid JSON (damaged?): {exc}") from None
    if not isinstance(doc, dict):
        raise CorruptionError(f"{where}: not a JSON object (damaged?)")
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise FormatError(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels")
    if doc.get("format") != fmt:
        raise FormatError(f"{where}: not a {fmt} document (format {doc.get('format')!r})")
    ver = doc.get("version")
    if (not isinstance(ver, list) or len(ver) != 2 or not all(_is_int(v) and 0 <= v < 2**16 for v in ver)):
        raise FormatError(f"{where}: version {ver!r} is not [major, minor]")
    if ver[0] != FORMAT_MAJOR:
        raise _version_error(where, ver[0], ver[1])
    dg = doc.get("digest")
    if not isinstance(dg, str):
        raise CorruptionError(f"{where}: has no digest")
    body = {k: v for k, v in doc.items() if k != "digest"}
    try:
        want = digest_hex(canonical_json(body))
    except (ValueError, TypeError, RecursionError) as exc:  # pragma: no cover - json.loads output
        raise CorruptionError(f"{where}: cannot be canonicalised: {exc}") from None
    if dg != want:
        raise CorruptionError(f"{where}: BLAKE3 digest mismatch (the file is damaged)")
    return doc


# -- field validation ----------------------------------------------------------------
def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v))


class _Fields:
    """Typed access to a document's fields; every failure is a FormatError naming the file."""

    def __init__(self, doc: dict[str, Any], where: str) -> None:
        self.doc = doc
        self.where = where

    def fail(self, why: str) -> FormatError:
        return FormatError(f"{self.where}: {why}")

    def get(self, key: str, *, optional: bool = False) -> Any:
        if key not in self.doc:
            if optional:
                return None
            raise self.fail(f"field {key!r} is missing")
        return self.doc[key]

    def integer(self, key: str, lo: int, hi: int, *, optional: bool = False) -> int | None:
        v = self.get(key, optional=optional)
        if v is None and optional:
            return None
        if not _is_int(v) or not lo <= v <= hi:
            raise self.fail(f"field {key!r} must be an integer in {lo}..{hi}, not {v!r}")
        return int(v)

    def number(self, key: str, *, optional: bool = False) -> float | None:
        v = self.get(key, optional=optional)
        if v is None and optional:
            return None
        if not _is_num(v) or v < 0:
            raise self.fail(f"field {key!r} must be a finite non-negative number, not {v!r}")
        return float(v)

    def text(self, key: str, *, optional: bool = False, choices: tuple[str, ...] | None = None,
             maxlen: int = 4096) -> str | None:
        v = self.get(key, optional=optional)
        if v is None and optional:
            return None
        if not isinstance(v, str) or len(v) > maxlen or (choices is not None and v not in choices):
            want = f"one of {choices}" if choices else f"a string of at most {maxlen} characters"
            raise self.fail(f"field {key!r} must be {want}, not {v!r:.80}")
        return v

    def obj(self, key: str, *, optional: bool = False) -> dict[str, Any]:
        v = self.get(key, optional=optional)
        if v is None and optional:
            return {}
        if not isinstance(v, dict):
            raise self.fail(f"field {key!r} must be an object, not {type(v).__name__}")
        return v

    def sub(self, key: str) -> _Fields:
        return _Fields(self.obj(key), f"{self.where} [{key}]")


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def check_store_header(doc: dict[str, Any], where: str) -> int:
    """The validated page size of a store header."""
    f = _Fields(doc, where)
    ps = f.integer("page_size", MIN_PAGE_SIZE, MAX_PAGE_SIZE)
    if not valid_page_size(ps):
        raise f.fail(f"page size {ps} is not a power of two")
    f.number("created", optional=True)
    return int(ps)  # type: ignore[arg-type]


def check_layout(layout: dict[str, Any], *, npages: int, page_size: int, where: str) -> None:
    """Arena.layout() form: every array must be a well-formed, in-arena, plain dtype."""
    f = _Fields(layout, where)
    limit = npages * page_size
    if "nbytes" in layout:
        f.integer("nbytes", 0, limit)
    if "page_size" in layout and f.integer("page_size", 0, MAX_PAGE_SIZE) != page_size:
        raise f.fail(f"layout page_size {layout['page_size']} differs from the epoch's {page_size}")
    if "hugepages" in layout and not isinstance(layout["hugepages"], bool):
        raise f.fail("layout 'hugepages' must be true or false")
    arrays = f.get("arrays", optional=True)
    if arrays is None:
        return
    if not isinstance(arrays, list):
        raise f.fail("layout 'arrays' must be a list")
    names: set[str] = set()
    for i, a in enumerate(arrays):
        af = _Fields(a if isinstance(a, dict) else {}, f"{where} [layout array {i}]")
        if not isinstance(a, dict):
            raise af.fail("must be an object")
        name = af.text("name", maxlen=1024)
        if not name or name in names:
            raise af.fail(f"name {name!r} is empty or repeated")
        names.add(name)  # type: ignore[arg-type]
        dt = af.text("dtype", maxlen=256)
        try:
            dtype = np.dtype(dt)
        except (TypeError, ValueError, SyntaxError):
            raise af.fail(f"dtype {dt!r} is not a numpy dtype") from None
        if "fields" in a:  # a structured dtype (Arena.layout() records its fields)
            try:
                from ..arena import layout_dtype
                dtype = np.dtype(layout_dtype(a))
            except Exception as exc:  # hostile field specs: any failure is a format error
                raise af.fail(f"fields do not describe a numpy dtype: {exc}") from None
            if np.dtype(dt).itemsize != dtype.itemsize:
                raise af.fail(f"fields describe {dtype.itemsize}-byte items, dtype {dt!r} does not")
        if dtype.hasobject:
            raise af.fail(f"dtype {dt!r} holds Python objects")
        shape = af.get("shape")
        if (not isinstance(shape, list) or len(shape) > 64
                or not all(_is_int(s) and 0 <= s <= limit for s in shape)):
            raise af.fail(f"shape {shape!r:.80} must be a list of non-negative integers")
        off = af.integer("offset", 0, limit)
        nbytes = af.integer("nbytes", 0, limit)
        if math.prod(shape) * dtype.itemsize != nbytes or off + nbytes > limit:  # type: ignore[operator]
            raise af.fail(f"offset {off} and {nbytes} bytes do not fit shape {shape} of "
                          f"{dtype.str} in an arena of {limit} bytes")
        if off % page_size:  # type: ignore[operator]
            raise af.fail(f"offset {off} is not page aligned")


def check_manifest(doc: dict[str, Any], *, epoch: int, page_size: int, where: str) -> dict[str, Any]:
    """Validate every field a reader uses; return doc (with ``extra`` defaulted)."""
    f = _Fields(doc, where)
    if f.integer("epoch", 0, MAX_EPOCH) != epoch:
        raise CorruptionError(f"{where}: names epoch {doc['epoch']}, but its file name says {epoch}")
    kind = f.text("kind", choices=("full", "incremental"))
    parent = f.integer("parent", 0, max(epoch - 1, 0), optional=True)
    if parent is not None and parent >= epoch:
        raise f.fail(f"parent {parent} is not older than the epoch")
    if kind == "incremental" and parent is None:
        raise f.fail("an incremental epoch must have a parent")
    ps = f.integer("page_size", MIN_PAGE_SIZE, MAX_PAGE_SIZE)
    if ps != page_size:
        raise f.fail(f"page size {ps} differs from the store's {page_size}")
    npages = f.integer("npages", 0, MAX_NPAGES)
    f.number("created")
    f.text("label", optional=True)
    f.text("tracker", optional=True, maxlen=256)
    f.text("mode", optional=True, maxlen=256)
    f.text("compress", optional=True, choices=tuple(COMPRESSORS))
    check_layout(f.obj("layout"), npages=npages, page_size=ps, where=where)  # type: ignore[arg-type]
    counts = f.sub("counts")
    for k in ("pages_dirty", "pages_stored", "pages_zero", "pages_dedup", "records"):
        counts.integer(k, 0, MAX_NPAGES)
    f.integer("bytes_on_disk", 0, 2**63)
    timings = f.sub("timings")
    timings.number("pause_s")
    timings.number("total_s")
    files = f.sub("files")
    gens = set()
    for ext in ("idx", "pack"):
        ff = files.sub(ext)
        name = ff.text("name", maxlen=64)
        parsed = parse_data_name(name)  # type: ignore[arg-type]
        if parsed is None or parsed[0] != epoch or parsed[2] != ext:
            raise ff.fail(f"file name {name!r} is not an {ext} file of epoch {epoch} "
                          f"(must be e{epoch:08d}-<generation>.{ext}, inside the store)")
        gens.add(parsed[1])
        ff.integer("size", 0, 2**63)
        dg = ff.text("blake3", maxlen=64)
        if not _HEX64.match(dg):  # type: ignore[arg-type]
            raise ff.fail(f"blake3 {dg!r} is not 64 lowercase hex digits")
    if len(gens) != 1:
        raise f.fail("idx and pack files are of different generations")
    doc.setdefault("extra", {})
    f.obj("extra")
    if doc.get("compacted") is not None:
        comp = f.sub("compacted")
        run = comp.get("from")
        if (not isinstance(run, list) or not run or run[-1] != epoch
                or not all(_is_int(e) and 0 <= e <= epoch for e in run)
                or any(a >= b for a, b in zip(run, run[1:]))):
            raise comp.fail(f"'from' must list the merged epochs, ascending, ending with {epoch}")
        ident = comp.text("identity", optional=True, maxlen=64)
        if ident is not None and not _HEX64.match(ident):
            raise comp.fail(f"identity {ident!r} is not 64 lowercase hex digits")
    pd = f.text("parent_digest", optional=True, maxlen=64)
    if pd is not None:
        if not _HEX64.match(pd):
            raise f.fail(f"parent_digest {pd!r} is not 64 lowercase hex digits")
        if parent is None:
            raise f.fail("has a parent_digest but no parent")
    elif kind == "incremental" and tuple(doc.get("version") or (1, 0)) >= (1, 1):
        # every 1.1 writer records it: without it the chain could not be checked
        raise f.fail("an incremental epoch of format 1.1 or later must record its parent_digest")
    return doc


def manifest_identity(doc: dict[str, Any]) -> str:
    """What a child's ``parent_digest`` names: the digest of the manifest
    the epoch was first committed with. Compaction rewrites the manifest of
    the epoch it merges into and carries this over as ``compacted.identity``
    (its content is unchanged), so the ties of that epoch's children hold."""
    comp = doc.get("compacted") or {}
    ident = comp.get("identity")
    return ident if isinstance(ident, str) else doc["digest"]


def manifest_generation(doc: dict[str, Any]) -> int:
    parsed = parse_data_name(doc["files"]["pack"]["name"])
    assert parsed is not None
    return parsed[1]


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
