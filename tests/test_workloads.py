"""Native workloads: each writes exactly the pages it says, and computes what
its numpy reference computes, bit for bit."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("cffi")

import memckpt  # noqa: E402
from memckpt import workloads as wl  # noqa: E402

from conftest import BACKENDS, tracker_info  # noqa: E402

EXACT = ["auto"] + [b for b in BACKENDS if tracker_info(b).exact]


@pytest.fixture(params=EXACT)
def exact_backend(request) -> str:
    if request.param != "auto":
        info = tracker_info(request.param)
        if not info.available:
            pytest.skip(f"{request.param} unavailable: {info.reason}")
    return request.param


@pytest.fixture(scope="module", autouse=True)
def _compiled(tmp_path_factory):
    try:
        wl.load()
    except wl.WorkloadBuildError as exc:
        pytest.skip(str(exc))


def expected_pages(arena: memckpt.Arena, arr: np.ndarray, starts, ends) -> np.ndarray:
    """The arena pages covering byte ranges [starts, ends) of arr."""
    off = arr.ctypes.data - arena.address
    starts = np.asarray(starts, dtype=np.int64) + off
    ends = np.asarray(ends, dtype=np.int64) + off
    ps = arena.page_size
    firsts, lasts = starts // ps, (ends - 1) // ps
    pages = [np.arange(f, l + 1) for f, l in zip(firsts, lasts)]
    return np.unique(np.concatenate(pages)).astype(np.uint64) if pages else np.empty(0, np.uint64)


def tracked(arena, backend, fn):
    with memckpt.DirtyTracker(arena, backend) as t:
        fn()
        return t.collect()


def test_random_pages(exact_backend):
    with memckpt.Arena(4 << 20) as arena:
        pad = arena.array("pad", 5, np.uint64)                   # "a" starts at arena page 1
        a = arena.array("a", (arena.nbytes - arena.page_size) // 8 - 1, np.uint64)
        rng = np.random.default_rng(1)
        a[:] = rng.integers(0, 2**63, a.size, dtype=np.uint64)
        before = a.copy()
        given = np.array([3, 0, 17, 500], dtype=np.uint64)
        pages = tracked(arena, exact_backend, lambda: wl.random_pages(a, given))
        first = arena.page_range("a")[0]
        np.testing.assert_array_equal(pages, np.sort(given) + first)
        ref = before.copy()
        ref[given.astype(np.int64) * (arena.page_size // 8)] += np.uint64(1)
        assert np.array_equal(a, ref)

        out: list[np.ndarray] = []
        pages = tracked(arena, exact_backend, lambda: out.append(wl.random_pages(a, npages=40, seed=7)))
        assert out[0].size == 40 and np.unique(out[0]).size == 40
        np.testing.assert_array_equal(pages, np.sort(out[0]) + first)
        np.testing.assert_array_equal(out[0], wl.random_pages(np.zeros(a.size, np.uint64), npages=40, seed=7))
        del pad


def test_strided(exact_backend):
    with memckpt.Arena(2 << 20) as arena:
        a = arena.array("pad", 100, np.uint8)
        x = arena.array("x", (1 << 20) + 3, np.uint8)
        stride, count = 12345, 80
        pages = tracked(arena, exact_backend, lambda: wl.strided(x, stride, count))
        offs = np.arange(count) * stride
        np.testing.assert_array_equal(pages, expected_pages(arena, x, offs, offs + 1))
        ref = np.zeros(x.size, np.uint8)
        np.add.at(ref, offs, 1)
        assert np.array_equal(x, ref)
        del a


@pytest.mark.parametrize("window", [None, (10, 37, 100, 400), (1, 2, 1, 2)])
def test_stencil(exact_backend, window):
    with memckpt.Arena(4 << 20) as arena:
        g = arena.array("grid", (96, 1000), np.float64)    # rows of 8000 bytes: not page multiples
        g[:] = np.random.default_rng(2).random(g.shape)
        ref = g.copy()
        pages = tracked(arena, exact_backend, lambda: wl.stencil_2d(g, 3, window))
        wl.stencil_2d_numpy(ref, 3, window)
        assert np.array_equal(g, ref)
        h, w = g.shape
        r0, r1, c0, c1 = (1, h - 1, 1, w - 1) if window is None else window
        rows = np.arange(r0, r1)
        np.testing.assert_array_equal(
            pages, expected_pages(arena, g, (rows * w + c0) * 8, (rows * w + c1) * 8))


def test_stencil_numpy_bit_identical_larger():
    g = np.random.default_rng(3).standard_normal((300, 257))
    ref = g.copy()
    wl.stencil_2d(g, 20, alpha=0.23)
    wl.stencil_2d_numpy(ref, 20, alpha=0.23)
    assert np.array_equal(g, ref)


@pytest.mark.parametrize("dim", [1, 3])
def test_particles(exact_backend, dim):
    with memckpt.Arena(8 << 20) as arena:
        n = 100_000
        shape = (n,) if dim == 1 else (n, dim)
        pos = arena.array("pos", shape, np.float64)
        vel = arena.array("vel", shape, np.float64)
        rng = np.random.default_rng(4)
        pos[:] = rng.standard_normal(shape)
        vel[:] = rng.standard_normal(shape)
        idx = rng.choice(n, 300, replace=False)
        rp, rv = pos.copy(), vel.copy()
        pages = tracked(arena, exact_backend, lambda: wl.particles(pos, vel, idx, 0.01))
        wl.particles_numpy(rp, rv, idx, 0.01)
        assert np.array_equal(pos, rp) and np.array_equal(vel, rv)
        row = dim * 8
        exp = np.union1d(expected_pages(arena, pos, idx * row, (idx + 1) * row),
                         expected_pages(arena, vel, idx * row, (idx + 1) * row))
        np.testing.assert_array_equal(pages, exp)


def test_argument_checks():
    g = np.zeros((10, 10))
    with pytest.raises(ValueError, match="C-contiguous"):
        wl.stencil_2d(np.zeros((10, 20))[:, ::2], 1)
    ro = np.zeros((10, 10))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        wl.stencil_2d(ro, 1)
    with pytest.raises(ValueError, match="dtype float64"):
        wl.stencil_2d(np.zeros((10, 10), np.float32), 1)
    with pytest.raises(ValueError, match="inside the border"):
        wl.stencil_2d(g, 1, (0, 5, 1, 5))
    with pytest.raises(ValueError, match="overrun"):
        wl.strided(np.zeros(100, np.uint8), 10, 11)
    with pytest.raises(ValueError, match=r"\[0, "):
        wl.random_pages(np.zeros(4096, np.uint8), [1])
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        wl.particles(np.zeros(10), np.zeros(10), [10], 0.1)
    with pytest.raises(ValueError, match="one shape"):
        wl.particles(np.zeros(10), np.zeros(11), [1], 0.1)


def test_threads_share_one_build():
    errs: list[BaseException] = []

    def run():
        try:
            g = np.random.default_rng(5).random((50, 50))
            wl.stencil_2d(g, 2)
        except BaseException as e:  # pragma: no cover
            errs.append(e)
    ts = [threading.Thread(target=run) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs
    assert wl.compile_count <= 1


def _info_in_subprocess(env) -> str:
    code = "import memckpt.workloads as w; i = w.build_info(); print(i['compiled'], i['path'])"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_compiled_module_is_cached(tmp_path):
    env = dict(os.environ, MEMCKPT_CACHE=str(tmp_path))
    compiled, path = _info_in_subprocess(env)
    assert compiled == "True" and path.startswith(str(tmp_path))
    mtime = os.stat(path).st_mtime_ns
    compiled2, path2 = _info_in_subprocess(env)
    assert (compiled2, path2) == ("False", path)
    assert os.stat(path).st_mtime_ns == mtime


def test_import_without_cffi_names_the_extra():
    code = ("import sys; sys.modules['cffi'] = None\n"
            "import memckpt\n"
            "try:\n    import memckpt.workloads\nexcept ImportError as e:\n    print(e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "pip install 'memckpt[bench]'" in p.stdout


def test_no_compiler_is_a_clear_error(tmp_path):
    code = ("import memckpt.workloads as w\n"
            "try:\n    w.load()\nexcept w.WorkloadBuildError as e:\n    print(e)\n")
    env = dict(os.environ, MEMCKPT_CACHE=str(tmp_path), PATH=str(tmp_path), CC="no-such-cc")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "no C compiler found" in p.stdout
