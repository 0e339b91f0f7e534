"""The C core and the binding under AddressSanitizer + UndefinedBehaviorSanitizer.

Two builds, both into temporary directories (the installed memckpt is not
touched):

1. CMake with ``-DMEMCKPT_SANITIZE=ON -DMEMCKPT_C_TESTS=ON``: every C test
   binary (one per backend, and each ``csrc/tests/test_*.c``) runs with leak
   detection on and UBSan halting on the first error;
2. a wheel of memckpt built with ``MEMCKPT_SANITIZE=ON``, unpacked, and the
   core-relevant part of the Python suite (SANITIZED_TESTS) run against it in
   a subprocess: ``LD_PRELOAD`` of libasan (the interpreter is not built with
   it, so the runtime must come first), ``detect_leaks=0`` (CPython's own
   allocations are not leaks), UBSan ``halt_on_error=1``.

Any sanitizer report fails the test, even from a run that exited 0 (ASan
aborts on the first error, but a report on a worker thread or at exit could
still be missed by the exit status alone). Takes about 2-3 minutes here.

By hand::

    cmake -S . -B /tmp/san -G Ninja -DMEMCKPT_SANITIZE=ON -DMEMCKPT_C_TESTS=ON \\
          -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build /tmp/san
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 /tmp/san/test_uffd_async
    pytest tests/test_sanitize.py -v      # both builds, and the Python subset
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from memckpt import _core

ROOT = Path(__file__).resolve().parent.parent
#: the C table's backends: CMake builds a test binary for each (test_c_core.py)
BACKENDS = list(_core.backend_names())
C_TESTS = ([f"test_{b.replace('-', '_')}" for b in BACKENDS]
           + sorted(p.stem for p in (ROOT / "csrc" / "tests").glob("test_*.c")))
#: the tests that exercise the C core through the binding
SANITIZED_TESTS = ["tests/test_tracker.py", "tests/test_arena.py", "tests/test_store.py",
                   "tests/test_checkpointer.py", "tests/test_interval.py",
                   "tests/test_capture_modes.py", "tests/test_fork_mode.py",
                   "tests/test_bg_mode.py", "tests/test_hash.py",
                   "tests/test_sparse_arena.py", "tests/test_restore_eager.py"]

# what a sanitizer prints when it finds something
REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|"
                    r"SUMMARY: (Address|Undefined|Leak)Sanitizer|UndefinedBehaviorSanitizer")
UBSAN_OPTIONS = "halt_on_error=1:print_stacktrace=1"


def _compiler_runtime(lib: str) -> str | None:
    """The path of libasan.so as the compiler links it, or None."""
    cc = os.environ.get("CC", "cc")
    if not shutil.which(cc):
        return None
    p = subprocess.run([cc, f"-print-file-name={lib}"], capture_output=True, text=True)
    path = p.stdout.strip()
    return os.path.realpath(path) if p.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def _need_toolchain() -> str:
    if shutil.which("cmake") is None:
        pytest.fail("cmake is not installed: `pip install '.[test]'` brings it")
    asan = _compiler_runtime("libasan.so")
    if asan is None:
        why = "the C compiler has no libasan.so (gcc: apt-get install libasan8 / libgcc-12-dev)"
        if os.environ.get("CI"):
            pytest.fail(why + " (CI is set, so this fails instead of skipping)")
        pytest.skip(why)
    return asan


def _check_clean(out: str, what: str) -> None:
    m = REPORT.search(out)
    if m:
        start = max(0, m.start() - 2000)
        pytest.fail(f"{what}: sanitizer report:\n{out[start:start + 8000]}", pytrace=False)


# ------------------------------------------------------------ the C tests

@pytest.fixture(scope="module")
def san_c_build(tmp_path_factory) -> Path:
    _need_toolchain()
    build = tmp_path_factory.mktemp("san-c")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), *gen,
                          "-DMEMCKPT_C_TESTS=ON", "-DMEMCKPT_SANITIZE=ON",
                          "-DCMAKE_BUILD_TYPE=RelWithDebInfo"], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    b = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True)
    assert b.returncode == 0, b.stdout + b.stderr
    return build


@pytest.mark.parametrize("name", C_TESTS)
def test_c_binary_under_sanitizers(san_c_build, name):
    path = san_c_build / name
    assert path.exists(), f"{name} was not built"
    env = dict(os.environ, UBSAN_OPTIONS=UBSAN_OPTIONS,
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:"
                            "detect_stack_use_after_return=1:strict_string_checks=1")
    p = subprocess.run([str(path)], capture_output=True, text=True, timeout=300, env=env)
    out = p.stdout + p.stderr
    _check_clean(out, name)
    if p.returncode == 77:
        pytest.skip(next((line for line in out.splitlines() if line.startswith("SKIP")),
                         out.strip()[-300:]))
    assert p.returncode == 0, f"{name} exited {p.returncode}:\n{out[-4000:]}"


# -------------------------------------------------------- the binding

@pytest.fixture(scope="module")
def san_package(tmp_path_factory) -> Path:
    """memckpt built with MEMCKPT_SANITIZE=ON, unpacked into a directory for sys.path."""
    _need_toolchain()
    tmp = tmp_path_factory.mktemp("san-py")
    # build with this environment's tools when it has them (no index needed),
    # else let pip fetch pyproject's build requirements
    have = all(_importable(m) for m in ("scikit_build_core", "Cython", "cython_cmake"))
    isolation = ["--no-build-isolation"] if have else []
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
           "-w", str(tmp / "dist"), str(ROOT),
           f"-Cbuild-dir={tmp / 'build'}", "-Ccmake.build-type=RelWithDebInfo",
           "-Ccmake.define.MEMCKPT_SANITIZE=ON"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"building the sanitized wheel failed:\n{p.stdout}\n{p.stderr}"
    wheels = list((tmp / "dist").glob("memckpt-*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp / "site"
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(site)
    core = list((site / "memckpt").glob("_core*.so"))
    assert core, "the wheel has no memckpt/_core*.so"
    assert list((site / "memckpt").glob("_reader*.so")), "the wheel has no memckpt/_reader*.so"
    # the extension really is instrumented (else the run below proves nothing)
    syms = subprocess.run(["nm", "-D", str(core[0])], capture_output=True, text=True).stdout
    assert "__asan_init" in syms and "__ubsan_handle" in syms, \
        "the sanitized build's _core has no ASan/UBSan symbols"
    return site


def _importable(mod: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(mod) is not None


# Run pytest against the unpacked package: drop a scikit-build-core editable
# finder (it would redirect `import memckpt` to the source tree and the
# uninstrumented build), then make sure the import really is the sanitized one.
BOOT = r"""
import sys
site = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__name__.startswith("ScikitBuild")]
sys.path.insert(0, site)
import memckpt, memckpt._core
assert memckpt._core.__file__.startswith(site), memckpt._core.__file__
print("sanitized memckpt from", memckpt._core.__file__, flush=True)
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""


def test_python_suite_under_sanitizers(san_package, tmp_path):
    asan = _need_toolchain()
    env = dict(os.environ,
               LD_PRELOAD=asan,
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:"
                            "verify_asan_link_order=0:allocator_may_return_null=1",
               UBSAN_OPTIONS=UBSAN_OPTIONS,
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, "-c", BOOT, str(san_package), "-q", "-x", "-p", "no:cacheprovider",
           "-p", "no:randomly", "--rootdir", str(ROOT), "-o", f"cache_dir={tmp_path}",
           *[str(ROOT / t) for t in SANITIZED_TESTS]]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env, cwd=tmp_path)
    out = p.stdout + p.stderr
    sys.stdout.write(out[-3000:])
    _check_clean(out, "the Python suite")
    assert "sanitized memckpt from" in out, out[-3000:]
    assert p.returncode == 0, f"pytest under ASan+UBSan exited {p.returncode}:\n{out[-6000:]}"
    assert re.search(r"\d+ passed", out), out[-2000:]
