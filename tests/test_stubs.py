"""The .pyi stub of the compiled binding must match what it exports."""
import subprocess
import sys
from pathlib import Path

import pytest

import memckpt


def test_package_ships_stub_and_py_typed():
    pkg = Path(memckpt.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_core.pyi").exists()
    assert (pkg / "_reader.pyi").exists()
    assert (pkg / "_writer.pyi").exists()
    assert (pkg / "_alloc.pyi").exists()
    assert (pkg / "_lazy.pyi").exists()


@pytest.mark.parametrize("module", ["memckpt._core", "memckpt._reader", "memckpt._writer",
                                    "memckpt._alloc", "memckpt._lazy"])
def test_stubtest_core(module):
    pytest.importorskip("mypy")
    p = subprocess.run([sys.executable, "-m", "mypy.stubtest", module,
                        "--allowlist", str(Path(__file__).with_name("stubtest-allowlist.txt"))], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy_package():
    """The package type-checks against its own stubs: a stub that drifts from
    how the Python layer calls the binding fails here, not in a user's CI."""
    pytest.importorskip("mypy")
    # the source tree (its _core.pyi stands for the compiled module), by
    # package name: an installed copy in site-packages would make mypy take
    # site-packages for a source root, or silence it as a library
    src = Path(__file__).resolve().parents[1] / "src"
    p = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", "-p", "memckpt"],
                       capture_output=True, text=True, timeout=600, cwd=src)
    assert p.returncode == 0, p.stdout + p.stderr
