"""Fuzzing the store readers with hypothesis.

A real small store (a raw full epoch, then a zstd and an lz4 incremental
epoch) is copied, one of its files is mutated, and every reader runs on the
copy: open, ls (epochs), info, manifest, layout, chain, read_into (whole and
some pages), changed_pages, verify, and compact (last: it writes).  Every
input must end in a result or a MemckptError (CorruptionError, FormatError,
EpochNotFound, ...): never another exception, a hang or unbounded memory.

The readers run in a worker process (tests/_fuzz_worker.py) that bounds each
call in time (SIGALRM) and the process in address space (RLIMIT_AS, 1 GiB
above what it maps after its imports); a crash kills the worker, which fails
the input too.

Mutations, per file kind:

- manifest / store header, as JSON, re-signed (what a hostile writer can do:
  the digest only catches accidents): a field set to junk (integers at the
  extremes, huge or negative, floats, strings such as "../x" or "/etc/passwd",
  nested lists and objects up to 2,000 deep), a field deleted, a key added;
  or one field set to the same value in every manifest (a consistent chain);
- manifest / header / index / pack, as bytes: bits flipped, bytes set,
  truncated, bytes inserted or deleted; for index and pack files also a
  header or record integer field set to an extreme, and then (mostly) the
  manifest re-signed with the new size and BLAKE3, so the parser behind the
  digest check sees the bytes.

CI runs FUZZ_EXAMPLES examples per test (about a minute in all). The long
run (see docs/reliability.md)::

    MEMCKPT_FUZZ_EXAMPLES=5000 pytest -m slow tests/test_fuzz_store.py -q

runs 5,000 per test (7 tests: 35,000 inputs).
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memckpt.store import Store
from memckpt.store import format as fmt

from _store_util import PS, random_pages, relink, write_epoch

HERE = Path(__file__).resolve().parent
FUZZ_EXAMPLES = int(os.environ.get("MEMCKPT_FUZZ_EXAMPLES", "0")) or 150
SLOW_EXAMPLES = int(os.environ.get("MEMCKPT_FUZZ_EXAMPLES", "0")) or 3000
NPAGES = 12
EPOCHS = (1, 2, 3)


# ------------------------------------------------------------ the store

@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """epoch 1: full, raw; 2: incremental, zstd; 3: incremental, lz4 (with
    zero pages, a duplicate page, and a compressible page)."""
    path = tmp_path_factory.mktemp("fuzz") / "pristine"
    s = Store(path, create=True, page_size=PS)
    rng = np.random.default_rng(7)
    state = random_pages(rng, NPAGES)
    state[[2, 9]] = 0
    state[4] = state[6]
    state[NPAGES - 1] = np.tile(np.arange(64, dtype=np.uint8), PS // 64)
    e = write_epoch(s, state, None, kind="full")
    for compress in ("zstd", "lz4"):
        pages = rng.choice(NPAGES, 5, replace=False)
        state[pages[:3]] = random_pages(rng, 3)
        state[pages[3]] = 0
        state[pages[4]] = np.tile(np.arange(128, dtype=np.uint8), PS // 128)
        e = write_epoch(s, state, pages, parent=e, compress=compress)
    s.verify()
    assert s.epoch_numbers() == list(EPOCHS)
    return path


class Worker:
    """The reader process; restarted when it dies."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.inputs = 0

    def _start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(HERE)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
        self.proc = subprocess.Popen([sys.executable, str(HERE / "_fuzz_worker.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        ready = self._line(60)
        assert ready and json.loads(ready).get("ready"), f"fuzz worker did not start: {ready!r}"

    def _line(self, timeout: float) -> str | None:
        assert self.proc and self.proc.stdout
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if r else None

    def check(self, path: Path) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc and self.proc.stdin
        self.inputs += 1
        self.proc.stdin.write(json.dumps({"path": str(path)}) + "\n")
        self.proc.stdin.flush()
        line = self._line(300)
        if not line:
            self.proc.kill()
            _, err = self.proc.communicate()
            rc = self.proc.returncode
            self.proc = None
            return {"fail": f"the reader process died (exit {rc}) or stopped answering:\n"
                            f"{(err or '')[-3000:]}", "outcomes": {}}
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate()
            self.proc = None


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()
    print(f"\nfuzz: {w.inputs} stores checked")


@pytest.fixture
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzzcase")


def fresh_copy(pristine: Path, scratch: Path) -> Path:
    dst = scratch / "st"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(pristine, dst)
    return dst


def assert_handled(worker: Worker, path: Path, what: str) -> None:
    res = worker.check(path)
    if res["fail"]:
        pytest.fail(f"{what}\n{res['fail']}", pytrace=False)


# ------------------------------------------------------------- strategies

EXTREME_INTS = [0, 1, -1, 2, 7, 8, 511, 512, 4095, 4096, 4097, 2**31 - 1, 2**31, 2**32 - 1,
                2**32, 2**48, 2**48 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
                -2**63, 10**19, 10**19 - 1, 10**30, -10**30]
junk_ints = st.one_of(st.sampled_from(EXTREME_INTS), st.integers(), st.integers(-3, 40))
junk_strings = st.one_of(
    st.sampled_from(["", "../x", "../../etc/passwd", "/etc/passwd", "/", ".", "..",
                     "e00000001-0.pack", "e00000001-0.idx", "e00000002-0.pack",
                     "e00000001-1.pack", "e99999999-0.pack", "lock", "memckpt-store.json",
                     "e00000001.json", "full", "incremental", "zstd", "lz4", "none",
                     "0" * 64, "f" * 64, "x" * 5000, "<u8", "O", "V4096", "(1000000000,)f8",
                     "S0", "u1", "\x00", "é", "\ud800"]),
    st.text(max_size=30))
junk_leaf = st.one_of(junk_ints, st.floats(allow_nan=False, allow_infinity=False),
                      junk_strings, st.booleans(), st.none())
junk_json = st.recursive(junk_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(junk_strings, kids, max_size=4)), max_leaves=12)


def deep(depth: int, kind: str) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v] if kind == "list" else {"a": v}
    return v


junk_value = st.one_of(
    junk_json,
    st.builds(deep, st.integers(1, 2000), st.sampled_from(["list", "dict"])))


def json_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a JSON document (the root is ())."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += json_paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += json_paths(v, prefix + (i,))
    return out


def json_mutate(doc: Any, data: st.DataObject) -> Any:
    """One structural change to doc (in place where possible); returns the new root."""
    paths = [p for p in json_paths(doc) if p != ("digest",)]
    path = data.draw(st.sampled_from(paths), label="path")
    op = data.draw(st.sampled_from(["set", "set", "set", "delete", "add"]), label="op")
    if not path:
        return data.draw(junk_value, label="new root") if op == "set" else doc
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if op == "set":
        parent[key] = data.draw(junk_value, label="value")
    elif op == "delete":
        del parent[key]
    else:
        target = parent[key]
        if isinstance(target, dict):
            target[data.draw(junk_strings, label="new key")] = data.draw(junk_value, label="value")
        elif isinstance(target, list):
            target.append(data.draw(junk_value, label="value"))
        else:
            parent[key] = data.draw(junk_value, label="value")
    return doc


def signed_bytes(doc: Any) -> bytes:
    """doc signed and dumped the way the store writes it, at any nesting depth;
    a root that is not an object is dumped as is."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20000))
    try:
        if isinstance(doc, dict):
            doc = fmt.sign(doc)
        return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode()
    finally:
        sys.setrecursionlimit(old)


def byte_mutate(buf: bytes, data: st.DataObject, fields: list[tuple[int, int]]) -> bytes:
    """1..4 byte-level changes; `fields` are (offset, width) of integer fields."""
    b = bytearray(buf)
    for _ in range(data.draw(st.integers(1, 4), label="n mutations")):
        ops = ["flip", "set", "truncate", "insert", "delete"] + (["field"] * 3 if fields else [])
        op = data.draw(st.sampled_from(ops), label="byte op")
        n = len(b)
        if op == "flip" and n:
            i = data.draw(st.integers(0, n - 1), label="at")
            b[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif op == "set" and n:
            i = data.draw(st.integers(0, n - 1), label="at")
            b[i] = data.draw(st.integers(0, 255), label="byte")
        elif op == "truncate":
            del b[data.draw(st.integers(0, n), label="cut at"):]
        elif op == "insert":
            i = data.draw(st.integers(0, n), label="at")
            b[i:i] = data.draw(st.binary(min_size=1, max_size=64), label="bytes")
        elif op == "delete" and n:
            i = data.draw(st.integers(0, n - 1), label="at")
            del b[i:i + data.draw(st.integers(1, 64), label="count")]
        elif op == "field":
            off, width = data.draw(st.sampled_from(fields), label="field")
            top = (1 << (8 * width)) - 1
            v = data.draw(st.one_of(
                st.sampled_from([0, 1, 2, top, top - 1, top >> 1, (top >> 1) + 1, PS, PS - 1, PS + 1,
                                 fmt.PACK_HEADER_SIZE, fmt.IDX_HEADER_SIZE, fmt.RECORD_SIZE,
                                 NPAGES, NPAGES - 1, 2**31, 2**32 - 1]),
                st.integers(0, top)), label="value") & top
            if off + width <= len(b):
                b[off:off + width] = v.to_bytes(width, "little")
    return bytes(b)


def idx_fields(n_records: int) -> list[tuple[int, int]]:
    # header: major, minor, hsize, rsize, page_size, epoch, count, reserved
    head = [(8, 2), (10, 2), (12, 4), (16, 4), (20, 4), (24, 8), (32, 8), (40, 8)]
    recs = []
    for i in range(n_records):
        base = fmt.IDX_HEADER_SIZE + i * fmt.RECORD_SIZE
        recs += [(base, 8), (base + 8, 8), (base + 16, 4), (base + 20, 4), (base + 24, 8)]
    return head + recs


PACK_FIELDS = [(8, 2), (10, 2), (12, 4), (16, 4), (20, 4), (24, 8)]


def resign_data(path: Path, epoch: int, ext: str, data: bytes) -> None:
    """Rewrite epoch's idx or pack file and re-sign its manifest to match."""
    mpath = path / fmt.manifest_name(epoch)
    doc = json.loads(mpath.read_text())
    f = doc["files"][ext]
    (path / f["name"]).write_bytes(data)
    f["size"] = len(data)
    f["blake3"] = blake3.blake3(data).hexdigest()
    mpath.write_bytes(signed_bytes(doc))


# ------------------------------------------------------------------ tests

def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=False, database=None,
                    suppress_health_check=list(HealthCheck))


def _manifest_json(pristine, scratch, worker, data):
    path = fresh_copy(pristine, scratch)
    epoch = data.draw(st.sampled_from(EPOCHS), label="epoch")
    mpath = path / fmt.manifest_name(epoch)
    doc = json_mutate(json.loads(mpath.read_text()), data)
    mpath.write_bytes(signed_bytes(doc))
    assert_handled(worker, path, f"re-signed manifest of epoch {epoch}")


def _header_json(pristine, scratch, worker, data):
    path = fresh_copy(pristine, scratch)
    hpath = path / fmt.STORE_HEADER
    doc = json_mutate(json.loads(hpath.read_text()), data)
    hpath.write_bytes(signed_bytes(doc))
    assert_handled(worker, path, "re-signed store header")


def _json_bytes(pristine, scratch, worker, data):
    path = fresh_copy(pristine, scratch)
    name = data.draw(st.sampled_from([fmt.STORE_HEADER] + [fmt.manifest_name(e) for e in EPOCHS]),
                     label="file")
    p = path / name
    p.write_bytes(byte_mutate(p.read_bytes(), data, []))
    assert_handled(worker, path, f"bytes of {name} changed")


def _data_file(pristine, scratch, worker, data, ext):
    path = fresh_copy(pristine, scratch)
    epoch = data.draw(st.sampled_from(EPOCHS), label="epoch")
    doc = json.loads((path / fmt.manifest_name(epoch)).read_text())
    f = doc["files"][ext]
    raw = (path / f["name"]).read_bytes()
    fields = idx_fields(doc["counts"]["records"]) if ext == "idx" else PACK_FIELDS
    new = byte_mutate(raw, data, fields)
    if data.draw(st.integers(0, 4), label="resign") > 0:  # mostly: past the digest
        resign_data(path, epoch, ext, new)
    else:
        (path / f["name"]).write_bytes(new)
    assert_handled(worker, path, f"{ext} file of epoch {epoch} changed")


def _pair(pristine, scratch, worker, data):
    """Two files at once: an index and a manifest field, both re-signed."""
    path = fresh_copy(pristine, scratch)
    epoch = data.draw(st.sampled_from(EPOCHS), label="epoch")
    mpath = path / fmt.manifest_name(epoch)
    doc = json.loads(mpath.read_text())
    raw = (path / doc["files"]["idx"]["name"]).read_bytes()
    resign_data(path, epoch, "idx", byte_mutate(raw, data, idx_fields(doc["counts"]["records"])))
    doc = json_mutate(json.loads(mpath.read_text()), data)
    mpath.write_bytes(signed_bytes(doc))
    assert_handled(worker, path, f"index and manifest of epoch {epoch} changed")


def _every_manifest(pristine, scratch, worker, data):
    """One field set to the same junk in every manifest, all re-signed: a
    hostile writer keeps the chain consistent (same npages, page size...), so
    the value reaches the code behind the chain checks."""
    path = fresh_copy(pristine, scratch)
    first = json.loads((path / fmt.manifest_name(EPOCHS[0])).read_text())
    paths = [p for p in json_paths(first) if p and p[0] not in ("digest", "epoch", "parent")]
    def at(p: tuple) -> Any:
        node: Any = first
        for k in p:
            node = node[k]
        return node

    # integer fields (sizes, counts, page numbers) half of the time: they size things
    ints = [p for p in paths if fmt._is_int(at(p))]
    where = data.draw(st.one_of(st.sampled_from(ints), st.sampled_from(paths)), label="path")
    value = data.draw(st.one_of(st.sampled_from(EXTREME_INTS), junk_value), label="value")
    for e in EPOCHS:
        mpath = path / fmt.manifest_name(e)
        doc = json.loads(mpath.read_text())
        node = doc
        try:
            for k in where[:-1]:
                node = node[k]
            node[where[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
        mpath.write_bytes(signed_bytes(doc))
    assert_handled(worker, path, f"{where} set in every manifest")


CASES = {"every_manifest": _every_manifest, "manifest_json": _manifest_json, "header_json": _header_json, "json_bytes": _json_bytes,
         "index": lambda *a: _data_file(*a, "idx"), "pack": lambda *a: _data_file(*a, "pack"),
         "index_and_manifest": _pair}


def test_pristine_store_reads_cleanly(pristine, scratch, worker):
    """The harness itself: the unmutated store passes every reader with 'ok'."""
    res = worker.check(fresh_copy(pristine, scratch))
    assert res["fail"] is None, res["fail"]
    assert res["outcomes"] and set(res["outcomes"].values()) == {"ok"}, res["outcomes"]
    assert "compact 1 3" in res["outcomes"] and "read_into 3" in res["outcomes"]


def test_worker_reports_hang_and_memory(tmp_path):
    """The limits really bite: a reader that allocates without bound or never
    returns is reported, not waited for."""
    code = ("import sys; sys.path.insert(0, %r); import _fuzz_worker as w, signal, resource\n"
            "signal.signal(signal.SIGALRM, w._alarm)\n"
            "lim = w._vm_size() + (256 << 20); resource.setrlimit(resource.RLIMIT_AS, (lim, lim))\n"
            "import memckpt.store.local as L\n"
            "L.Store.verify = lambda self, *a: bytearray(1 << 33)\n"
            "L.Store.epochs = lambda self: next(x for x in iter(int, 1) if x)\n"
            "print(w.run(sys.argv[1], 1.0)['fail'].splitlines()[0])\n" % str(HERE))
    # an empty store: open works, then epochs() spins (a hang)
    Store(tmp_path / "s", create=True, page_size=PS)
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True,
                       text=True, timeout=60)
    assert "ls: hang" in p.stdout, p.stdout + p.stderr
    code2 = code.replace("L.Store.epochs = lambda self: next(x for x in iter(int, 1) if x)\n", "")
    p = subprocess.run([sys.executable, "-c", code2, str(tmp_path / "s")], capture_output=True,
                       text=True, timeout=60)
    assert "verify: unbounded memory" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("npages", [2**31, 2**48])
def test_compact_allocates_by_the_indexes_not_npages(pristine, scratch, worker, npages):
    """Found by this fuzzer: compact() sized three arrays by the manifests'
    npages (up to 2**48, consistent across a hostile chain), 16 GiB at 2**31.
    It now resolves only the pages the indexes hold, and the merged epoch
    reads back exactly."""
    path = fresh_copy(pristine, scratch)
    for e in EPOCHS:
        mpath = path / fmt.manifest_name(e)
        doc = json.loads(mpath.read_text())
        doc["npages"] = npages
        mpath.write_bytes(signed_bytes(doc))
    relink(path)  # consistent across the chain: what the test is about
    res = worker.check(path)
    assert res["fail"] is None, res["fail"]
    assert res["outcomes"]["compact 1 3"] == "ok", res["outcomes"]
    s = Store(path)
    assert s.chain(3) == [3]
    out = np.empty((NPAGES, PS), dtype=np.uint8)
    Store(pristine).read_into(3, out)
    recs = s._index(3)
    assert int(recs["page"].max()) < NPAGES
    # the merged epoch holds the pristine content: by digest (reading it
    # would need an (npages, page_size) buffer), absent pages being zero
    for p in range(NPAGES):
        i = int(np.searchsorted(recs["page"], p))
        if i < len(recs) and int(recs["page"][i]) == p:
            assert bytes(recs["digest"][i]) == blake3.blake3(out[p].tobytes()).digest()
        else:
            assert not out[p].any()


@pytest.mark.parametrize("depth", [64, 600, 1500])
def test_deeply_nested_manifest_is_a_format_error(pristine, scratch, worker, depth):
    """Found by this fuzzer: an `extra` of ~600 nested objects parsed, then
    Store.info()/manifest() died in copy.deepcopy with RecursionError.
    Documents now nest at most format.MAX_JSON_DEPTH (64) levels."""
    from memckpt import CorruptionError, FormatError
    path = fresh_copy(pristine, scratch)
    mpath = path / fmt.manifest_name(3)
    doc = json.loads(mpath.read_text())
    doc["extra"] = deep(depth, "dict")
    mpath.write_bytes(signed_bytes(doc))
    res = worker.check(path)
    assert res["fail"] is None, res["fail"]
    # past the JSON parser's own limit (~1000), the parser refuses it first
    with pytest.raises((FormatError, CorruptionError), match="nested deeper than 64|recursion"):
        Store(path).info(3)


def test_writer_refuses_what_readers_would_refuse(tmp_path):
    s = Store(tmp_path / "s", create=True, page_size=PS)
    w = s.begin("full", npages=1)
    w.add_pages(np.array([0], dtype=np.uint64), np.ones((1, PS), dtype=np.uint8))
    with pytest.raises(ValueError, match="nests deeper"):
        w.commit(pages_dirty=1, pause_s=0.0, extra=deep(63, "dict"))
    info = w.commit(pages_dirty=1, pause_s=0.0, extra=deep(62, "dict"))
    assert Store(tmp_path / "s").info(info.epoch).extra == deep(62, "dict")


def _make(case: str, n: int):
    @fuzz_settings(n)
    @given(data=st.data())
    def run(pristine, scratch, worker, data):
        CASES[case](pristine, scratch, worker, data)
    return run


@pytest.mark.parametrize("case", sorted(CASES))
def test_fuzz(case, pristine, scratch, worker):
    _make(case, FUZZ_EXAMPLES)(pristine, scratch, worker)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_fuzz_long(case, pristine, scratch, worker):
    _make(case, SLOW_EXAMPLES)(pristine, scratch, worker)
