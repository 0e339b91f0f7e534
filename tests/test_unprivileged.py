"""Unprivileged use: memckpt as a non-root user with vm.unprivileged_userfaultfd=0.

With the sysctl at 0, the kernel gives a process without CAP_SYS_PTRACE a
userfaultfd only with UFFD_USER_MODE_ONLY (Linux >= 5.11). memckpt's probe
falls back to that flag; then the uffd backends either work through it, or
are reported unavailable with a reason that names the sysctl that fixes it,
and `auto` picks the best backend that is available.

These tests run as root (the suite's normal case): they set the sysctl to 0
for the module (restoring it afterwards), and run the checks, then the
suite's own tests/test_tracker.py, as the user `nobody` (uid 65534, no
capabilities). Not root: skipped, since neither can be arranged.

If the interpreter lives where `nobody` cannot read it (pyenv under /root),
the system's python of the same version runs instead, with this
environment's site-packages added (compiled extensions share the ABI).
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSCTL = Path("/proc/sys/vm/unprivileged_userfaultfd")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: to set vm.unprivileged_userfaultfd=0 and to run as another user "
           f"(running as uid {os.geteuid()})")


def _nobody() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


@pytest.fixture(scope="module")
def sysctl_zero():
    if not SYSCTL.exists():
        pytest.skip(f"{SYSCTL} does not exist (kernel without userfaultfd, or < 5.2)")
    old = SYSCTL.read_text().strip()
    try:
        SYSCTL.write_text("0\n")
    except OSError as exc:
        pytest.skip(f"cannot set {SYSCTL} to 0 ({exc.strerror}): /proc/sys read-only here?")
    try:
        yield
    finally:
        SYSCTL.write_text(old + "\n")
        assert SYSCTL.read_text().strip() == old


@pytest.fixture(scope="module")
def home():
    """A directory `nobody` owns: HOME, TMPDIR and pytest's base temp (in
    the system's temp dir: pytest's own are 0700 root's)."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="mck-nobody-"))
    uid, gid = _nobody()
    os.chown(d, uid, gid)
    for parent in d.parents:  # nobody must reach it
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            shutil.rmtree(d)
            pytest.skip(f"{parent} is not searchable by other users")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _bootstrap() -> str:
    """Code that makes this environment's packages importable from another
    interpreter of the same version (site dirs, so that .pth files run)."""
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    return ("import site\n" + "".join(f"site.addsitedir({d!r})\n" for d in dirs))


@pytest.fixture(scope="module")
def runner(sysctl_zero, home):
    """run(code, *args) -> CompletedProcess: `python -c code args` as nobody
    (sys.argv[1:] == args), with the sysctl at 0."""
    uid, gid = _nobody()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    if os.environ.get("CI"):
        env["CI"] = os.environ["CI"]
    prefix = [sys.executable, "-c"]  # then code, args

    def run(code: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, code, *args], user=uid, group=gid, extra_groups=[],
                              env=env, cwd=home, capture_output=True, text=True, timeout=timeout)

    # the interpreter: this one if nobody can run it with our packages, else
    # the system's python of the same version with our site dirs added
    try:
        probe = run("import numpy, memckpt, pytest")
        why = probe.stderr.strip()[-300:] if probe.returncode else ""
    except OSError as exc:  # cannot even exec it (pyenv under a 0700 /root)
        why = str(exc)
    if why:
        system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}",
                              path="/usr/bin:/bin:/usr/local/bin")
        if system:
            # argv: -c BOOT code args -> exec(code) with sys.argv[1:] == args
            prefix = [system, "-c", _bootstrap() + "import sys\ncode = sys.argv.pop(1)\n"
                      "exec(compile(code, '<nobody>', 'exec'))\n"]
        again = run("import numpy, memckpt, pytest") if system else None
        if again is None or again.returncode != 0:
            pytest.fail(f"`nobody` can run neither {sys.executable} ({why}) "
                        f"nor a system python{sys.version_info.major}.{sys.version_info.minor} "
                        f"with this environment's packages "
                        f"({again.stderr.strip()[-300:] if again else 'none found'})", pytrace=False)
    return run


PROBE = textwrap.dedent("""
    import json, os
    import numpy as np
    import memckpt
    out = {"uid": os.geteuid(), "features": {}, "trackers": [], "works": {}}
    f = memckpt.features()
    for k in ("uffd_user_mode_only", "unprivileged_userfaultfd"):
        out["features"][k] = getattr(f, k, None)
    out["sysctl"] = open("/proc/sys/vm/unprivileged_userfaultfd").read().strip()
    for t in memckpt.trackers():
        out["trackers"].append({"name": t.name, "available": t.available, "reason": t.reason,
                                "exact": t.exact})
    ps = f.page_size
    with memckpt.Arena(64 * ps) as arena:
        pages = arena.array("x", (64, ps), np.uint8)
        for t in memckpt.trackers():
            if not t.available:
                continue
            with memckpt.DirtyTracker(arena, t.name) as tr:
                tr.collect()
                pages[[1, 5, 9, 63], 3] += 1
                got = tr.collect().tolist()
                out["works"][t.name] = got
        with memckpt.DirtyTracker(arena, "auto") as tr:
            out["auto"] = tr.backend
        del pages
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def report(runner) -> dict:
    p = runner(PROBE)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_runs_as_nobody_with_the_sysctl_at_zero(report):
    assert report["uid"] == _nobody()[0]
    assert report["sysctl"] == "0"
    assert report["features"]["unprivileged_userfaultfd"] == 0


@pytest.mark.parametrize("name", ["uffd-async", "uffd-sync"])
def test_uffd_backends_work_user_mode_only_or_name_the_sysctl(report, name):
    t = next(t for t in report["trackers"] if t["name"] == name)
    if t["available"]:
        # only a user-mode-only fd is possible here: the probe must have used it
        assert report["features"]["uffd_user_mode_only"], report
        assert report["works"][name] == [1, 5, 9, 63], (name, report["works"])
        if name == "uffd-sync":  # what user-mode-only costs it, said up front
            assert "user-mode-only" in t["reason"] and "EFAULT" in t["reason"], t
    else:
        assert "vm.unprivileged_userfaultfd" in t["reason"] or "WP_ASYNC" in t["reason"] \
            or "write-protect" in t["reason"], t


def test_every_available_backend_tracks_exactly(report):
    for t in report["trackers"]:
        if t["available"]:
            got = report["works"][t["name"]]
            if t["exact"]:
                assert got == [1, 5, 9, 63], (t["name"], got)
            else:
                assert {1, 5, 9, 63} <= set(got), (t["name"], got)
        else:
            assert t["reason"], t


def test_auto_picks_the_best_available(report):
    first = next(t["name"] for t in report["trackers"] if t["available"])
    assert report["auto"] == first, report


def test_tracker_suite_as_nobody(runner, home):
    code = "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))"
    p = runner(code, "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
               "--basetemp", str(home / "pt"), "-o", f"cache_dir={home / 'cache'}",
               str(ROOT / "tests" / "test_tracker.py"), timeout=900)
    out = p.stdout + p.stderr
    print(out[-2500:])
    assert p.returncode == 0, out[-5000:]
    assert " passed" in out


ROLLBACK = textwrap.dedent("""
    import json, sys, tempfile
    import numpy as np
    import memckpt
    out = {}
    ps = memckpt.features().page_size
    for t in memckpt.trackers():
        if not t.available or not t.name.startswith("uffd"):
            continue
        with memckpt.Arena(32 * ps) as arena, tempfile.TemporaryDirectory() as d:
            x = arena.array("x", (32, ps), np.uint8)
            x[::3] = 7
            with memckpt.Checkpointer(arena, d + "/s", tracker=t.name) as ck:
                ck.checkpoint()
                want = x.copy()
                x[1:20] = 9
                ck.rollback()   # reads the store back into tracked pages
                out[t.name] = [bool((x == want).all()), t.kernel_writes]
            del x
    print(json.dumps(out))
""")


def test_rollback_as_nobody_with_each_uffd_backend(runner):
    """Found by test_tracker_suite_as_nobody: on a user-mode-only fd, uffd-sync
    claimed to let kernel writes through, so rollback's read straight into the
    arena failed with EFAULT. It now says it does not (kernel_writes=False)
    and rollback reads through scratch memory."""
    p = runner(ROLLBACK)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res, "no uffd backend available to nobody here"
    for name, (restored, _kw) in res.items():
        assert restored, (name, res)
    if "uffd-sync" in res:
        assert res["uffd-sync"][1] is False, res
