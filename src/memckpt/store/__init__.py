"""The on-disk store: a directory of immutable epochs (see docs/format.md).

The contract the rest of memckpt codes against is contract.py; Store
(local.py) is its implementation, EpochWriter (writer.py) its writer."""
from .local import Store
from .writer import EpochWriter

__all__ = ["EpochWriter", "Store"]
