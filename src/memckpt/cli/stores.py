"""Opening a store for a command and naming its epochs, the way every
store command does: the errors say what is at the path, which epochs exist."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from .base import CliError
from .output import fmt_epochs


def open_store(path: str) -> Any:
    """An existing store, or a CliError that says what is at ``path`` instead."""
    # imported late: `doctor` must work without the store's dependencies
    from ..store.contract import open_store as open_any
    return open_any(path, create=False, missing=CliError)[0]


@contextmanager
def opened(path: str) -> Iterator[Any]:
    """open_store(path), closed when the command is done with it."""
    store = open_store(path)
    try:
        yield store
    finally:
        close_store(store)


def close_store(store: Any) -> None:
    close = getattr(store, "close", None)
    if close is not None:
        close()


def read_infos(store: Any) -> tuple[list[Any], list[tuple[int, str]]]:
    """Every epoch's EpochInfo that can be read, and (epoch, why) for those that cannot."""
    from ..errors import EpochNotFound, MemckptError
    good, bad = [], []
    for n in store.epoch_numbers():
        try:
            good.append(store.info(n))
        except EpochNotFound:  # retired since the listing (a prune or compaction): not damage
            continue
        except (MemckptError, OSError) as exc:
            bad.append((n, " ".join(str(exc).split())))
    return good, bad


def resolve_epoch(store: Any, spec: str | int | None, *, what: str = "epoch") -> int:
    """An epoch number that the store has: an int, "latest", or None (= latest)."""
    nums = store.epoch_numbers()
    if not nums:
        raise CliError(f"the store {store.path} has no committed epochs")
    if spec is None or spec == "latest":
        return nums[-1]
    try:
        n = int(spec)
    except (TypeError, ValueError):
        raise CliError(f"{what} must be a number or 'latest', not {spec!r}") from None
    if n < 0:  # -1 is the latest, as in Python
        if -n > len(nums):
            raise CliError(f"{what} {n}: the store has only {len(nums)} epochs")
        return nums[n]
    if n not in nums:
        raise CliError(f"no epoch {n} in {store.path} (it has epochs {fmt_epochs(nums)})")
    return n


def epoch_dict(info: Any) -> dict[str, Any]:
    d = asdict(info)
    d["extra"] = dict(getattr(info, "extra", {}) or {})
    return d


def dtype_name(entry: dict[str, Any]) -> str:
    """float64, int32, ... (a structured dtype: its fields), for a table."""
    from ..arena import layout_dtype
    try:
        dt = layout_dtype(entry)
    except (TypeError, ValueError, KeyError):
        return str(entry.get("dtype"))
    if dt.fields is not None:
        return "{" + ", ".join(f"{n}: {dt.fields[n][0].name}" for n in dt.names or ()) + "}"
    return dt.name
