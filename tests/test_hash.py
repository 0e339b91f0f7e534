"""The core's BLAKE3 (csrc/blake3.c, via memckpt._core) against the `blake3`
package (the reference implementation's binding), bit for bit: random data and
sizes, streaming, hash_pages and hash_pages_at at every page size, through each
implementation this CPU has (the SIMD ones and the portable one)."""
import threading
import time

import blake3 as ref
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memckpt import _core

IMPLS = ["portable", "sse2", "avx2", "avx512"]
PAGE_SIZES = [1 << k for k in range(9, 17)]  # 512 .. 64 KiB


def _available(name: str) -> bool:
    try:
        _core.blake3_set_impl(name)
    except ValueError:
        return False
    finally:
        _core.blake3_set_impl(None)
    return True


@pytest.fixture(params=IMPLS)
def impl(request):
    """Each implementation in turn (set for the whole test: hypothesis examples
    share it, which is what is wanted); skipped where this CPU lacks it."""
    if not _available(request.param):
        pytest.skip(f"BLAKE3 {request.param} is not available on this CPU")
    _core.blake3_set_impl(request.param)
    assert _core.blake3_impl() == request.param
    yield request.param
    _core.blake3_set_impl(None)


def _ref_pages(pages: np.ndarray) -> np.ndarray:
    return np.frombuffer(b"".join(ref.blake3(p).digest() for p in pages),
                         dtype=np.uint8).reshape(len(pages), 32)


def _rand(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=n, dtype=np.uint8)


def test_portable_is_always_available():
    assert _available("portable")
    assert _core.blake3_impl() in IMPLS


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="unknown BLAKE3 implementation"):
        _core.blake3_set_impl("sse9")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.one_of(st.integers(0, 5000), st.integers(0, 600_000)), seed=st.integers(0, 2**32 - 1))
def test_blake3_matches_reference(impl, size, seed):
    data = _rand(np.random.default_rng(seed), size).tobytes()
    assert _core.blake3(data) == ref.blake3(data).digest()


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 3072, 4096, 4097,
                                  8192, 65535, 65536, 65537, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_blake3_boundaries(impl, size):
    data = _rand(np.random.default_rng(size), size)
    assert _core.blake3(data) == ref.blake3(data).digest()
    assert _core.blake3(memoryview(data.tobytes())) == ref.blake3(data).digest()


def test_blake3_takes_any_contiguous_buffer():
    a = np.arange(1000, dtype=np.float64)
    assert _core.blake3(a) == ref.blake3(a.tobytes()).digest()
    assert _core.blake3(bytearray(b"xyz")) == ref.blake3(b"xyz").digest()
    with pytest.raises(TypeError):
        _core.blake3("a str is not bytes")
    with pytest.raises((ValueError, BufferError), match="contiguous"):
        _core.blake3(a[::2])  # numpy refuses a simple buffer of a strided view


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ps_log=st.integers(9, 16), n=st.integers(0, 70), seed=st.integers(0, 2**32 - 1))
def test_hash_pages_matches_reference(impl, ps_log, n, seed):
    ps = 1 << ps_log
    rng = np.random.default_rng(seed)
    pages = _rand(rng, n * ps).reshape(n, ps)
    if n:
        pages[rng.integers(0, n, size=n // 3)] = 0  # zero pages, as the store sees them
    got = _core.hash_pages(pages)
    assert got.shape == (n, 32) and got.dtype == np.uint8
    assert np.array_equal(got, _ref_pages(pages))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ps_log=st.integers(9, 16), npages=st.integers(1, 40), n=st.integers(0, 90),
       seed=st.integers(0, 2**32 - 1))
def test_hash_pages_at_matches_reference(impl, ps_log, npages, n, seed):
    ps = 1 << ps_log
    rng = np.random.default_rng(seed)
    base = _rand(rng, npages * ps).reshape(npages, ps)
    idx = rng.integers(0, npages, size=n, dtype=np.uint64)  # any order, repeats
    got = _core.hash_pages_at(base, idx)
    assert np.array_equal(got, _ref_pages(base[idx.astype(np.int64)]))


@pytest.mark.parametrize("ps", PAGE_SIZES + [1 << 17, 1 << 20])
def test_every_page_size(impl, ps):
    n = max(2, min(40, (4 << 20) // ps))
    pages = _rand(np.random.default_rng(ps), n * ps).reshape(n, ps)
    want = _ref_pages(pages)
    assert np.array_equal(_core.hash_pages(pages), want)
    idx = np.arange(n, dtype=np.uint64)[::-1].copy()
    assert np.array_equal(_core.hash_pages_at(pages, idx), want[::-1])


def test_page_size_not_a_power_of_two_is_still_correct():
    pages = _rand(np.random.default_rng(1), 5 * 3000).reshape(5, 3000)
    assert np.array_equal(_core.hash_pages(pages), _ref_pages(pages))


def test_out_is_filled_in_place():
    pages = _rand(np.random.default_rng(2), 8 * 4096).reshape(8, 4096)
    out = np.zeros((8, 32), dtype=np.uint8)
    assert _core.hash_pages(pages, out=out) is out
    assert np.array_equal(out, _ref_pages(pages))
    out2 = np.zeros((3, 32), dtype=np.uint8)
    assert _core.hash_pages_at(pages, [7, 0, 7], out=out2) is out2
    assert np.array_equal(out2, _ref_pages(pages[[7, 0, 7]]))


def test_read_only_input():
    pages = _rand(np.random.default_rng(3), 4 * 4096).reshape(4, 4096)
    pages.flags.writeable = False
    assert np.array_equal(_core.hash_pages(pages), _ref_pages(pages))


def test_bad_arguments_say_what_is_wrong():
    pages = np.zeros((4, 4096), dtype=np.uint8)
    with pytest.raises(TypeError, match="numpy array"):
        _core.hash_pages(b"\0" * 4096)
    with pytest.raises(ValueError, match="uint8 of shape"):
        _core.hash_pages(pages.view(np.uint32))
    with pytest.raises(ValueError, match="uint8 of shape"):
        _core.hash_pages(pages.reshape(-1))
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.hash_pages(pages[:, ::2])
    with pytest.raises(ValueError, match="0 bytes"):
        _core.hash_pages(np.zeros((4, 0), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"out must be uint8 of shape \(4, 32\)"):
        _core.hash_pages(pages, out=np.zeros((4, 16), dtype=np.uint8))
    ro = np.zeros((4, 32), dtype=np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        _core.hash_pages(pages, out=ro)
    with pytest.raises(IndexError, match="page 4, beyond base's 4 pages"):
        _core.hash_pages_at(pages, np.array([0, 4], dtype=np.uint64))
    with pytest.raises(ValueError, match="negative page number"):
        _core.hash_pages_at(pages, np.array([0, -1]))
    with pytest.raises(ValueError, match="page numbers"):
        _core.hash_pages_at(pages, np.array([0.5]))
    assert _core.hash_pages(np.zeros((0, 4096), dtype=np.uint8)).shape == (0, 32)
    assert _core.hash_pages_at(pages, np.zeros(0, dtype=np.uint64)).shape == (0, 32)


def test_hashing_releases_the_gil():
    """Another thread runs Python while one hash_pages call is inside the core."""
    pages = np.ones((32768, 4096), dtype=np.uint8)  # 128 MiB: one call of 40+ ms
    stamps: list[float] = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.0005)  # gives the GIL back at once

    t = threading.Thread(target=tick)
    t.start()
    try:
        while not stamps:
            time.sleep(0.001)
        t0 = time.perf_counter()
        _core.hash_pages(pages)
        t1 = time.perf_counter()
    finally:
        done.set()
        t.join()
    # a call holding the GIL would leave no stamp strictly inside [t0, t1]
    inside = sum(t0 < s < t1 for s in stamps)
    assert inside >= 3, f"{inside} ticks of the other thread during a {t1 - t0:.3f} s call"


@pytest.mark.parametrize("ps", [512, 4096, 65536])
def test_store_records_the_standard_digests(tmp_path, ps):
    """The digests the store writes (and checks on read) are the blake3
    package's, page by page: the on-disk format did not change."""
    from memckpt.store import Store

    rng = np.random.default_rng(ps)
    npages = 24
    pages = _rand(rng, npages * ps).reshape(npages, ps)
    pages[5] = 0
    pages[9] = pages[3]  # stored once, recorded twice
    with Store(tmp_path / "s", create=True, page_size=ps) as store:
        w = store.begin("full", None, {}, ps, npages)
        w.add_pages(np.arange(npages, dtype=np.uint64), pages)
        w.commit(pages_dirty=npages, pause_s=0.0)
        recs = store._index(1)
        want = _ref_pages(pages[recs["page"].astype(np.int64)])
        assert 5 not in recs["page"].tolist() and len(recs) == npages - 1
        assert np.array_equal(recs["digest"], want)
        out = np.zeros_like(pages)
        store.read_into(1, out)
        assert np.array_equal(out, pages)
        store.verify()
