"""The checkpointer's arguments, checked before anything is opened."""
from __future__ import annotations

from ..capture import check_mode

COMPRESSORS = (None, "zstd", "lz4")


def check_args(mode: str, compress: str | None, full_every: int | None,
                staging: int | None, keep_last: int | None = None,
                threads: int | None = None) -> None:
    if mode != "auto":  # checkpoint/auto.py picks a mode this kernel runs
        check_mode(mode, compress)
    if staging is not None and (isinstance(staging, bool) or not isinstance(staging, int)
                                or staging < 0):
        raise ValueError(f"staging must be a number of bytes (0 or more) or None, not {staging!r}")
    if compress not in COMPRESSORS:
        raise ValueError(f"compress must be one of {COMPRESSORS}, not {compress!r}")
    if full_every is not None and (isinstance(full_every, bool) or not isinstance(full_every, int)
                                   or full_every < 1):
        raise ValueError(f"full_every must be a positive int or None, not {full_every!r}")
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int)
                                  or keep_last < 1):
        raise ValueError(f"keep_last must be a positive int or None, not {keep_last!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads must be a positive int or None (the CPUs available), "
                         f"not {threads!r}")
