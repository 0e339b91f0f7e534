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
I/O. binary.py holds the names, limits and binary files, documents.py the
JSON documents; this module re-exports both (the store imports it).

Every check raises :class:`FormatError` (not a format or version this
reads, or a structurally impossible value) or :class:`CorruptionError` (a
digest or size that does not match), with a message naming the file, so a
damaged or hostile file never surfaces as ``KeyError``/``TypeError``.
"""
from __future__ import annotations

from .binary import (  # noqa: F401 (re-exported)
    _is_int as _is_int,
    FORMAT_MAJOR as FORMAT_MAJOR,
    FORMAT_MINOR as FORMAT_MINOR,
    VERSION as VERSION,
    DATA_MINOR as DATA_MINOR,
    STORE_FORMAT as STORE_FORMAT,
    EPOCH_FORMAT as EPOCH_FORMAT,
    STORE_HEADER as STORE_HEADER,
    LOCK_NAME as LOCK_NAME,
    TMP_SUFFIX as TMP_SUFFIX,
    MANIFEST_RE as MANIFEST_RE,
    DATA_RE as DATA_RE,
    MAX_EPOCH as MAX_EPOCH,
    MAX_GEN as MAX_GEN,
    MAX_MANIFEST_BYTES as MAX_MANIFEST_BYTES,
    MAX_HEADER_BYTES as MAX_HEADER_BYTES,
    MAX_JSON_DEPTH as MAX_JSON_DEPTH,
    manifest_name as manifest_name,
    data_name as data_name,
    parse_manifest_name as parse_manifest_name,
    parse_data_name as parse_data_name,
    FLAG_ZERO as FLAG_ZERO,
    FLAG_ZSTD as FLAG_ZSTD,
    FLAG_LZ4 as FLAG_LZ4,
    KNOWN_FLAGS as KNOWN_FLAGS,
    COMPRESSORS as COMPRESSORS,
    ZSTD_LEVEL as ZSTD_LEVEL,
    IDX_MAGIC as IDX_MAGIC,
    IDX_HEADER as IDX_HEADER,
    IDX_HEADER_SIZE as IDX_HEADER_SIZE,
    RECORD_DTYPE as RECORD_DTYPE,
    RECORD_SIZE as RECORD_SIZE,
    PACK_MAGIC as PACK_MAGIC,
    PACK_HEADER as PACK_HEADER,
    PACK_HEADER_SIZE as PACK_HEADER_SIZE,
    MIN_PAGE_SIZE as MIN_PAGE_SIZE,
    MAX_PAGE_SIZE as MAX_PAGE_SIZE,
    MAX_NPAGES as MAX_NPAGES,
    valid_page_size as valid_page_size,
    zero_digest as zero_digest,
    pack_header as pack_header,
    idx_header as idx_header,
    _version_error as _version_error,
    parse_pack_header as parse_pack_header,
    parse_index as parse_index,
    check_records as check_records,
    codec as codec,
)
from .documents import (  # noqa: F401 (re-exported)
    canonical_json as canonical_json,
    digest_hex as digest_hex,
    sign as sign,
    dump_document as dump_document,
    _no_duplicates as _no_duplicates,
    _no_constant as _no_constant,
    json_depth as json_depth,
    load_document as load_document,
    _is_num as _is_num,
    _Fields as _Fields,
    _HEX64 as _HEX64,
    check_store_header as check_store_header,
    check_layout as check_layout,
    check_manifest as check_manifest,
    manifest_identity as manifest_identity,
    manifest_generation as manifest_generation,
)

__all__ = [
    "_is_int",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "VERSION",
    "DATA_MINOR",
    "STORE_FORMAT",
    "EPOCH_FORMAT",
    "STORE_HEADER",
    "LOCK_NAME",
    "TMP_SUFFIX",
    "MANIFEST_RE",
    "DATA_RE",
    "MAX_EPOCH",
    "MAX_GEN",
    "MAX_MANIFEST_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "manifest_name",
    "data_name",
    "parse_manifest_name",
    "parse_data_name",
    "FLAG_ZERO",
    "FLAG_ZSTD",
    "FLAG_LZ4",
    "KNOWN_FLAGS",
    "COMPRESSORS",
    "ZSTD_LEVEL",
    "IDX_MAGIC",
    "IDX_HEADER",
    "IDX_HEADER_SIZE",
    "RECORD_DTYPE",
    "RECORD_SIZE",
    "PACK_MAGIC",
    "PACK_HEADER",
    "PACK_HEADER_SIZE",
    "MIN_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MAX_NPAGES",
    "valid_page_size",
    "zero_digest",
    "pack_header",
    "idx_header",
    "_version_error",
    "parse_pack_header",
    "parse_index",
    "check_records",
    "codec",
    "canonical_json",
    "digest_hex",
    "sign",
    "dump_document",
    "_no_duplicates",
    "_no_constant",
    "json_depth",
    "load_document",
    "_is_num",
    "_Fields",
    "_HEX64",
    "check_store_header",
    "check_layout",
    "check_manifest",
    "manifest_identity",
    "manifest_generation",
]
