"""Security of the store: nothing read from a store makes memckpt touch a path
outside it; store files are owner-only; nothing is unpickled or evaluated.

"Touch" is observed, not guessed: every store operation here runs under a
Python audit hook (sys.addaudithook) that records each path memckpt opens,
lists, creates, renames, links, chmods or removes, and the test fails if one
of them lies outside the store directory. A canary directory beside the store
holds files that hostile names and symlinks point at; it must come out
byte-for-byte and timestamp-for-timestamp unchanged.
"""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from memckpt import CorruptionError, FormatError, MemckptError
from memckpt.store import Store
from memckpt.store import format as fmt

from _store_util import PS, build_chain, read, relink, write_epoch, write_signed

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _fuzz_worker  # noqa: E402  (the readers' tour: open, ls, info, ..., compact)

# -------------------------------------------------------- watching paths

_PATH_EVENTS = {  # audit event -> indexes of its path arguments
    "open": (0,), "os.listdir": (0,), "os.scandir": (0,), "os.remove": (0,), "os.rmdir": (0,),
    "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
    "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (0, 1), "shutil.rmtree": (0,),
    "shutil.copyfile": (0, 1), "shutil.move": (0, 1),
}
_watch: dict[str, Any] = {"on": False, "events": []}
_watch_lock = threading.Lock()


def _hook(event: str, args: tuple) -> None:
    if not _watch["on"] or event not in _PATH_EVENTS:
        return
    for i in _PATH_EVENTS[event]:
        if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)):
            p = os.fsdecode(args[i])
            with _watch_lock:
                _watch["events"].append((event, p))


sys.addaudithook(_hook)  # cannot be removed: it does nothing unless a test watches


@contextmanager
def watching() -> Iterator[list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []
    _watch["events"] = events
    _watch["on"] = True
    try:
        yield events
    finally:
        _watch["on"] = False


def outside(events: list[tuple[str, str]], store: Path) -> list[tuple[str, str]]:
    """The events whose path, made absolute and normalised (symlinks are not
    followed: O_NOFOLLOW is what keeps a link in the store harmless), is not
    the store directory or inside it."""
    root = os.path.normpath(os.path.abspath(store))
    return [(e, p) for e, p in events
            if not (os.path.normpath(os.path.abspath(p)) + "/").startswith(root + "/")]


def snapshot(d: Path) -> dict[str, tuple]:
    """Every entry under d: kind, bytes, mode, mtime (lstat, links not followed)."""
    out = {}
    for p in sorted(d.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(p) if p.is_symlink() else b""
        out[str(p)] = (stat.S_IFMT(st.st_mode), data, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def tour(path: Path) -> dict[str, Any]:
    """Every reader, then compact (the fuzz worker's tour), in this process:
    errors must be MemckptErrors (or an OSError for a link in place of a file
    the writer creates), never a path outside the store."""
    old = signal.signal(signal.SIGALRM, _fuzz_worker._alarm)
    try:
        return _fuzz_worker.run(str(path), 60.0)
    finally:
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, dict[int, np.ndarray]]:
    path = tmp_path_factory.mktemp("sec") / "st"
    s = Store(path, create=True, page_size=PS)
    expected = build_chain(s, npages=12, nepochs=3)
    # warm up: lazy imports (codecs, arena) must not show up as opens later
    tour_copy = tmp_path_factory.mktemp("warm") / "st"
    import shutil
    shutil.copytree(path, tour_copy)
    assert tour(tour_copy)["fail"] is None
    return path, expected


@pytest.fixture
def site(pristine, tmp_path) -> tuple[Path, Path, dict[int, np.ndarray]]:
    """(a copy of the store, a canary directory beside it, epoch contents)."""
    import shutil
    path, expected = pristine
    store = tmp_path / "store"
    shutil.copytree(path, store)
    canary = tmp_path / "canary"
    canary.mkdir()
    # outside copies of every store file: following a link would "work"
    for f in store.iterdir():
        (canary / f.name).write_bytes(f.read_bytes())
    (canary / "outside.pack").write_bytes(b"do not touch")
    (canary / "x").write_bytes(b"do not touch")
    return store, canary, expected


def assert_contained(events, store: Path) -> None:
    bad = outside(events, store)
    assert not bad, f"memckpt touched paths outside the store {store}: {bad[:10]}"


def test_the_watch_sees_what_memckpt_touches(site):
    """The audit hook is live: a read shows the store files it opened, and a
    path outside the store would be reported."""
    store, canary, expected = site
    with watching() as events:
        assert np.array_equal(read(Store(store), 3), expected[3])
        open(canary / "x", "rb").close()
    opened = {os.path.basename(p) for e, p in events if e == "open"}
    assert {fmt.STORE_HEADER, fmt.manifest_name(3), _data(store, 3, "pack"),
            _data(store, 2, "idx")} <= opened, opened
    assert outside(events, store) == [("open", str(canary / "x"))]


# ------------------------------------------------- hostile names in manifests

HOSTILE_NAMES = ["../x", "../canary/outside.pack", "/etc/passwd", "{canary}/outside.pack",
                 "{canary}/e00000002-0.pack", "e00000002-0.pack/../../canary/x",
                 "./e00000002-0.pack", "sub/e00000002-0.pack", "e00000002-0.pack\x00",
                 "e00000002-0.pack ", "..", ".", "", "e00000002-0.pack/", "E00000002-0.PACK",
                 "e0000002-0.pack", "e00000002-00.pack", "e00000002--1.pack"]


@pytest.mark.parametrize("ext", ["pack", "idx"])
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_file_names_are_refused(site, name, ext):
    store, canary, _ = site
    before = snapshot(canary)
    mpath = store / fmt.manifest_name(2)
    doc = json.loads(mpath.read_text())
    doc["files"][ext]["name"] = name.format(canary=canary)
    write_signed(mpath, doc)
    with pytest.raises(FormatError, match="epoch 2"):
        Store(store).manifest(2)
    with watching() as events:
        res = tour(store)
        s = Store(store)
        for e in (2, 3):  # 3 builds on 2
            out = np.zeros((12, PS), dtype=np.uint8)
            with pytest.raises(FormatError, match="epoch 2"):
                s.read_into(e, out)
    assert res["fail"] is None, res["fail"]
    for op in ("manifest 2", "verify 2", "chain 2", "chain 3", "verify", "compact 1 3"):
        assert res["outcomes"][op] == "FormatError", (op, res["outcomes"])
    assert_contained(events, store)
    assert snapshot(canary) == before


def test_hostile_layout_and_extra_are_data_not_paths(site):
    """Array names and `extra` strings that look like paths stay strings."""
    store, canary, _ = site
    before = snapshot(canary)
    for e in (1, 2, 3):
        mpath = store / fmt.manifest_name(e)
        doc = json.loads(mpath.read_text())
        doc["label"] = f"{canary}/x"
        doc["extra"] = {"path": "../canary/x", "abs": f"{canary}/x"}
        write_signed(mpath, doc)
    relink(store)  # rewritten as a whole: the chain's ties hold
    with watching() as events:
        res = tour(store)
    assert res["fail"] is None, res["fail"]
    assert set(res["outcomes"].values()) == {"ok"}, res["outcomes"]
    assert_contained(events, store)
    assert snapshot(canary) == before


# ---------------------------------------------------------- symlinks in the store

def _data(store: Path, epoch: int, ext: str) -> str:
    return json.loads((store / fmt.manifest_name(epoch)).read_text())["files"][ext]["name"]


@pytest.mark.parametrize("kind", ["header", "manifest", "idx", "pack"])
def test_symlinked_store_files_are_not_followed(site, kind):
    """A store file replaced by a link to an identical file outside: the
    reader refuses it (it never reads through the link)."""
    store, canary, expected = site
    name = {"header": fmt.STORE_HEADER, "manifest": fmt.manifest_name(2),
            "idx": _data(store, 2, "idx"), "pack": _data(store, 2, "pack")}[kind]
    (store / name).unlink()
    (store / name).symlink_to(canary / name)
    before = snapshot(canary)
    with watching() as events:
        res = tour(store)
    assert res["fail"] is None, res["fail"]
    assert_contained(events, store)
    assert snapshot(canary) == before
    if kind == "header":
        assert res["outcomes"] == {"open": "FormatError"}
        with pytest.raises(FormatError, match="symbolic link"):
            Store(store)
        return
    s = Store(store)
    with pytest.raises(FormatError, match="symbolic link"):
        read(s, 2)
    with pytest.raises(FormatError, match="symbolic link"):
        s.verify(2)
    assert np.array_equal(read(s, 1), expected[1])  # epoch 1 does not need the link
    assert (store / name).is_symlink()  # refused, not "repaired" by deleting it


def test_symlinked_lock_is_refused_and_its_target_untouched(site):
    store, canary, _ = site
    target = canary / "x"
    (store / fmt.LOCK_NAME).unlink(missing_ok=True)
    (store / fmt.LOCK_NAME).symlink_to(target)
    before = snapshot(canary)
    with watching() as events:
        with pytest.raises(FormatError, match="lock.*symbolic link"):
            Store(store).begin("full", npages=12)
        res = tour(store)
    assert res["fail"] is None, res["fail"]
    # readers never touch the lock: they read on; the writer's compact is refused
    assert res["outcomes"]["open"] == "ok" and res["outcomes"]["verify"] == "ok"
    assert [v for k, v in res["outcomes"].items() if k.startswith("compact")] == ["FormatError"]
    assert_contained(events, store)
    assert snapshot(canary) == before


def test_links_planted_at_the_names_a_writer_creates(site):
    """Links where the next epoch's files (and the manifest's temporary) will
    be created: the writer refuses to write through them (O_NOFOLLOW), so the
    targets outside keep their bytes; the store stays readable."""
    store, canary, expected = site
    s = Store(store)
    s.sweep()  # the writer's first sweep is behind it: the links below are met by the writes
    victims = {}
    for name in (fmt.data_name(4, 0, "pack"), fmt.data_name(4, 0, "idx"),
                 fmt.manifest_name(4) + fmt.TMP_SUFFIX):
        victim = canary / ("victim-" + name)
        victim.write_bytes(b"precious")
        (store / name).symlink_to(victim)
        victims[name] = victim
    before = snapshot(canary)
    state = expected[3].copy()
    state[0] ^= 1
    with watching() as events:
        with pytest.raises((OSError, MemckptError)):
            write_epoch(s, state, [0], parent=3)
    assert_contained(events, store)
    assert snapshot(canary) == before
    assert all(v.read_bytes() == b"precious" for v in victims.values())
    assert np.array_equal(read(Store(store), 3), expected[3])


def test_compaction_does_not_write_through_planted_links(site):
    store, canary, expected = site
    s = Store(store)
    s.sweep()  # the writer's first sweep is behind it: the links below are met by compact
    for ext in ("pack", "idx"):
        name = fmt.data_name(3, 1, ext)  # what compact(1, 3) writes
        (canary / ("victim-" + name)).write_bytes(b"precious")
        (store / name).symlink_to(canary / ("victim-" + name))
    before = snapshot(canary)
    with watching() as events:
        with pytest.raises((OSError, MemckptError)):
            s.compact(1, 3)
    assert_contained(events, store)
    assert snapshot(canary) == before
    assert np.array_equal(read(Store(store), 3), expected[3])


def test_sweep_unlinks_planted_links_never_their_targets(site):
    """The writer's sweep removes names no manifest references; a link there is
    removed itself, and what it points to is left alone; so is a directory."""
    store, canary, expected = site
    for name in (fmt.data_name(9, 0, "pack"), fmt.data_name(9, 0, "idx"), "junk.tmp",
                 fmt.manifest_name(9) + fmt.TMP_SUFFIX):
        (store / name).symlink_to(canary / "x")
    (store / fmt.data_name(8, 0, "pack")).mkdir()
    (store / fmt.data_name(8, 0, "pack") / "inner").write_bytes(b"keep")
    before = snapshot(canary)
    with watching() as events:
        s = Store(store)
        s.sweep()
    assert_contained(events, store)
    assert snapshot(canary) == before
    assert not any((store / n).is_symlink() for n in os.listdir(store))
    assert (store / fmt.data_name(8, 0, "pack") / "inner").read_bytes() == b"keep"
    assert np.array_equal(read(s, 3), expected[3])


# ----------------------------------------------------------- owner-only files

@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_store_files_and_dir_are_owner_only(tmp_path, umask):
    """Whatever the umask: the store directory is 0700 and every file in it
    0600: header, lock, manifests, indexes, packs, and those a compaction
    rewrites (a checkpoint is a copy of a process's memory)."""
    old = os.umask(umask)
    try:
        path = tmp_path / "st"
        s = Store(path, create=True, page_size=PS)
        build_chain(s, npages=8, nepochs=4, compress="zstd")
        s.compact(2, 3)
        s.prune(keep_last=2)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    names = sorted(os.listdir(path))
    assert fmt.STORE_HEADER in names and fmt.LOCK_NAME in names
    assert any(n.endswith(".pack") for n in names) and any(n.endswith(".idx") for n in names)
    assert any(fmt.data_name(3, 1, "pack") == n for n in names)  # a compaction's output
    modes = {n: stat.S_IMODE((path / n).lstat().st_mode) for n in names}
    assert all(stat.S_ISREG((path / n).lstat().st_mode) for n in names)
    assert set(modes.values()) == {0o600}, modes


def test_an_existing_directory_keeps_the_mode_its_owner_gave_it(tmp_path):
    """'Unless told otherwise': a store made in a directory that already
    exists leaves that directory's mode alone (its owner chose it); the files
    are still 0600."""
    path = tmp_path / "shared"
    path.mkdir()
    os.chmod(path, 0o750)
    s = Store(path, create=True, page_size=PS)
    build_chain(s, npages=8, nepochs=2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    assert {stat.S_IMODE((path / n).stat().st_mode) for n in os.listdir(path)} == {0o600}


# ----------------------------------------------------- nothing is evaluated

# what would turn bytes into code or objects
FORBIDDEN = re.compile(
    r"(?<![\w.])(eval|exec|compile|__import__)\s*\("
    r"|\bpickle\.(loads?|Unpickler)\b|\b(cPickle|_pickle|marshal|shelve|dill|cloudpickle)\b"
    r"|\bjoblib\.load\b|\byaml\.(load|unsafe_load|full_load)\b|\bimportlib\.import_module\b"
    r"|\brunpy\b|\bos\.(system|popen)\b|allow_pickle\s*=\s*True|shell\s*=\s*True")
#: (file, what): the one reviewed use; pickle *writes* a peer's file in the benchmark
ALLOWED = {("bench_measure.py", "import pickle"), ("bench_measure.py", "pickle.dump")}
#: (file, match): code the user names on the command line, run on purpose, never
#: anything read from a store: `memckpt calibrate MODULE:FUNCTION` imports the
#: user's own step function, as `python -m MODULE` would
RUNS_USER_CODE = {("calibrate.py", "importlib.import_module")}


def _code_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines with comments and string literals blanked out (docstrings too)."""
    import io
    import tokenize
    lines = text.splitlines()
    keep = [list(line) for line in lines]
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):
                row = keep[r - 1]
                lo = c0 if r == r0 else 0
                hi = c1 if r == r1 else len(row)
                row[lo:hi] = " " * (hi - lo)
    for i, row in enumerate(keep, 1):
        yield i, "".join(row)


def test_source_never_unpickles_or_evaluates():
    files = sorted((ROOT / "src").rglob("*.py"))
    assert len(files) > 5
    hits = []
    for f in files:
        for lineno, line in _code_lines(f.read_text()):
            for m in FORBIDDEN.finditer(line):
                if (f.name, m.group(0)) in RUNS_USER_CODE:
                    continue
                hits.append(f"{f.relative_to(ROOT)}:{lineno}: {line.strip()}")
            if re.search(r"\bpickle\b", line) and not any(
                    f.name == af and what in line for af, what in ALLOWED):
                hits.append(f"{f.relative_to(ROOT)}:{lineno}: {line.strip()}")
    # Cython and C: no interpreter entry points that evaluate text
    cython = [f for f in sorted((ROOT / "src").rglob("*")) if f.suffix in (".pyx", ".pxi", ".pxd")]
    for f in cython + sorted((ROOT / "csrc").rglob("*.[ch]")):
        for lineno, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\b(PyRun_\w+|Py_CompileString|PyEval_\w+|eval|exec|pickle)\s*\(", line):
                hits.append(f"{f.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not hits, "code that unpickles or evaluates:\n" + "\n".join(hits)


def test_the_grep_would_catch_it():
    """The scanner itself: each forbidden form is found in code, not in a comment."""
    for bad in ["x = pickle.loads(b)", "eval(s)", "exec(code)", "marshal.loads(b)",
                "np.load(f, allow_pickle=True)", "yaml.load(t)", "subprocess.run(c, shell=True)"]:
        assert any(FORBIDDEN.search(line) for _, line in _code_lines(bad + "\n")), bad
    assert not any(FORBIDDEN.search(line) for _, line in _code_lines("# eval(s)\nx = 'exec(y)'\n"))


FORK_PROBE = r"""
import os, sys
import numpy as np
import memckpt
marker = sys.argv[2]

def ran_python_in_child():
    with open(marker, "a") as f:
        f.write(f"python ran in child {os.getpid()}\n")

# Any fork that would go on to run Python (os.fork, multiprocessing) runs
# these hooks in the child; the fork mode's child must never get there.
os.register_at_fork(after_in_child=ran_python_in_child)
with memckpt.Arena(256 * 4096) as a:
    x = a.array("x", (256, 4096), np.uint8)
    with memckpt.Checkpointer(a, sys.argv[1], mode="fork") as ck:
        for i in range(20):
            x[i % 256, :] = i + 1
            info = ck.checkpoint().result()
            assert info.mode == "fork" and info.extra["child_pid"] > 0
print("ok")
"""


def test_fork_mode_child_runs_no_python(tmp_path):
    """The arena and staging are only ever in a fork child that runs the
    core's C writer: the interpreter's at-fork hooks never run in it."""
    marker = tmp_path / "marker"
    p = subprocess.run([sys.executable, "-c", FORK_PROBE, str(tmp_path / "s"), str(marker)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr
    assert not marker.exists(), marker.read_text()
    # and the hook does fire for a Python-level fork, so the check can fail
    q = subprocess.run([sys.executable, "-c",
                        "import os,sys\n"
                        "os.register_at_fork(after_in_child=lambda: open(sys.argv[1],'w').write('x'))\n"
                        "pid = os.fork()\n"
                        "os._exit(0) if pid == 0 else os.waitpid(pid, 0)\n", str(marker)],
                       capture_output=True, text=True, timeout=60)
    assert q.returncode == 0, q.stderr
    assert marker.exists()
