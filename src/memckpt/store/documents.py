"""The store's JSON documents (store header and epoch manifests): canonical
form, self-digests, bounded parsing, and field-by-field validation. Pure: no
I/O. memckpt.store.format re-exports all of it (docs/format.md is the reference)."""
from __future__ import annotations

import json
import math
import re
from typing import Any

import blake3
import numpy as np

from ..errors import CorruptionError, FormatError
from .binary import (COMPRESSORS, FORMAT_MAJOR, MAX_EPOCH, MAX_JSON_DEPTH, MAX_NPAGES, MAX_PAGE_SIZE,
                     MIN_PAGE_SIZE, _is_int, _version_error, parse_data_name, valid_page_size)


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
    version = tuple(doc.get("version") or (1, 0))
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
    timings.number("call_s", optional=True)  # optional: older writers omit it, older readers ignore it
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
        # 1.2 writes no whole-file digest of the pack (each image has its record's)
        dg = ff.text("blake3", maxlen=64, optional=ext == "pack" and version >= (1, 2))
        if dg is not None and not _HEX64.match(dg):
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
    elif kind == "incremental" and version >= (1, 1):
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
