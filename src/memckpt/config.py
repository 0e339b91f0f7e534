"""Where memckpt's C library is installed, for C and C++ programs that link it.

The wheel installs, inside the package directory (as numpy and pybind11 do),
``libmemckpt.so``, its header ``memckpt.h``, a pkg-config file and a CMake
package (``find_package(memckpt CONFIG)`` gives ``memckpt::memckpt``).
These functions return their directories; the ``memckpt-config`` command
prints them, and compiler flags, for build scripts. docs/c-api.md has the
API and complete examples.

An editable install (``pip install -e``) puts them beside the compiled
module in site-packages, not in the source tree: the package's ``__path__``
holds both, so the directories are looked for along it.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LibraryNotInstalled

if TYPE_CHECKING:
    import argparse

__all__ = ["get_include", "get_library_dir", "get_cmake_dir", "get_pkgconfig_dir", "main"]

_HEADER = Path("include", "memckpt.h")


def _root() -> Path:
    """The directory holding include/ and lib/: the package's own, or in an
    editable install the one in site-packages beside the compiled module."""
    package = sys.modules[__name__.rpartition(".")[0]]
    dirs = [Path(p) for p in package.__path__]
    for d in dirs:
        if (d / _HEADER).is_file():
            return d
    raise LibraryNotInstalled(
        "memckpt's C library is not installed beside the package (no "
        f"{_HEADER} in {', '.join(map(str, dirs))}): install memckpt with pip "
        "(`pip install memckpt`, or `pip install .` in its source tree), which "
        "builds and installs it")


def get_include() -> str:
    """The directory of ``memckpt.h``: ``-I`` this to compile against memckpt."""
    return str(_root() / "include")


def get_library_dir() -> str:
    """The directory of ``libmemckpt.so``: ``-L`` it to link, and ``-Wl,-rpath``
    (or ``LD_LIBRARY_PATH``) it to run, since it is in no system path."""
    return str(_root() / "lib")


def get_cmake_dir() -> str:
    """The directory of ``memckptConfig.cmake``: pass it to CMake as
    ``CMAKE_PREFIX_PATH`` (or ``memckpt_DIR``) for ``find_package(memckpt CONFIG)``."""
    return str(_root() / "lib" / "cmake" / "memckpt")


def get_pkgconfig_dir() -> str:
    """The directory of ``memckpt.pc``: add it to ``PKG_CONFIG_PATH``."""
    return str(_root() / "lib" / "pkgconfig")


def _version() -> str:
    import importlib.metadata  # here, not at `import memckpt`: only the command needs it
    return importlib.metadata.version("memckpt")


def _cflags() -> str:
    return f"-I{shlex.quote(get_include())}"


def _libs() -> str:
    lib = shlex.quote(get_library_dir())
    return f"-L{lib} -Wl,-rpath,{lib} -lmemckpt"


_ANSWERS = {
    "cflags": _cflags,
    "libs": _libs,
    "includedir": get_include,
    "libdir": get_library_dir,
    "cmake_dir": get_cmake_dir,
    "pkgconfig_dir": get_pkgconfig_dir,
    "version": _version,
}

_EPILOG = """\
examples:
  # compile and link a program in one step (-Wl,-rpath lets it find the
  # library at run time: site-packages is in no system library path)
  cc sim.c $(memckpt-config --cflags --libs) -o sim

  # CMake: in CMakeLists.txt
  #   find_package(memckpt CONFIG REQUIRED)
  #   target_link_libraries(sim PRIVATE memckpt::memckpt)
  cmake -S . -B build -DCMAKE_PREFIX_PATH="$(memckpt-config --cmake-dir)"

  # pkg-config (its Libs carry no rpath: add one, or set LD_LIBRARY_PATH)
  export PKG_CONFIG_PATH="$(memckpt-config --pkgconfig-dir)"
  cc sim.c $(pkg-config --cflags --libs memckpt) -Wl,-rpath,"$(memckpt-config --libdir)"

From Python: memckpt.get_include(), get_library_dir(), get_cmake_dir(),
get_pkgconfig_dir(). The C API: docs/c-api.md in memckpt's source."""


def _parser() -> argparse.ArgumentParser:
    import argparse
    p = argparse.ArgumentParser(
        prog="memckpt-config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print what a C or C++ build needs to use memckpt's C library\n"
                    "(libmemckpt.so and memckpt.h, installed inside the Python package).\n"
                    "Several options print their answers on one line, in the order given.",
        epilog=_EPILOG)
    say = p.add_argument_group("what to print")

    def opt(flag: str, key: str, text: str) -> None:
        say.add_argument(flag, dest="what", action="append_const", const=key, help=text)

    opt("--cflags", "cflags", "compiler flags: -I the header's directory")
    opt("--libs", "libs", "linker flags: -L and -rpath the library's directory, -lmemckpt")
    opt("--includedir", "includedir", "the directory of memckpt.h")
    opt("--libdir", "libdir", "the directory of libmemckpt.so")
    opt("--cmake-dir", "cmake_dir",
        "the CMake package's directory, for CMAKE_PREFIX_PATH or memckpt_DIR")
    opt("--pkgconfig-dir", "pkgconfig_dir", "the directory of memckpt.pc, for PKG_CONFIG_PATH")
    opt("--version", "version", "the library's version (the Python package's)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``memckpt-config``: 0 after printing, 1 if the library is not installed,
    2 for a refused command line (argparse)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.what:
        parser.error("say what to print: --cflags, --libs, --includedir, --libdir, "
                     "--cmake-dir, --pkgconfig-dir or --version (--help has examples)")
    try:
        print(" ".join(_ANSWERS[w]() for w in args.what))
    except LibraryNotInstalled as e:
        print(f"memckpt-config: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
