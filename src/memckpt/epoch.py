"""EpochInfo: what one committed checkpoint epoch holds and cost."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EpochInfo:
    """One committed epoch, as its manifest records it.

    ``kind`` is ``"full"`` (the chain starts here) or ``"incremental"``
    (holds the pages written since ``parent``). ``pages_dirty`` is what the
    tracker reported; ``pages_stored`` what the pack holds after zero pages
    were elided and identical pages stored once. ``pause_s`` is how long the
    program was stopped; ``total_s`` runs from the start of the pause until
    the epoch was durable; ``call_s`` is how long ``checkpoint()`` blocked its
    caller (None in epochs written before it was recorded, and in epochs not
    taken by a Checkpointer).
    ``created`` is a Unix timestamp (seconds).
    """

    epoch: int
    parent: int | None
    kind: str
    pages_dirty: int
    pages_stored: int
    bytes_on_disk: int
    pause_s: float
    total_s: float
    created: float
    label: str | None = None
    tracker: str | None = None
    mode: str | None = None
    call_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
