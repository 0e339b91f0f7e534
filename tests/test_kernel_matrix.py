"""The kernel matrix (scripts/kernel_matrix.py) as tests.

The static C test binaries run three times per session: on the host kernel,
and on two Debian kernels booted under qemu (once each, in module-scoped
fixtures):

- debian-6.1: soft-dirty (read through pagemap bit 55) and synchronous
  uffd-wp, no WP_ASYNC, no PAGEMAP_SCAN: `auto` must fall back from
  uffd-async to uffd-sync;
- debian-6.12: soft-dirty, WP_ASYNC and PAGEMAP_SCAN together: every backend
  runs, soft-dirty reads its bits through PAGEMAP_SCAN, `auto` = uffd-async.

Without qemu/busybox-static/a compiler, or without the kernel package (no
network, no apt), these tests skip and say how to fix it; with $CI set they
fail instead, so that CI cannot pass by skipping them.

Deselect with `-m "not qemu"`; the guest runs take about 40 s (6.1) and 60 s
(6.12), one after the other.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUEST = "debian-6.1"
GUEST_612 = "debian-6.12"


def _load_harness():
    spec = importlib.util.spec_from_file_location("kernel_matrix",
                                                  ROOT / "scripts" / "kernel_matrix.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


km = _load_harness()
qemu = pytest.mark.qemu

# Deadlines for a guest run: they only bound what a hang costs, so they are
# set for the slowest machine CI may be, not an idle one. TCG runs both vCPUs
# on one host thread: its speed follows the host's load. debian-6.12's run took
# 181 s (test_epoch_writer 77 s) at a load of 4.5 on 2 cores, where the
# harness's defaults were 240 s a run and 120 s a binary (now 1200 s and 600 s:
# a load of 8 would have passed both). A binary that really hangs still ends
# the run, later.
RUN_TIMEOUT = km.DEFAULT_TIMEOUT
TEST_TIMEOUT = km.DEFAULT_TEST_TIMEOUT


def _cannot_run(why: str):
    if km.ci_mode():
        pytest.fail(f"{why} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    missing = km.missing_prerequisites(km.HOST)
    if missing:
        _cannot_run("kernel matrix: " + "; ".join(missing))
    try:
        return km.build_tests(tmp_path_factory.mktemp("matrix-bin"))
    except km.BuildError as e:
        pytest.fail(f"the test binaries do not compile:\n{e}", pytrace=False)


def _by_test(results) -> dict:
    return {r.test: r for r in results}


@pytest.fixture(scope="module")
def runs() -> dict:
    """Each kernel's results by test name (or why it cannot run), filled on
    first use: one boot per kernel per module."""
    return {}


def _results(request, kernel: str) -> dict:
    runs = request.getfixturevalue("runs")
    if kernel not in runs:
        runs[kernel] = _run_kernel(request, kernel)
    if isinstance(runs[kernel], str):
        _cannot_run(runs[kernel])
    return runs[kernel]


def _run_kernel(request, kernel: str) -> dict | str:
    if kernel != km.HOST:
        missing = km.missing_prerequisites(kernel)
        if missing:
            return f"the kernel matrix on {kernel} is missing a tool: " + "; ".join(missing)
    build = request.getfixturevalue("build")
    workdir = request.getfixturevalue("tmp_path_factory").mktemp(f"matrix-{kernel}")
    try:
        return _by_test(km.run_matrix(kernel, build=build, workdir=workdir, timeout=RUN_TIMEOUT,
                                      test_timeout=TEST_TIMEOUT))
    except km.KernelUnavailable as e:
        return f"the {kernel} kernel package is unavailable (no network or no apt?): {e}"


@pytest.fixture(scope="module")
def host(request) -> dict:
    return _results(request, km.HOST)


@pytest.fixture(scope="module")
def guest(request) -> dict:
    return _results(request, GUEST)


@pytest.fixture(scope="module")
def guest612(request) -> dict:
    return _results(request, GUEST_612)


def _check(ok: bool, r) -> None:
    """assert, with the record explained instead of its repr"""
    if not ok:
        pytest.fail(_explain(r), pytrace=False)


def _explain(r) -> str:
    text = f"{r.test} on {r.kernel} {r.release}: {r.status}"
    if r.exit_code is not None:
        text += f" (exit {r.exit_code})"
    return "\n  ".join([text, *r.reason, *(["output:"] + r.output[-15:] if r.output else [])])


# ---------------------------------------------------------------- the runs

@qemu
@pytest.mark.parametrize("kernel", km.KERNEL_NAMES)
def test_run_completed(kernel, request):
    r = _results(request, kernel)[km.KERNEL_ROW]
    _check(r.status == "pass", r)


@qemu
@pytest.mark.parametrize("name", km.binary_names())
@pytest.mark.parametrize("kernel", km.KERNEL_NAMES)
def test_binary_passes_or_skips_with_reason(kernel, name, request):
    r = _results(request, kernel)[name]
    _check(r.status in ("pass", "skip"), r)
    if r.status == "skip":
        _check(bool(r.reason) and all(line.strip() for line in r.reason), r)


# ------------------------------------------------- Debian 6.1 under qemu

@qemu
def test_guest_is_debian_6_1(guest):
    _check(guest[km.KERNEL_ROW].release.startswith("6.1.0-"), guest[km.KERNEL_ROW])


@qemu
def test_guest_soft_dirty_passes(guest):
    _check(guest["test_soft_dirty"].status == "pass", guest["test_soft_dirty"])


@qemu
def test_guest_uffd_sync_passes(guest):
    _check(guest["test_uffd_sync"].status == "pass", guest["test_uffd_sync"])


@qemu
def test_guest_uffd_async_skips_naming_the_missing_feature(guest):
    r = guest["test_uffd_async"]
    _check(r.status == "skip", r)
    _check(bool(re.search(r"WP_ASYNC|PAGEMAP_SCAN", " ".join(r.reason))), r)


@qemu
def test_guest_probe_matches_the_design_notes(guest):
    v = guest["probe_report"].values
    assert (v.get("soft_dirty"), v.get("uffd_wp"), v.get("uffd_wp_async"),
            v.get("pagemap_scan")) == ("ok", "ok", "unsupported", "unsupported"), v


@qemu
def test_guest_auto_picks_uffd_sync(guest):
    r = guest["probe_report"]
    _check(r.values.get("auto") == "uffd-sync", r)
    # and says why it passed over uffd-async
    assert "uffd-async" in r.values.get("auto.reason", ""), r.values


# ------------------------------------------------ Debian 6.12 under qemu

@qemu
def test_guest612_is_debian_6_12(guest612):
    _check(guest612[km.KERNEL_ROW].release.startswith("6.12."), guest612[km.KERNEL_ROW])


@qemu
def test_guest612_probe_has_every_feature(guest612):
    v = guest612["probe_report"].values
    assert (v.get("soft_dirty"), v.get("uffd_wp"), v.get("uffd_wp_async"),
            v.get("pagemap_scan")) == ("ok", "ok", "ok", "ok"), v


@qemu
@pytest.mark.parametrize("name", [f"test_{b.replace('-', '_')}" for b in km.BACKENDS])
def test_guest612_every_backend_passes(guest612, name):
    _check(guest612[name].status == "pass", guest612[name])


@qemu
def test_guest612_soft_dirty_reads_through_pagemap_scan(guest612):
    # the backend's status reason names the path its collect takes; on 6.1
    # it is "pagemap bit 55", here PAGEMAP_SCAN's PAGE_IS_SOFT_DIRTY
    r = guest612["probe_report"]
    _check(r.values.get("backend.soft-dirty") == "available", r)
    reason = r.values.get("backend.soft-dirty.reason", "")
    assert "PAGEMAP_SCAN" in reason and "bit 55" not in reason, r.values


@qemu
def test_guest_soft_dirty_reads_pagemap_bit_55(guest):
    r = guest["probe_report"]
    assert "pagemap bit 55" in r.values.get("backend.soft-dirty.reason", ""), r.values


@qemu
def test_guest612_auto_picks_uffd_async(guest612):
    r = guest612["probe_report"]
    _check(r.values.get("auto") == "uffd-async", r)


# ------------------------------------------------------------ the host

def _host_config(option: str) -> str | None:
    """'y', 'n' (not set) or None (no kernel config to read) for CONFIG_<option>."""
    release = os.uname().release
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{release}")):
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode(errors="replace")
        m = re.search(rf"^CONFIG_{option}=(\w+)", text, re.M)
        return m.group(1) if m else "n"
    return None


def _host_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@qemu
def test_host_soft_dirty_follows_the_kernel_config(host):
    r = host["test_soft_dirty"]
    config = _host_config("MEM_SOFT_DIRTY")
    if config is None:
        pytest.skip("no /proc/config.gz or /boot/config-*: cannot tell whether the host has soft-dirty")
    if config == "y":
        _check(r.status == "pass", r)
    else:
        # the project's machines: built without it, detected by the self-test
        _check(r.status == "skip", r)
        _check("CONFIG_MEM_SOFT_DIRTY" in " ".join(r.reason), r)


@qemu
def test_host_auto_picks_uffd_async(host):
    if _host_version() < (6, 7) or os.geteuid() != 0:
        pytest.skip("auto picks uffd-async on the project's machines (Linux >= 6.7, as root); "
                    f"this is Linux {os.uname().release} as uid {os.geteuid()}")
    r = host["probe_report"]
    _check(r.values.get("auto") == "uffd-async", r)


# ------------------------------------- the harness's parser (no qemu needed)

def _transcript(*lines: str, done: bool = True, timed_out: bool = False):
    stamped = [(float(i), text) for i, text in enumerate(lines)]
    if done:
        stamped.append((float(len(lines)), "MCK-DONE"))
    return km.Transcript(stamped, seconds=float(len(lines)), timed_out=timed_out, exit_code=0)


def test_parser_reads_pass_skip_fail_and_glued_markers():
    tr = _transcript(
        "SeaBIOS", "Booting from ROM..MCK-KERNEL 6.1.0-99-amd64",  # glued to BIOS noise
        "MCK-BEGIN probe_report", "auto=uffd-sync", "soft_dirty=ok", "MCK-RESULT probe_report 0",
        "MCK-BEGIN test_a", "# seed 5", "SKIP a unavailable: no WP_ASYNC", "MCK-RESULT test_a 77",
        "MCK-BEGIN test_b", "# backend b, seed 42", "FAIL x.c:1: broken",
        "half a lineMCK-RESULT test_b 1",  # output without its newline
        "MCK-BEGIN test_c", "Killed", "MCK-RESULT test_c 137")
    rows = km.parse_transcript(tr, GUEST, ["probe_report", "test_a", "test_b", "test_c", "test_d"],
                               test_timeout=1)
    by = _by_test(rows)
    assert by[km.KERNEL_ROW].status == "pass" and by[km.KERNEL_ROW].release == "6.1.0-99-amd64"
    assert by["probe_report"].values["auto"] == "uffd-sync"
    assert by["test_a"].status == "skip" and by["test_a"].reason == ["SKIP a unavailable: no WP_ASYNC"]
    assert by["test_b"].status == "fail" and "FAIL x.c:1: broken" in by["test_b"].reason
    assert "half a line" in by["test_b"].output
    assert any("--seed 42" in line for line in by["test_b"].reason)
    assert by["test_c"].status == "fail" and by["test_c"].reason[0].startswith("timed out")
    assert by["test_d"].status == "fail" and "never ran" in by["test_d"].reason[0]


def test_parser_fails_the_run_without_mck_done():
    tr = _transcript("MCK-KERNEL 6.1.0-1-amd64", "MCK-BEGIN test_a", "[ 1.0] Kernel panic - oops",
                     done=False, timed_out=True)
    by = _by_test(km.parse_transcript(tr, GUEST, ["test_a"], test_timeout=60))
    row = by[km.KERNEL_ROW]
    assert row.status == "fail"
    assert any("timed out" in line for line in row.reason)
    assert any("MCK-DONE" in line for line in row.reason)
    assert by["test_a"].status == "fail"
    assert by["test_a"].reason[0].startswith("no MCK-RESULT")
    assert any("Kernel panic" in line for line in by["test_a"].reason)


def test_skip_without_a_reason_is_a_failure():
    tr = _transcript("MCK-KERNEL x", "MCK-BEGIN test_a", "MCK-RESULT test_a 77")
    assert _by_test(km.parse_transcript(tr, km.HOST, ["test_a"], 60))["test_a"].status == "fail"


def test_initramfs_is_a_newc_archive_with_init(tmp_path):
    binary = tmp_path / "test_x"
    binary.write_bytes(b"\x7fELF fake")
    if not km.BUSYBOX.exists():
        pytest.skip(f"{km.BUSYBOX} missing: {km.INSTALL_HINT}")
    path = km.write_initramfs(tmp_path / "initrd.gz", [km.Binary("test_x", binary)], 30)
    data = gzip.decompress(path.read_bytes())
    assert data.startswith(b"070701")
    for name in (b"init\0", b"bin/busybox\0", b"dev/console\0", b"tests/test_x\0", b"TRAILER!!!\0"):
        assert name in data
    assert b"timeout -s KILL 30 /tests/$t" in data and b"MCK-DONE" in data


def test_matrix_backends_are_the_c_tables():
    # the matrix reads the backends from the C sources (no binding needed);
    # a backend named so that its rule misses it would go untested
    from memckpt import _core
    assert sorted(km.BACKENDS) == sorted(_core.backend_names())
    assert [f"test_{b.replace('-', '_')}" for b in km.BACKENDS] == km.binary_names()[1:1 + len(km.BACKENDS)]
