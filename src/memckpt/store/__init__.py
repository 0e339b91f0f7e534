"""The on-disk store: a directory of immutable epochs (see docs/format.md).

The contract is in contract.py; Store (local.py) and EpochWriter (writer.py)
are loaded on first use, so that contract.open_store can be imported without
numpy or the store's other dependencies (the CLI's `doctor` needs that)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .local import Store
    from .writer import EpochWriter

__all__ = ["EpochWriter", "Store"]


def __getattr__(name: str) -> Any:
    if name == "Store":
        from .local import Store
        return Store
    if name == "EpochWriter":
        from .writer import EpochWriter
        return EpochWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
