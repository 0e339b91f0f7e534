"""Helpers shared by the store tests: build stores with known content, and
forge signed store documents (what a hostile writer could do)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from memckpt.store import Store
from memckpt.store import format as fmt

PS = 4096


def random_pages(rng: np.random.Generator, n: int, ps: int = PS) -> np.ndarray:
    return rng.integers(0, 256, (n, ps), dtype=np.uint8)


def write_epoch(store: Store, state: np.ndarray, pages: Any, *, kind: str = "incremental",
                parent: int | None = None, compress: str | None = None,
                label: str | None = None, calls: int = 1) -> int:
    """Commit `pages` of `state` (all pages for a full epoch) in `calls` add_pages calls."""
    npages = state.shape[0]
    if kind == "full":
        pages = np.arange(npages, dtype=np.uint64)
    pages = np.asarray(sorted(set(int(p) for p in pages)), dtype=np.uint64)
    w = store.begin(kind=kind, parent=parent, layout={"nbytes": state.nbytes, "arrays": []},
                    page_size=state.shape[1], npages=npages, compress=compress)
    for part in np.array_split(np.arange(len(pages)), max(1, calls)):
        if len(part):
            w.add_pages(pages[part], state[pages[part]])
    info = w.commit(pages_dirty=len(pages), pause_s=0.001, label=label, tracker="test", mode="sync")
    return info.epoch


def build_chain(store: Store, npages: int = 48, nepochs: int = 5, seed: int = 0,
                compress: str | None = None) -> dict[int, np.ndarray]:
    """A full epoch then incrementals; each epoch rewrites random pages, zeroes
    some, and copies some pages onto others (dedup). Returns epoch -> content."""
    rng = np.random.default_rng(seed)
    state = random_pages(rng, npages)
    state[rng.choice(npages, npages // 8, replace=False)] = 0   # zero pages
    state[3] = state[5]                                          # a repeated page
    state[npages - 1] = np.tile(np.arange(64, dtype=np.uint8), PS // 64)  # compressible
    expected = {}
    e = write_epoch(store, state, None, kind="full", compress=compress)
    expected[e] = state.copy()
    for _ in range(nepochs - 1):
        k = max(2, npages // 6)
        pages = rng.choice(npages, k, replace=False)
        state[pages[:-2]] = random_pages(rng, k - 2)
        state[pages[-2]] = 0                        # written back to zero
        state[pages[-1]] = state[pages[0]]          # a duplicate within the epoch
        e = write_epoch(store, state, pages, parent=e, compress=compress)
        expected[e] = state.copy()
    return expected


def read(store: Store, epoch: int, pages: Any = None) -> np.ndarray:
    info = store.manifest(epoch)
    out = np.full((info["npages"], store.page_size), 0xA5, dtype=np.uint8)
    store.read_into(epoch, out, pages)
    return out


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def write_signed(path: Path, doc: dict[str, Any]) -> None:
    """Write doc re-signed, as a hostile or future writer would."""
    path.write_bytes(fmt.dump_document(fmt.sign(doc)))


def resign_files(store_path: Path, epoch: int) -> None:
    """Re-sign epoch's manifest after its idx/pack were rewritten on purpose."""
    import blake3
    mpath = store_path / fmt.manifest_name(epoch)
    doc = load_json(mpath)
    for ext in ("idx", "pack"):
        f = doc["files"][ext]
        data = (store_path / f["name"]).read_bytes()
        f["size"] = len(data)
        f["blake3"] = blake3.blake3(data).hexdigest()
    write_signed(mpath, doc)
    relink(store_path)


def relink(store_path: Path) -> None:
    """Re-tie every epoch that records its parent's digest to the parent's
    manifest as it is now (oldest first: each re-signed child changes the
    digest its own children must record), as a forger rewriting a parent
    on purpose would, so that a test reaches the damage it is about."""
    docs = {}
    for mpath in sorted(store_path.glob("e*.json")):
        e = fmt.parse_manifest_name(mpath.name)
        if e is None:
            continue
        doc = load_json(mpath)
        parent = docs.get(doc.get("parent"))
        if "parent_digest" in doc and parent is not None:
            want = fmt.manifest_identity(parent)
            if doc["parent_digest"] != want:
                doc = fmt.sign(dict(doc, parent_digest=want))
                mpath.write_bytes(fmt.dump_document(doc))
        docs[e] = doc
