"""What a page digest costs: the blake3 package called once per page (the
store's old way), the core's batched BLAKE3 (one call for all pages, each
implementation this CPU has), and a copy of the same bytes as the floor.

32 MiB of random pages (MEMCKPT_BENCH_HASH_MIB to change), 4 KiB and 64 KiB
pages. Every benchmark checks its digests against the blake3 package outside
the timing.

    .venv/bin/python -m pytest bench/bench_hash.py --benchmark-json=bench/results/hash.json
"""
from __future__ import annotations

import os

import blake3
import numpy as np
import pytest

from memckpt import _core

MIB = int(os.environ.get("MEMCKPT_BENCH_HASH_MIB", "32"))
PAGE_SIZES = [4096, 65536]
IMPLS = ["avx512", "avx2", "sse2", "portable"]


@pytest.fixture(scope="module", params=PAGE_SIZES, ids=lambda ps: f"{ps // 1024}k")
def pages(request) -> np.ndarray:
    ps = request.param
    n = (MIB << 20) // ps
    return np.random.default_rng(ps).integers(0, 256, (n, ps), dtype=np.uint8)


def _reference(pages: np.ndarray, rows: list[int]) -> np.ndarray:
    return np.array([np.frombuffer(blake3.blake3(pages[r]).digest(), np.uint8) for r in rows])


def _per_page(benchmark, pages: np.ndarray) -> None:
    benchmark.extra_info["pages"] = len(pages)
    benchmark.extra_info["page_size"] = pages.shape[1]


def test_python_per_page(benchmark, pages):
    b3 = blake3.blake3
    _per_page(benchmark, pages)
    got = benchmark(lambda: [h.digest() for h in map(b3, pages)])
    assert np.array_equal(np.frombuffer(b"".join(got), np.uint8).reshape(-1, 32)[:3],
                          _reference(pages, [0, 1, 2]))


@pytest.mark.parametrize("impl", IMPLS)
def test_core_batched(benchmark, pages, impl):
    try:
        _core.blake3_set_impl(impl)
    except ValueError as e:
        pytest.skip(str(e))
    try:
        out = np.empty((len(pages), 32), dtype=np.uint8)
        _per_page(benchmark, pages)
        benchmark.extra_info["impl"] = impl
        benchmark(_core.hash_pages, pages, out)
    finally:
        _core.blake3_set_impl(None)
    rows = [0, len(pages) // 2, len(pages) - 1]
    assert np.array_equal(out[rows], _reference(pages, rows))


def test_floor_memcpy(benchmark, pages):
    dst = np.empty_like(pages)
    _per_page(benchmark, pages)
    benchmark(np.copyto, dst, pages)
    assert np.array_equal(dst, pages)
