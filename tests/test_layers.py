"""The package's layers, read from its imports (issue 11): no import cycle
between modules, and the data path points one way: the CLI on top, then
checkpoint/ (the lifecycle), then capture/ (one module per mode), then store/
(the contract, then its parts, then the facade). A capture mode never reaches
back into the checkpointer; a store part never imports the facade
(store/local.py) or anything above the store; nothing below the CLI imports
the CLI."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import memckpt

ROOT = Path(memckpt.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


MODULES = _modules()
# compiled modules (memckpt._core): leaves of the graph, imported by name
EXTENSIONS = {".".join(p.relative_to(ROOT.parent).with_suffix("").parts)
              for p in ROOT.rglob("*.pyx")}


def _resolve(mod: str, is_pkg: bool, level: int, name: str | None) -> str:
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(mod: str, *, top_level_only: bool) -> set[str]:
    """The package's modules ``mod`` imports: ``from pkg import sub`` counts as
    an import of pkg.sub alone when sub is a module (pkg is then already being
    imported), else of pkg."""
    path = MODULES[mod]
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    # `if TYPE_CHECKING:` imports are for annotations only: they never run
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            target = (_resolve(mod, is_pkg, node.level, node.module) if node.level
                      else node.module or "")
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in EXTENSIONS:
                    continue
                if sub in MODULES:
                    out.add(sub)
                elif target in MODULES:
                    out.add(target)
    out.discard(mod)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = {m: _imports(m, top_level_only=True) for m in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_one():
    # the check above must be able to fail
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _all_imports(prefix: str) -> dict[str, set[str]]:
    return {m: _imports(m, top_level_only=False) for m in MODULES
            if m == prefix or m.startswith(prefix + ".")}


def _violations(prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{m} imports {i}" for m, imps in sorted(_all_imports(prefix).items())
            for i in sorted(imps) if any(i == f or i.startswith(f + ".") for f in forbidden)]


@pytest.mark.parametrize("layer, forbidden", [
    ("memckpt.store", ("memckpt.checkpoint", "memckpt.capture", "memckpt.cli", "memckpt.mpi")),
    ("memckpt.capture", ("memckpt.checkpoint", "memckpt.cli", "memckpt.mpi")),
    ("memckpt.checkpoint", ("memckpt.cli", "memckpt.mpi")),
    # coordinated epochs sit above the lifecycle, beside the CLI, and reach
    # the capture modes only through a Checkpointer
    ("memckpt.mpi", ("memckpt.cli", "memckpt.capture")),
])
def test_layers_import_only_downwards(layer, forbidden):
    assert layer in MODULES, f"{layer} is not a package of memckpt any more: update the layers"
    assert _violations(layer, forbidden) == []


def _imports_of(tree: ast.AST, name: str) -> list[int]:
    """Lines of ``tree`` that import the top-level package ``name``."""
    return [n.lineno for n in ast.walk(tree)
            if (isinstance(n, ast.Import) and any(a.name.split(".")[0] == name for a in n.names))
            or (isinstance(n, ast.ImportFrom) and not n.level
                and (n.module or "").split(".")[0] == name)]


def test_no_module_imports_mpi4py():
    """memckpt.mpi works on the caller's communicator: ``import memckpt`` (and
    memckpt.mpi) must never need MPI installed, nor initialise it."""
    bad = [f"{m}:{line}" for m, p in sorted(MODULES.items())
           for line in _imports_of(ast.parse(p.read_text()), "mpi4py")]
    assert "memckpt.mpi.coordinator" in MODULES
    assert bad == []
    assert _imports_of(ast.parse("def f():\n    from mpi4py import MPI\n"), "mpi4py") == [2]


def test_store_parts_never_import_the_facade():
    """The parts (catalog, reader, writer, maintenance, ...) sit below the
    facade (store/local.py); the contract's open_store() and the package's
    __init__ are its entry points, above it."""
    facade = "memckpt.store.local"
    assert facade in MODULES
    # the object-store backend (issue 15) is built on the local store: above the facade
    above = {"memckpt.store.s3", "memckpt.store.s3commit", "memckpt.store.replicate"}
    entries = {facade, "memckpt.store", "memckpt.store.contract"} | above
    parts = [m for m in MODULES if m.startswith("memckpt.store.") and m not in entries]
    bad = [f"{m} imports {f}" for m in parts for f in sorted(above | {facade})
           if f in _imports(m, top_level_only=False)]
    assert parts and bad == []


def test_modules_and_classes_stay_small():
    """One reason to change per file: no module over ~400 lines, no class
    over ~300 (a class that grows past it holds two concerns)."""
    big = []
    for m, p in sorted(MODULES.items()):
        text = p.read_text()
        if text.count("\n") > 420:
            big.append(f"{m}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 320:
                big.append(f"{m}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert big == []


# The binding's sources: _core.pyx, the .pxi it includes, the .pxd it cimports
# (read from the source tree, where they live; the wheel needs none of them).
CYTHON_SRC = Path(__file__).resolve().parents[1] / "src" / "memckpt"
CYTHON_SUFFIXES = (".pyx", ".pxi", ".pxd")


def _cython_too_big(paths) -> list[str]:
    """The same limits for Cython: ~400 lines a file, ~300 a ``cdef class``
    (from its line to the next line at the left margin)."""
    big = []
    for p in paths:
        lines = p.read_text().splitlines()
        if len(lines) > 420:
            big.append(f"{p.name}: {len(lines)} lines")
        starts = [i for i, line in enumerate(lines) if re.match(r"cdef class \w+", line)]
        for i in starts:
            end = next((j for j in range(i + 1, len(lines))
                        if lines[j] and not lines[j][0].isspace()), len(lines))
            while end > i + 1 and not lines[end - 1].strip():
                end -= 1
            if end - i > 320:
                big.append(f"{p.name}: {lines[i].split('(')[0].rstrip(':')}: {end - i} lines")
    return big


def test_cython_sources_stay_small():
    paths = sorted(p for p in CYTHON_SRC.iterdir() if p.suffix in CYTHON_SUFFIXES)
    assert CYTHON_SRC / "_core.pyx" in paths, f"no _core.pyx in {CYTHON_SRC}"
    assert _cython_too_big(paths) == []


def test_the_cython_size_check_can_fail(tmp_path):
    big = tmp_path / "_big.pxi"
    body = "\n".join(f"    x{i} = {i}" for i in range(330))
    big.write_text(f"cdef class Big:\n{body}\n\n\ndef f():\n    pass\n" + "#\n" * 100)
    assert _cython_too_big([big]) == ["_big.pxi: 435 lines", "_big.pxi: cdef class Big: 331 lines"]
    small = tmp_path / "_small.pxi"
    small.write_text("cdef class Small:\n    pass\n")
    assert _cython_too_big([small]) == []
