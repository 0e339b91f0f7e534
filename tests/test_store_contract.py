"""The store's structure (issue 11): one contract, one open_store, and one
module per concern. Behaviour is the rest of the store suite's to check."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import memckpt
from memckpt.restore import open_store as restore_open_store
from memckpt.store import EpochWriter, Store, contract, local

from _s3_util import any_store, s3_server  # noqa: F401  (fixtures: local and S3 backends)
from _store_util import PS, random_pages

STORE_SRC = Path(contract.__file__).parent


class _NotACli(Exception):
    pass


def test_open_store_path_store_and_refusal(tmp_path):
    st, owned = contract.open_store(tmp_path / "s", create=True)
    assert isinstance(st, Store) and owned
    same, owned = contract.open_store(st, create=False)
    assert same is st and not owned
    with pytest.raises(TypeError, match="store must be a path or a memckpt.Store, not int"):
        contract.open_store(3, create=False)
    # one open_store: the checkpointer and restore use the contract's
    assert restore_open_store is contract.open_store


def test_open_store_names_what_is_at_the_path(tmp_path):
    """The CLI's messages, from the one open_store, in the caller's exception."""
    missing = tmp_path / "nothing"
    with pytest.raises(_NotACli, match=f"no store at {missing}: no such file or directory"):
        contract.open_store(str(missing), create=False, missing=_NotACli)
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(_NotACli, match="is not a store: a store is a directory, and this is a file"):
        contract.open_store(str(f), create=False, missing=_NotACli)
    # without `missing`: what Store() raises, as restore() always did
    with pytest.raises(FileNotFoundError):
        contract.open_store(missing, create=False)


def test_store_and_writer_keep_the_contract(tmp_path):
    st = Store(tmp_path / "s", create=True, page_size=PS)
    assert isinstance(st, contract.StoreContract)
    with st.begin("full", npages=1) as w:
        assert isinstance(w, contract.EpochWriterContract)
    assert memckpt.Store is Store is local.Store
    assert EpochWriter is local.EpochWriter


def test_compaction_uses_the_writers_public_interface():
    """maintenance.py calls no private method of EpochWriter (issue 11)."""
    tree = ast.parse((STORE_SRC / "maintenance.py").read_text())
    private = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                      and isinstance(n.value, ast.Name) and n.value.id == "w"
                      and n.attr.startswith("_")})
    assert private == [], private


@pytest.mark.parametrize("path", sorted(p.name for p in STORE_SRC.glob("*.py")))
def test_one_concern_per_module(path):
    """No store module over ~400 lines and no class over ~300 (local.py was
    2,300 lines with two classes of 1,200 and 580; format.py 560)."""
    text = (STORE_SRC / path).read_text()
    assert text.count("\n") <= 420, f"{path}: {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            assert size <= 320, f"{path}: class {node.name} is {size} lines"


def test_add_pages_from_keeps_the_contract(any_store):
    """add_pages_from is part of the writer's contract: pages straight from
    an arena's rows, mixed with add_pages under one rule of increasing page
    numbers, read back as written (zero and repeated pages among them)."""
    assert "add_pages_from" in dir(contract.EpochWriterContract)
    rng = np.random.default_rng(8)
    state = random_pages(rng, 40)
    state[::5] = 0
    state[3] = state[7]
    pages = np.array([1, 3, 4, 5, 7, 9, 20, 30], dtype=np.uint64)
    st: contract.StoreContract = any_store  # a local store, and an S3 store (moto)
    assert isinstance(st, contract.StoreContract)
    for compress in (None, "zstd"):
        w: contract.EpochWriterContract = st.begin("full", npages=40, compress=compress)
        w.add_pages_from(state, pages[:5])
        w.add_pages(pages[5:], state[pages[5:]])
        w.commit(pages_dirty=len(pages), pause_s=0.0)
        out = np.full((40, PS), 0xA5, np.uint8)
        st.read_into(w.epoch, out)
        want = np.zeros_like(state)
        want[pages] = state[pages]
        assert np.array_equal(out, want), compress
