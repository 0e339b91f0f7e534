"""memckpt's C library as a product (issue 14): what `pip install` puts inside
the package (libmemckpt.so, memckpt.h, memckpt.pc, the CMake package) is
found by a fresh CMake project and by pkg-config, and a program built that way
runs: a region, a tracker, pages written and collected (tests/data/c_consumer).

The package under test is the one installed in this environment. An editable
install (`pip install -e`) installs the same files into site-packages beside
the compiled module (scikit-build-core runs the same `cmake --install` into
the editable wheel), and memckpt.config finds them along the package's
__path__; test_installed_header_is_the_source_header catches an install older
than the source. `cmake --install` from a plain CMake build is checked too."""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import blake3
import pytest

import memckpt
from memckpt import config

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "csrc" / "include" / "memckpt.h"
CONSUMER = Path(__file__).resolve().parent / "data" / "c_consumer"
SCRIPTS = Path(sysconfig.get_path("scripts"))


def which(name: str) -> str | None:
    """name from this environment's scripts (what the test extra installs:
    cmake, ninja, pkgconf), else from PATH."""
    here = SCRIPTS / name
    return str(here) if here.is_file() and os.access(here, os.X_OK) else shutil.which(name)


def need(name: str, brings: str) -> str:
    path = which(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({brings})")
    return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def memckpt_config(*args: str) -> str:
    script = SCRIPTS / "memckpt-config"
    assert script.is_file(), f"the console script memckpt-config is not installed in {SCRIPTS}"
    return run([str(script), *args]).stdout.strip()


def header_api(text: str) -> set[str]:
    """The functions memckpt.h declares for export (MCK_API)."""
    return set(re.findall(r"^MCK_API\b[^(]*?\b(mck_\w+)\(", text, re.M))


def header_version(text: str) -> str:
    parts = {k: v for k, v in re.findall(r"^#define MCK_VERSION_([A-Z]+) (\d+)$", text, re.M)}
    return f"{parts['MAJOR']}.{parts['MINOR']}.{parts['PATCH']}"


def page0_digest() -> str:
    """What consumer.c's page 0 holds (byte 100 = 1, the rest zero), hashed by
    the blake3 package: a digest computed outside memckpt."""
    page = bytearray(os.sysconf("SC_PAGE_SIZE"))
    page[100] = 1
    return blake3.blake3(bytes(page)).hexdigest()


def check_runs(binary: Path, env: dict | None = None) -> None:
    """consumer on every backend: the pages written are collected, page 0's
    digest is right; an unavailable backend says so (exit 77)."""
    for t in memckpt.trackers():
        p = subprocess.run([str(binary), t.name], capture_output=True, text=True, timeout=120,
                           env=env)
        out = p.stdout + p.stderr
        if not t.available:
            assert p.returncode == 77 and "unavailable" in out, out
            continue
        assert p.returncode == 0, f"{binary.name} {t.name} exited {p.returncode}:\n{out}"
        assert re.search(rf"^{t.name}: \d+ pages collected, 6 written: ok$", p.stdout, re.M), out
        assert f"page 0 blake3 {page0_digest()}" in p.stdout, out


def cmake_consumer(tmp: Path, prefix_path: str) -> Path:
    """Configure and build tests/data/c_consumer in tmp (a fresh copy) with
    CMAKE_PREFIX_PATH=prefix_path; the built program's path."""
    cmake = need("cmake", "`pip install '.[test]'` brings it")
    src = tmp / "src"
    shutil.copytree(CONSUMER, src)
    gen = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={which('ninja')}"] if which("ninja") else []
    run([cmake, "-S", str(src), "-B", str(tmp / "build"), *gen,
         f"-DCMAKE_PREFIX_PATH={prefix_path}"])
    run([cmake, "--build", str(tmp / "build")])
    return tmp / "build" / "consumer"


# ---------------------------------------------------------------- what is installed

def test_installed_header_is_the_source_header():
    installed = Path(memckpt.get_include()) / "memckpt.h"
    assert installed.is_file(), installed
    assert installed.read_text() == HEADER.read_text(), (
        f"{installed} differs from {HEADER}: the installed package is older than the "
        "source; reinstall it (pip install -e . --no-build-isolation)")


def test_versions_agree():
    # one version for the header (CMake reads it), the wheel, the .pc and the CMake package
    want = header_version(HEADER.read_text())
    assert memckpt.__version__ == want
    assert importlib.metadata.version("memckpt") == want
    assert memckpt_config("--version") == want
    pc = (Path(memckpt.get_pkgconfig_dir()) / "memckpt.pc").read_text()
    assert re.search(rf"^Version: {re.escape(want)}$", pc, re.M), pc
    cfg = (Path(memckpt.get_cmake_dir()) / "memckptConfigVersion.cmake").read_text()
    assert f'set(PACKAGE_VERSION "{want}")' in cfg


def test_library_has_its_soname_and_a_link_name():
    major, minor, _ = header_version(HEADER.read_text()).split(".")
    lib = Path(memckpt.get_library_dir())
    real = lib / f"libmemckpt.so.{major}.{minor}"
    assert real.is_file() and real.read_bytes()[:4] == b"\x7fELF", sorted(lib.iterdir())
    readelf = need("readelf", "binutils brings it, with the C compiler")
    dyn = run([readelf, "-d", str(real)]).stdout
    assert f"Library soname: [libmemckpt.so.{major}.{minor}]" in dyn, dyn
    # what -lmemckpt finds: a symlink (cmake --install) or, in a wheel, which
    # holds no symlink, a linker script naming the real file
    link = lib / "libmemckpt.so"
    assert link.exists(), sorted(lib.iterdir())
    if not link.is_symlink():
        assert f"INPUT({real.name})" in link.read_text()


def test_library_exports_exactly_the_header_api():
    nm = need("nm", "binutils brings it, with the C compiler")
    major, minor, _ = header_version(HEADER.read_text()).split(".")
    real = Path(memckpt.get_library_dir()) / f"libmemckpt.so.{major}.{minor}"
    out = run([nm, "-D", "--defined-only", str(real)]).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    api = header_api(HEADER.read_text())
    assert len(api) > 30 and "mck_strerror" in api, api
    assert exported == api, (f"exported, not in the header: {sorted(exported - api)}; "
                             f"in the header, not exported: {sorted(api - exported)}")


# --------------------------------------------------------- the helpers and the command

def test_python_helpers_point_at_the_files():
    assert (Path(memckpt.get_include()) / "memckpt.h").is_file()
    assert (Path(memckpt.get_cmake_dir()) / "memckptConfig.cmake").is_file()
    assert (Path(memckpt.get_pkgconfig_dir()) / "memckpt.pc").is_file()
    assert Path(memckpt.get_library_dir()) == Path(memckpt.get_pkgconfig_dir()).parent
    assert memckpt_config("--includedir") == memckpt.get_include()
    assert memckpt_config("--libdir") == memckpt.get_library_dir()
    assert memckpt_config("--cmake-dir", "--pkgconfig-dir") == \
        f"{memckpt.get_cmake_dir()} {memckpt.get_pkgconfig_dir()}"
    lib = memckpt.get_library_dir()
    assert memckpt_config("--libs", "--cflags").split() == \
        [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lmemckpt", f"-I{memckpt.get_include()}"]


def test_memckpt_config_teaches_and_refuses(capsys):
    assert config.main(["--cflags"]) == 0
    with pytest.raises(SystemExit) as e:
        config.main([])
    assert e.value.code == 2
    assert "say what to print: --cflags" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        config.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "find_package(memckpt CONFIG REQUIRED)" in text and "PKG_CONFIG_PATH" in text


def test_a_package_without_the_library_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(memckpt, "__path__", [str(tmp_path)])
    with pytest.raises(memckpt.LibraryNotInstalled, match=re.escape(str(tmp_path))):
        memckpt.get_include()
    assert config.main(["--libs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("memckpt-config: memckpt's C library is not installed") and "pip" in err


# ------------------------------------------------------------- building against it

def test_a_fresh_cmake_project_finds_the_package(tmp_path):
    binary = cmake_consumer(tmp_path, memckpt_config("--cmake-dir"))
    check_runs(binary)   # no LD_LIBRARY_PATH: CMake's build rpath finds the library
    needed = run([need("readelf", "binutils"), "-d", str(binary)]).stdout
    assert "Shared library: [libmemckpt.so." in needed, needed


def _pkg_configs() -> list[str]:
    """Every distinct pkg-config here: this environment's (pkgconf from PyPI,
    the test extra) and the system's."""
    found = [p for p in (which("pkg-config"), shutil.which("pkg-config")) if p]
    return list(dict.fromkeys(os.path.realpath(p) for p in found)) or ["(none)"]


@pytest.mark.parametrize("pkg_config", _pkg_configs())
def test_pkg_config_builds_a_program(tmp_path, pkg_config):
    if pkg_config == "(none)":
        pytest.skip("pkg-config is not installed (`pip install '.[test]'` brings pkgconf)")
    cc = need("cc", "a C compiler: apt-get install gcc")
    env = dict(os.environ, PKG_CONFIG_PATH=memckpt_config("--pkgconfig-dir"))
    flags = run([pkg_config, "--cflags", "--libs", "memckpt"], env=env).stdout.split()
    assert f"-I{memckpt.get_include()}" in [os.path.normpath(f) for f in flags], flags
    binary = tmp_path / "consumer"
    run([cc, "-std=c11", "-Wall", "-Werror", str(CONSUMER / "consumer.c"), *flags, "-o",
         str(binary)])
    # the library is in no system path: found with LD_LIBRARY_PATH, not without
    bare = subprocess.run([str(binary), "compare"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"})
    assert bare.returncode != 0 and "libmemckpt.so" in bare.stderr, bare.stderr
    check_runs(binary, env=dict(os.environ, LD_LIBRARY_PATH=memckpt.get_library_dir()))


def test_memckpt_config_flags_build_a_cxx_program(tmp_path):
    # --libs carries an rpath: the program runs as built; and the header is C++'s too
    cxx = need("c++", "a C++ compiler: apt-get install g++")
    src = tmp_path / "consumer.cpp"
    shutil.copy(CONSUMER / "consumer.c", src)
    binary = tmp_path / "consumer"
    run([cxx, "-std=c++17", "-Wall", "-Werror", str(src),
         *memckpt_config("--cflags", "--libs").split(), "-o", str(binary)])
    check_runs(binary)


def test_pkgconf_from_pypi_finds_it_with_no_path(tmp_path):
    # the package's pkg_config entry point: pkgconf-pypi needs no PKG_CONFIG_PATH
    tool = SCRIPTS / "pkgconf-pypi"
    if not tool.is_file():
        pytest.skip("pkgconf from PyPI is not installed (`pip install '.[test]'` brings it)")
    env = {k: v for k, v in os.environ.items() if k != "PKG_CONFIG_PATH"}
    flags = run([str(tool), "--cflags", "memckpt"], env=env).stdout.split()
    assert [os.path.normpath(f) for f in flags] == [f"-I{memckpt.get_include()}"], flags


def test_cmake_install_installs_a_usable_library(tmp_path):
    # without the wheel: a plain CMake build of the source tree, `cmake --install`
    # into a prefix, and a fresh project that finds it there
    cmake = need("cmake", "`pip install '.[test]'` brings it")
    gen = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={which('ninja')}"] if which("ninja") else []
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    run([cmake, "-S", str(ROOT), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release"])
    run([cmake, "--build", str(build), "--target", "memckpt", "-j2"])
    run([cmake, "--install", str(build), "--prefix", str(prefix)])
    libdir = next(prefix.glob("lib*/libmemckpt.so")).parent
    assert (libdir / "libmemckpt.so").is_symlink()
    assert (prefix / "include" / "memckpt.h").read_text() == HEADER.read_text()
    pc = libdir / "pkgconfig" / "memckpt.pc"
    assert pc.is_file()
    binary = cmake_consumer(tmp_path / "consumer", str(prefix))
    check_runs(binary)
    # moved elsewhere, the prefix still works: every path in it is relative
    moved = tmp_path / "moved"
    prefix.rename(moved)
    pkg_config = which("pkg-config")
    if pkg_config:
        env = dict(os.environ, PKG_CONFIG_PATH=str(moved / libdir.relative_to(prefix) / "pkgconfig"))
        out = run([pkg_config, "--cflags", "memckpt"], env=env).stdout.split()
        assert [os.path.normpath(f) for f in out] == [f"-I{moved / 'include'}"], out
    binary = cmake_consumer(tmp_path / "consumer-moved", str(moved))
    check_runs(binary)


def _doc_programs() -> list[str]:
    """The complete programs (those with a main) among docs/c-api.md's C blocks."""
    text = (ROOT / "docs" / "c-api.md").read_text()
    return [b for b in re.findall(r"^```c\n(.*?)^```$", text, re.M | re.S) if "int main(" in b]


DOC_PROGRAMS = _doc_programs()


def test_the_doc_has_its_examples():
    assert len(DOC_PROGRAMS) == 2, "docs/c-api.md's examples went missing"


@pytest.mark.parametrize("i", range(len(DOC_PROGRAMS)))
def test_doc_example_builds_and_runs(tmp_path, i):
    # docs/c-api.md's examples, as a reader would build them
    cc = need("cc", "a C compiler: apt-get install gcc")
    src = tmp_path / f"example{i}.c"
    src.write_text(DOC_PROGRAMS[i])
    binary = tmp_path / f"example{i}"
    run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", str(src),
         *memckpt_config("--cflags", "--libs").split(), "-o", str(binary)])
    p = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    if p.returncode == 77:
        pytest.skip(p.stdout.strip())
    assert p.returncode == 0, f"docs/c-api.md example {i} exited {p.returncode}:\n{p.stdout}{p.stderr}"
    sys.stdout.write(p.stdout)
