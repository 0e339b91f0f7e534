"""A store written before the Python core was re-laid along the data path
(issue 11; tests/data/make_old_store.py, run by the code of commit 789d658)
opens, verifies and restores bit for bit with today's code, and its chain
goes on: the format did not change with the layout."""
import shutil
import sys
from pathlib import Path

import numpy as np

import memckpt

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from make_old_store import expected  # noqa: E402


def test_old_store_reads_verifies_and_restores(tmp_path):
    path = tmp_path / "s"
    shutil.copytree(DATA / "store-1.1", path)
    store = memckpt.Store(path)
    assert store.epoch_numbers() == [1, 2, 3, 4]
    assert [e.kind for e in store.epochs()] == ["full"] + ["incremental"] * 3
    store.verify()
    for e in range(1, 5):
        with memckpt.restore(store, e) as arena:
            got = arena.arrays()
            for name, want in expected(e).items():
                assert got[name].dtype == want.dtype and np.array_equal(got[name], want), (e, name)
            del got


def test_old_store_chain_goes_on(tmp_path):
    path = tmp_path / "s"
    shutil.copytree(DATA / "store-1.1", path)
    with memckpt.Checkpointer.resume(path, tracker="compare") as ck:
        arrs = ck.arena.arrays()
        arrs["ids"][0] = 7
        info = ck.checkpoint().result()
        want = {k: v.copy() for k, v in arrs.items()}
        del arrs
        arena = ck.arena
    assert info.kind == "incremental" and info.parent == 4 and info.pages_dirty == 1
    store = memckpt.Store(path)
    store.verify()
    with memckpt.restore(store, info.epoch) as back:
        got = back.arrays()
        assert all(np.array_equal(got[k], v) for k, v in want.items())
        del got
    arena.close()
