"""Stores for the lazy restore tests: randomized chains with a real arena
layout (one uint8 array of the pages), so memckpt.restore can lay them out."""
from __future__ import annotations

from typing import Any

import numpy as np

from memckpt.store import Store

PS = 4096


def layout(npages: int) -> dict[str, Any]:
    return {"nbytes": npages * PS, "page_size": PS, "hugepages": False,
            "arrays": [{"name": "state", "dtype": "|u1", "shape": [npages, PS], "offset": 0,
                        "nbytes": npages * PS}]}


def page_kinds(rng: np.random.Generator, state: np.ndarray, pages: np.ndarray) -> None:
    """Rewrite ``pages``: random, patterned (compressible), zero, or a copy of another (dedup)."""
    for p in pages.tolist():
        k = rng.integers(0, 8)
        if k < 3:
            state[p] = rng.integers(0, 256, PS, dtype=np.uint8)
        elif k < 5:
            state[p] = np.tile(rng.integers(0, 256, 64, dtype=np.uint8), PS // 64)
        elif k == 5:
            state[p] = 0
        else:
            state[p] = state[int(rng.integers(0, len(state)))]


def commit(s: Store, state: np.ndarray, pages: Any, *, kind: str, parent: int | None,
           compress: str | None) -> int:
    npages = len(state)
    if kind == "full":
        pages = np.arange(npages, dtype=np.uint64)
    w = s.begin(kind=kind, parent=parent, layout=layout(npages), page_size=PS, npages=npages,
                compress=compress)
    w.add_pages(np.asarray(pages, dtype=np.uint64), state[np.asarray(pages, dtype=np.int64)])
    return w.commit(pages_dirty=len(pages), pause_s=0.001, tracker="test", mode="sync").epoch


def random_chain(path: Any, seed: int, compress: str | None, npages: int = 700,
                 nepochs: int = 6) -> tuple[Store, dict[int, np.ndarray]]:
    """A full epoch, incrementals, a full one mid-chain; some never-written pages."""
    rng = np.random.default_rng(seed)
    s = Store(path, create=True, page_size=PS)
    state = np.zeros((npages, PS), np.uint8)
    page_kinds(rng, state, np.arange(npages - npages // 10))  # the tail: never written
    expected = {}
    e = commit(s, state, None, kind="full", parent=None, compress=compress)
    expected[e] = state.copy()
    for i in range(nepochs - 1):
        if i == 2:
            page_kinds(rng, state, rng.choice(npages, 50, replace=False))
            e = commit(s, state, None, kind="full", parent=e, compress=compress)
        else:
            pages = np.sort(rng.choice(npages, int(rng.integers(1, npages // 2)), replace=False))
            page_kinds(rng, state, pages)
            e = commit(s, state, pages, kind="incremental", parent=e, compress=compress)
        expected[e] = state.copy()
    return s, expected
