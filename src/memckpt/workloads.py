"""Native workloads: small C kernels that write into numpy arrays (normally the
arrays of an :class:`~memckpt.Arena`) at native speed, so that what a benchmark
measures is the tracking, not the interpreter.

The kernels are compiled once, at first use, with cffi in API mode, into a
cache directory (``$MEMCKPT_CACHE/workloads/<hash>``, or
``~/.cache/memckpt/workloads/<hash>``; the hash covers the C source, the
compiler flags, the Python ABI and the cffi version) and reused by later
processes. Every kernel runs with the GIL released.

Each function takes C-contiguous, writable numpy arrays (``ValueError``
otherwise). Arrays of an arena are the point, but plain numpy arrays work too,
for untracked baselines. Every write changes the bytes it writes, so the
``compare`` backend sees them as writes too.

Needs ``cffi`` (``pip install 'memckpt[bench]'``) and a C compiler.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import mmap
import os
import shutil
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

try:
    import cffi  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "memckpt.workloads needs cffi to compile its C kernels: "
        "pip install 'memckpt[bench]'") from exc

__all__ = ["WorkloadBuildError", "load", "build_info", "cache_dir",
           "random_pages", "strided", "stencil_2d", "particles", "stencil_2d_numpy",
           "particles_numpy"]


class WorkloadBuildError(RuntimeError):
    """The C kernels could not be compiled (no C compiler, or it failed)."""


_CDEF = """
void wl_random_pages(char *base, const uint64_t *idx, size_t n, size_t page_size);
void wl_strided(unsigned char *base, size_t stride, size_t count);
int wl_stencil_2d(double *g, size_t ncols, size_t r0, size_t r1, size_t c0, size_t c1,
                  size_t iters, double alpha);
void wl_particles(double *pos, double *vel, size_t dim, const int64_t *idx, size_t n, double dt);
"""

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Add 1 to the 8-byte word at the start of each page idx[k] (memcpy: any alignment). */
void wl_random_pages(char *base, const uint64_t *idx, size_t n, size_t page_size)
{
    for (size_t k = 0; k < n; k++) {
        char *p = base + idx[k] * page_size;
        uint64_t w;
        memcpy(&w, p, sizeof(w));
        w += 1;
        memcpy(p, &w, sizeof(w));
    }
}

/* Add 1 to the byte at k * stride for k < count. */
void wl_strided(unsigned char *base, size_t stride, size_t count)
{
    for (size_t k = 0; k < count; k++)
        base[k * stride] += 1;
}

/* Jacobi sweeps of the 5-point heat stencil over rows [r0, r1) and columns
 * [c0, c1) of a row-major grid with ncols columns; the window lies inside the
 * grid's border. New values go to a private buffer, then back into the grid,
 * so only the window's cells of the grid are written. The operation order is
 * that of stencil_2d_numpy (built with -ffp-contract=off: no FMA), so the
 * results are bit-identical. */
int wl_stencil_2d(double *g, size_t ncols, size_t r0, size_t r1, size_t c0, size_t c1,
                  size_t iters, double alpha)
{
    size_t h = r1 - r0, w = c1 - c0;
    if (h == 0 || w == 0 || iters == 0)
        return 0;
    double *tmp = malloc(h * w * sizeof(double));
    if (!tmp)
        return -1;
    for (size_t it = 0; it < iters; it++) {
        for (size_t i = r0; i < r1; i++) {
            const double *row = g + i * ncols, *up = row - ncols, *dn = row + ncols;
            double *t = tmp + (i - r0) * w - c0;
            for (size_t j = c0; j < c1; j++) {
                double c = row[j];
                t[j] = c + alpha * ((((up[j] + dn[j]) + row[j - 1]) + row[j + 1]) - 4.0 * c);
            }
        }
        for (size_t i = r0; i < r1; i++)
            memcpy(g + i * ncols + c0, tmp + (i - r0) * w, w * sizeof(double));
    }
    free(tmp);
    return 0;
}

/* One symplectic-Euler step of a harmonic oscillator for the particles in idx:
 * pos += dt * vel; vel -= dt * pos (the new pos). A repeated index is stepped
 * once per occurrence. */
void wl_particles(double *pos, double *vel, size_t dim, const int64_t *idx, size_t n, double dt)
{
    for (size_t k = 0; k < n; k++) {
        double *p = pos + (size_t)idx[k] * dim, *v = vel + (size_t)idx[k] * dim;
        for (size_t d = 0; d < dim; d++) {
            double np_ = p[d] + dt * v[d];
            p[d] = np_;
            v[d] = v[d] - dt * np_;
        }
    }
}
"""

_CFLAGS = ["-O2", "-ffp-contract=off", "-fno-fast-math", "-std=c99"]

_lock = threading.Lock()
_lib: Any = None
_ffi: Any = None
_info: dict[str, Any] = {}
compile_count = 0  # compilations done by this process (0 when the cache served)


def _hash() -> str:
    h = hashlib.sha256()
    for part in (_CDEF, _SOURCE, " ".join(_CFLAGS), sys.implementation.cache_tag or "",
                 sysconfig.get_config_var("EXT_SUFFIX") or "", cffi.__version__):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where the compiled kernels of this source live (may not exist yet)."""
    base = os.environ.get("MEMCKPT_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "memckpt"
    return root / "workloads" / _hash()


def _compiler() -> str | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    exe = cc.split()[0]
    for cand in (exe, "cc", "gcc", "clang"):
        if shutil.which(cand):
            return cand
    return None


def _build(modname: str, dest: Path) -> None:
    if _compiler() is None:
        raise WorkloadBuildError(
            "memckpt.workloads: no C compiler found (looked for $CC, cc, gcc, clang); "
            "install one (e.g. apt-get install gcc) or set CC")
    dest.parent.mkdir(parents=True, exist_ok=True)
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    ffi.set_source(modname, _SOURCE, extra_compile_args=_CFLAGS)
    tmp = tempfile.mkdtemp(prefix=".build-", dir=dest.parent)
    try:
        try:
            so = ffi.compile(tmpdir=tmp, verbose=False)
        except Exception as exc:  # cffi.VerificationError, CompileError, missing setuptools...
            raise WorkloadBuildError(f"memckpt.workloads: compiling the C kernels failed: {exc}") from exc
        os.replace(so, dest)  # atomic: a concurrent process sees the old file or the whole new one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load() -> Any:
    """The compiled kernels' ``lib``: from the cache, or compiled into it once
    per process (thread-safe). Raises ``WorkloadBuildError``."""
    global _lib, _ffi, compile_count
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        modname = f"_memckpt_workloads_{_hash()}"
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        path = cache_dir() / (modname + suffix)
        compiled = False
        if not path.exists():
            _build(modname, path)
            compile_count += 1
            compiled = True
        spec = importlib.util.spec_from_file_location(modname, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _info.update(path=str(path), compiled=compiled)
        _ffi = mod.ffi
        _lib = mod.lib
        return _lib



def build_info() -> dict[str, Any]:
    """``{"path": the shared object, "compiled": whether this process compiled
    it, "compile_count": ...}`` (loads the kernels first)."""
    load()
    return dict(_info, compile_count=compile_count)


# -- argument checks ----------------------------------------------------------

def _check(arr: Any, name: str, dtype: Any = None, ndim: int | None = None) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name} must be a numpy array (of an arena), not {type(arr).__name__}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (an arena array, not a strided view)")
    if not arr.flags.writeable:
        raise ValueError(f"{name} must be writable")
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, not {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, not {arr.ndim}")
    return arr


def _ptr(ctype: str, arr: np.ndarray) -> Any:
    return _ffi.cast(ctype, arr.ctypes.data)


# -- workloads ----------------------------------------------------------------

def random_pages(arr: np.ndarray, indices: Any = None, *, npages: int | None = None,
                 seed: int = 0, page_size: int = mmap.PAGESIZE) -> np.ndarray:
    """Add 1 to the 8-byte word at the start of each of a set of pages of
    ``arr``'s bytes (page ``i`` = bytes ``[i*page_size, (i+1)*page_size)`` from
    ``arr``'s first byte; an arena array starts on a page boundary, so its page
    ``i`` is arena page ``arena.page_range(name)[0] + i``).

    The pages are ``indices`` (any integer array-like; a repeat is written
    again), or ``npages`` distinct pages drawn with ``numpy.random.default_rng(seed)``.
    Returns the indices written, as sorted-or-given ``uint64``.
    """
    _check(arr, "arr")
    nblocks = (arr.nbytes - 8) // page_size + 1 if arr.nbytes >= 8 else 0
    if (indices is None) == (npages is None):
        raise ValueError("give exactly one of indices and npages")
    if indices is None:
        assert npages is not None
        if not 0 <= npages <= nblocks:
            raise ValueError(f"npages={npages} out of range: arr has {nblocks} pages")
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(nblocks, size=npages, replace=False)).astype(np.uint64)
    else:
        raw = np.asarray(indices)
        if raw.size and not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(f"indices must be integers, not {raw.dtype}")
        if raw.size and (raw.min() < 0 or raw.max() >= nblocks):
            raise ValueError(f"indices must lie in [0, {nblocks}): arr has {nblocks} pages")
        idx = np.ascontiguousarray(raw.reshape(-1), dtype=np.uint64)
    lib = load()
    lib.wl_random_pages(_ptr("char *", arr), _ptr("uint64_t *", idx), idx.size, page_size)
    return idx


def strided(arr: np.ndarray, stride_bytes: int, count: int) -> None:
    """Add 1 to the byte at offset ``k * stride_bytes`` of ``arr`` for ``k < count``."""
    _check(arr, "arr")
    if stride_bytes <= 0 or count < 0:
        raise ValueError("stride_bytes must be positive and count non-negative")
    if count and (count - 1) * stride_bytes >= arr.nbytes:
        raise ValueError(f"{count} writes {stride_bytes} bytes apart overrun arr's {arr.nbytes} bytes")
    load().wl_strided(_ptr("unsigned char *", arr), stride_bytes, count)


def _window(grid: np.ndarray, window: Any) -> tuple[int, int, int, int]:
    h, w = grid.shape
    r0, r1, c0, c1 = (1, h - 1, 1, w - 1) if window is None else (int(x) for x in window)
    if not (1 <= r0 <= r1 <= h - 1 and 1 <= c0 <= c1 <= w - 1):
        raise ValueError(f"window (r0, r1, c0, c1)={(r0, r1, c0, c1)} must lie inside the "
                         f"border of the {h}x{w} grid: 1 <= r0 <= r1 <= {h - 1}, 1 <= c0 <= c1 <= {w - 1}")
    return r0, r1, c0, c1


def stencil_2d(grid: np.ndarray, iterations: int, window: Any = None, alpha: float = 0.1) -> None:
    """``iterations`` Jacobi sweeps, in place, of the 5-point heat stencil
    ``u + alpha*((((n + s) + w) + e) - 4*u)`` over the cells of ``window =
    (r0, r1, c0, c1)`` (rows ``r0:r1``, columns ``c0:c1``; default: all but the
    border). Writes exactly the window's cells of ``grid`` (a private buffer
    holds each sweep). Bit-identical to :func:`stencil_2d_numpy`."""
    _check(grid, "grid", np.float64, 2)
    r0, r1, c0, c1 = _window(grid, window)
    if iterations < 0:
        raise ValueError("iterations must be non-negative")
    rc = load().wl_stencil_2d(_ptr("double *", grid), grid.shape[1], r0, r1, c0, c1,
                              iterations, float(alpha))
    if rc != 0:
        raise MemoryError("stencil_2d: no memory for the sweep buffer")


def stencil_2d_numpy(grid: np.ndarray, iterations: int, window: Any = None, alpha: float = 0.1) -> None:
    """The numpy reference of :func:`stencil_2d` (same operations, same order)."""
    r0, r1, c0, c1 = _window(grid, window)
    for _ in range(iterations):
        c = grid[r0:r1, c0:c1]
        new = c + alpha * ((((grid[r0 - 1:r1 - 1, c0:c1] + grid[r0 + 1:r1 + 1, c0:c1])
                             + grid[r0:r1, c0 - 1:c1 - 1]) + grid[r0:r1, c0 + 1:c1 + 1]) - 4.0 * c)
        grid[r0:r1, c0:c1] = new


def _particle_args(pos: np.ndarray, vel: np.ndarray, idx: Any) -> np.ndarray:
    _check(pos, "pos", np.float64)
    _check(vel, "vel", np.float64)
    if pos.shape != vel.shape or pos.ndim not in (1, 2):
        raise ValueError(f"pos and vel must have one shape, (N,) or (N, dim): {pos.shape} vs {vel.shape}")
    ix = np.ascontiguousarray(np.asarray(idx).reshape(-1), dtype=np.int64)
    if ix.size and (ix.min() < 0 or ix.max() >= pos.shape[0]):
        raise ValueError(f"idx must lie in [0, {pos.shape[0]})")
    return ix


def particles(pos: np.ndarray, vel: np.ndarray, idx: Any, dt: float) -> None:
    """One symplectic-Euler step (``pos += dt*vel; vel -= dt*pos``) of only the
    particles ``idx`` (rows of ``pos``/``vel``, float64 of shape (N,) or (N, dim)).
    A repeated index is stepped once per occurrence."""
    ix = _particle_args(pos, vel, idx)
    dim = 1 if pos.ndim == 1 else pos.shape[1]
    load().wl_particles(_ptr("double *", pos), _ptr("double *", vel), dim,
                        _ptr("int64_t *", ix), ix.size, float(dt))


def particles_numpy(pos: np.ndarray, vel: np.ndarray, idx: Any, dt: float) -> None:
    """The numpy reference of :func:`particles` (for distinct indices)."""
    ix = _particle_args(pos, vel, idx)
    p = pos[ix] + dt * vel[ix]
    v = vel[ix] - dt * p
    pos[ix] = p
    vel[ix] = v
