"""Global commit records: the files that make a set of per-rank epochs one
global epoch. No MPI here: rank 0 writes them, anyone may read them.

``ROOT/global/g00000017.json`` is global epoch 17. It is written only after
every rank's epoch is durable and every rank said so, to a temporary name,
fsynced, renamed into place and the directory fsynced: the rename is the
commit point of the global epoch. It names, for each rank, the store (relative
to ROOT when it lies under it), the epoch number and the manifest digest that
epoch was committed with (its identity: compaction keeps it), so a restart
can tell the epoch the record meant from another epoch of the same number.
A signed JSON document like the store's manifests (docs/mpi.md).
"""
from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CorruptionError, FormatError, MemckptError
from ..store.documents import dump_document, load_document, sign
from ..store.io import _DIR_MODE, _fsync_dir, _read_small, _unlink, _write_durable

RECORD_FORMAT = "memckpt-global"
RECORD_VERSION = [1, 0]
GLOBAL_DIR = "global"
_NAME_RE = re.compile(r"^g([0-9]{8,19})\.json$")
_MAX_RECORD_BYTES = 16 << 20


def record_name(number: int) -> str:
    return f"g{number:08d}.json"


@dataclass(frozen=True)
class RankEpoch:
    """One rank's part of a global epoch: its store, epoch and manifest identity."""

    rank: int
    store: str
    epoch: int
    digest: str


@dataclass(frozen=True)
class GlobalEpoch:
    """A committed global epoch, as its record says."""

    number: int
    ranks: tuple[RankEpoch, ...]
    created: float
    label: str | None = None
    pause_s: float = 0.0
    total_s: float = 0.0

    @property
    def size(self) -> int:
        return len(self.ranks)

    def to_doc(self) -> dict[str, Any]:
        return sign({
            "format": RECORD_FORMAT, "version": RECORD_VERSION, "global_epoch": self.number,
            "size": self.size, "created": self.created, "label": self.label,
            "timings": {"pause_s": self.pause_s, "total_s": self.total_s},
            "ranks": [{"rank": r.rank, "store": r.store, "epoch": r.epoch, "digest": r.digest}
                      for r in self.ranks],
        })

    @classmethod
    def from_doc(cls, doc: dict[str, Any], where: str) -> GlobalEpoch:
        try:
            ranks = tuple(RankEpoch(int(r["rank"]), str(r["store"]), int(r["epoch"]),
                                    str(r["digest"])) for r in doc["ranks"])
            timings = doc.get("timings") or {}
            out = cls(int(doc["global_epoch"]), ranks, float(doc["created"]),
                      doc.get("label"), float(timings.get("pause_s", 0.0)),
                      float(timings.get("total_s", 0.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{where}: not a valid global commit record ({e!r})") from None
        if doc.get("size") != len(ranks) or [r.rank for r in ranks] != list(range(len(ranks))):
            raise FormatError(f"{where}: its ranks are not 0..size-1")
        return out


def global_dir(root: str | os.PathLike[str]) -> Path:
    return Path(root) / GLOBAL_DIR


def record_numbers(root: str | os.PathLike[str]) -> list[int]:
    """The global epochs whose record is in place, ascending (names alone)."""
    try:
        names = os.listdir(global_dir(root))
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_NAME_RE.match, names) if m)


def read_record(root: str | os.PathLike[str], number: int) -> GlobalEpoch:
    """The record of global epoch ``number``, checked (format, digest, fields):
    CorruptionError or FormatError naming the file otherwise."""
    path = global_dir(root) / record_name(number)
    where = str(path)
    raw = _read_small(path, _MAX_RECORD_BYTES, where)
    rec = GlobalEpoch.from_doc(load_document(raw, where=where, fmt=RECORD_FORMAT), where)
    if rec.number != number:
        raise CorruptionError(f"{where}: holds global epoch {rec.number}, not {number}")
    return rec


def readable_records(root: str | os.PathLike[str], size: int) -> list[GlobalEpoch]:
    """The records under ``root`` that read and check, newest first, for a job
    of ``size`` ranks; a damaged one is skipped with a warning (it commits
    nothing), one of another size is an error (a restart must use as many ranks)."""
    out = []
    for n in reversed(record_numbers(root)):
        try:
            rec = read_record(root, n)
        except (CorruptionError, FormatError, FileNotFoundError) as e:
            warnings.warn(f"memckpt.mpi: skipping global epoch {n}: {e}", RuntimeWarning,
                          stacklevel=2)
            continue
        if rec.size != size:
            raise MemckptError(f"{global_dir(root) / record_name(n)}: global epoch {n} has "
                               f"{rec.size} ranks, this job {size}: restart with "
                               f"{rec.size} ranks (each rank restores its own arena)")
        out.append(rec)
    return out


def write_record(root: str | os.PathLike[str], rec: GlobalEpoch) -> Path:
    """Commit ``rec``: temporary file, fsync, rename, directory fsync. A record
    already in place is never replaced (global epochs are immutable)."""
    gdir = global_dir(root)
    gdir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    final = gdir / record_name(rec.number)
    if final.exists():
        raise MemckptError(f"{final}: global epoch {rec.number} is committed already "
                           "(two jobs on one root?)")
    tmp = gdir / f".{record_name(rec.number)}.{os.getpid()}.tmp"
    try:
        _write_durable(tmp, dump_document(rec.to_doc()))
        os.rename(tmp, final)
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(gdir)
    return final


def sweep_tmp(root: str | os.PathLike[str]) -> None:
    """Remove the temporary records a killed rank 0 left (never a record)."""
    gdir = global_dir(root)
    try:
        names = os.listdir(gdir)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(".g") and name.endswith(".tmp"):
            _unlink(gdir / name)


def now() -> float:
    return time.time()
