"""The on-disk store: a directory of immutable epochs (see docs/format.md)."""
from .local import EpochWriter, Store

__all__ = ["EpochWriter", "Store"]
