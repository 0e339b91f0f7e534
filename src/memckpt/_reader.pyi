"""Stub of the compiled epoch reader binding (_reader.pyx)."""
from typing import Any

import numpy as np
from typing_extensions import disjoint_base

RECORD_SIZE: int
PACK_HEADER_SIZE: int
FLAG_ZERO: int
FLAG_ZSTD: int
FLAG_LZ4: int
FAULT_DIGEST: int
FAULT_SHORT: int
FAULT_DECODE: int
FAULT_RECORD: int
FAULT_IO: int

def codecs() -> frozenset[str]: ...

class ReadFault(Exception):
    kind: int
    source: int
    record: int
    page: int
    offset: int
    nbad: int
    why: str
    err: int
    def __init__(self, kind: int, source: int, record: int, page: int, offset: int,
                 nbad: int, why: str, err: int) -> None: ...

@disjoint_base
class ReadPlan:
    def __init__(self, sources: list[tuple[int, np.ndarray, int]], out: np.ndarray,
                 want: Any = None, *, verify: bool = True, out_is_zero: bool = False,
                 defer_coded: bool = False, fill_huge: bool = False) -> None: ...
    @property
    def units(self) -> int: ...
    def pages(self, end: int | None = None) -> int: ...
    def page_counts(self) -> np.ndarray: ...
    def deferred(self) -> tuple[np.ndarray, np.ndarray]: ...
    def prefault(self, threads: int = 0) -> tuple[int, int]: ...
    def fill_in_run(self) -> int: ...
    def huge_blocks(self) -> int: ...
    def split_huge(self) -> None: ...
    def run(self, first: int = 0, last: int | None = None, threads: int = 0) -> None: ...
