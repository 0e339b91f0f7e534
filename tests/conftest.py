import os

import numpy as np
import pytest

import memckpt

BACKENDS = [t.name for t in memckpt.trackers()]
IN_CI = bool(os.environ.get("CI"))


def tracker_info(name: str) -> memckpt.TrackerInfo:
    return next(t for t in memckpt.trackers() if t.name == name)


def require_backend(name: str) -> memckpt.TrackerInfo:
    info = tracker_info(name)
    if not info.available:
        pytest.skip(f"{name} unavailable on this kernel: {info.reason}")
    return info


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Each dirty-tracking backend in turn; skipped, with the reason, where unavailable."""
    require_backend(request.param)
    return request.param


def pages_view(arena: memckpt.Arena, arr: np.ndarray) -> np.ndarray:
    """arr's bytes seen as (pages, page_size) uint8, for writing page by page."""
    return arr.view(np.uint8).reshape(-1, arena.page_size)


def touch(pages: np.ndarray, idx) -> None:
    """Change one byte of each page in idx (the content really changes, so
    that the compare backend sees it as a write too)."""
    idx = np.asarray(idx, dtype=np.int64)
    pages[idx, 7] += np.uint8(1)
