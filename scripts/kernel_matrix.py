#!/usr/bin/env python3
"""Run memckpt's static C test binaries on several Linux kernels: the kernel matrix.

The dirty-tracking backends depend on kernel features that no single machine
has all of.  The project's machines run Linux 6.18 *without* soft-dirty; Debian
12's own 6.1 kernel has soft-dirty and synchronous uffd write-protect but
neither UFFD_FEATURE_WP_ASYNC nor PAGEMAP_SCAN.  This script runs the same
statically linked test binaries on both, and prints one table:

  host        the kernel this machine runs (the binaries run directly)
  debian-6.1  Debian's newest linux-image-6.1.0-NN-amd64, booted under
              qemu-system-x86_64 with TCG (no KVM) and a busybox initramfs

What one run does, for a qemu kernel:

  1. finds the newest package (`apt-cache search`/`apt-cache policy`; runs
     `apt-get update` first if apt knows none), `apt-get download`s it into
     the cache and keeps only /boot/vmlinuz-* and /boot/config-* from it
     (cache: $MEMCKPT_CACHE, else ~/.cache/memckpt/kernels; reused next time,
     and used as a fallback when apt or the network is unavailable);
  2. builds, through CMake (-DMEMCKPT_C_TESTS=ON -DMEMCKPT_STATIC_TESTS=ON:
     the project's one build definition and its warnings), one tracker_test
     binary per backend (test_uffd_async ... test_compare; the backends are
     the names in csrc/track_*.c's ops tables), every csrc/tests/test_*.c,
     and csrc/tests/probe_report.c (prints the probed features, each
     backend's status and reason, and auto's pick as key=value lines);
  3. packs them with /bin/busybox (busybox-static) and an /init script into a
     gzip'd newc initramfs.  /init mounts proc, sysfs, devtmpfs, sets THP to
     "always" (Debian's default, which the kernel turns off below 512 MiB of
     RAM), prints `MCK-KERNEL <release>`, runs each binary under
     `timeout -s KILL` between `MCK-BEGIN <name>` and `MCK-RESULT <name>
     <exit code>`, prints `MCK-DONE` and powers off;
  4. boots it: qemu-system-x86_64 -accel tcg,thread=single -cpu max -m 512
     -smp 2 -nographic -no-reboot -nic none -kernel vmlinuz -initrd initrd.gz
     -append "console=ttyS0 quiet panic=-1", and reads the serial console
     (never KVM, which hangs here; --mttcg for multi-threaded TCG);
  5. reads the results: exit 0 = pass, 77 = skip (the binary prints why),
     anything else = fail (with the FAIL lines, the signal, or the timeout).

The host kernel runs step 2 and 5 only, and prints the same markers.

Exit status: 0 when nothing failed; 1 when a test failed, qemu timed out or
the guest never printed MCK-DONE; 2 when the matrix could not run (a missing
tool, a compile error, no kernel package to download).

Adding a kernel: add a KernelSpec to KERNELS below (a name, the apt package
regex, a description); see docs/kernel-matrix.md.

Importable: run_matrix(kernel="debian-6.1") returns a list of Result records
(tests/test_kernel_matrix.py uses it).
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

REPO = Path(__file__).resolve().parent.parent
PROBE = "probe_report"
KERNEL_ROW = "(kernel)"  # the per-kernel row: boot, timings, harness failures
SKIP_EXIT = 77
DEFAULT_TIMEOUT = 1200.0  # whole qemu run, host side: the guest slows with the host's load (181 s at load 4.5)
DEFAULT_TEST_TIMEOUT = 600.0  # one binary, inside the guest (TCG is ~10x slower: test_epoch_writer 70-77 s alone)
BUSYBOX = Path("/bin/busybox")
# applets /init uses; busybox is its own shell
BUSYBOX_APPLETS = ("sh", "mount", "uname", "timeout", "cat", "echo", "nproc",
                   "poweroff", "sync", "mkdir", "dmesg", "ls", "sleep", "grep")


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """A kernel of the matrix, fetched from apt and booted under qemu."""

    name: str
    #: regex over package names; group "abi" orders them (newest wins), and a
    #: name ending in "-unsigned" is taken only when its signed twin is missing
    package_re: str
    #: ERE for `apt-cache search --names-only`, a superset of package_re
    search: str
    description: str
    memory_mib: int = 512
    thp: str = "always"  # written to /sys/kernel/mm/transparent_hugepage/enabled


KERNELS: dict[str, KernelSpec] = {
    spec.name: spec
    for spec in (
        KernelSpec(
            name="debian-6.1",
            package_re=r"linux-image-6\.1\.0-(?P<abi>\d+)-amd64(?:-unsigned)?",
            search=r"^linux-image-6\.1\.0-[0-9]+-amd64",
            description="Debian 12's kernel: soft-dirty and sync uffd-wp, "
                        "no WP_ASYNC, no PAGEMAP_SCAN",
        ),
        KernelSpec(
            name="debian-6.12",
            package_re=r"linux-image-6\.12\.(?P<abi>\d+)\+deb12-amd64(?:-unsigned)?",
            search=r"^linux-image-6\.12\.[0-9]+\+deb12-amd64",
            description="bookworm's 6.12 (a security-updated LTS): soft-dirty, "
                        "WP_ASYNC and PAGEMAP_SCAN together",
        ),
    )
}
HOST = "host"
KERNEL_NAMES = (HOST, *KERNELS)


class MatrixError(Exception):
    """The matrix could not run at all (exit status 2)."""


class MissingPrerequisite(MatrixError):
    """A tool the matrix needs is not installed; the message says how to get it."""


class KernelUnavailable(MatrixError):
    """The kernel package could not be found or downloaded, and none is cached."""


class BuildError(MatrixError):
    """A test binary did not compile."""


@dataclasses.dataclass
class Result:
    """One row of the matrix: one binary on one kernel (or the kernel row)."""

    test: str
    kernel: str  # matrix name: "host", "debian-6.1"
    release: str  # uname -r where it ran
    status: str  # "pass" | "skip" | "fail"
    exit_code: int | None = None
    reason: list[str] = dataclasses.field(default_factory=list)
    output: list[str] = dataclasses.field(default_factory=list)
    seconds: float | None = None
    #: key=value lines the binary printed (probe_report), or facts about the
    #: kernel (the KERNEL_ROW row)
    values: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "fail"


@dataclasses.dataclass
class Binary:
    name: str
    path: Path


@dataclasses.dataclass
class Build:
    """The static binaries of one compile, reusable across kernels."""

    directory: Path
    binaries: list[Binary]


@dataclasses.dataclass
class KernelImage:
    spec: KernelSpec
    package: str
    version: str
    release: str
    vmlinuz: Path
    config: Path | None
    from_cache: bool
    note: str = ""


# ------------------------------------------------------------------ output

_log_verbose = False


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _debug(msg: str) -> None:
    if _log_verbose:
        _say(msg)


def ci_mode() -> bool:
    """True when $CI says this is a CI run (then a missing tool is a failure)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------- prerequisites

INSTALL_HINT = ("sudo apt-get install qemu-system-x86 busybox-static "
                "(and a C compiler with static libc: build-essential)")


def _is_static_elf(path: Path) -> bool:
    """True if path is an ELF executable without a PT_INTERP (no dynamic loader)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:  # ELF64, little-endian
                return False
            order: Literal["little"] = "little"
            phoff = int.from_bytes(head[32:40], order)
            phentsize = int.from_bytes(head[54:56], order)
            phnum = int.from_bytes(head[56:58], order)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        if int.from_bytes(table[i * phentsize:i * phentsize + 4], order) == 3:  # PT_INTERP
            return False
    return True


def missing_prerequisites(kernel: str) -> list[str]:
    """What is missing to run the matrix on `kernel`, each with how to install it."""
    missing = []
    cc = os.environ.get("CC", "cc")
    if not shutil.which(cc):
        missing.append(f"no C compiler `{cc}`: sudo apt-get install build-essential")
    if not shutil.which("cmake"):
        missing.append("no cmake: pip install cmake (or sudo apt-get install cmake)")
    if kernel == HOST:
        return missing
    if not shutil.which("qemu-system-x86_64"):
        missing.append("no qemu-system-x86_64: sudo apt-get install qemu-system-x86")
    if not BUSYBOX.exists():
        missing.append(f"no {BUSYBOX}: sudo apt-get install busybox-static")
    elif not _is_static_elf(BUSYBOX):
        missing.append(f"{BUSYBOX} is dynamically linked (package busybox): "
                       "sudo apt-get install busybox-static")
    return missing


def require_prerequisites(kernel: str) -> None:
    missing = missing_prerequisites(kernel)
    if missing:
        raise MissingPrerequisite("; ".join(missing))


# ------------------------------------------------------------ the kernel

def cache_dir() -> Path:
    """Where downloaded kernels live: $MEMCKPT_CACHE, else ~/.cache/memckpt/kernels."""
    env = os.environ.get("MEMCKPT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "memckpt" / "kernels"


def _run(cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    _debug("$ " + shlex.join(str(c) for c in cmd))
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


def _apt_packages(spec: KernelSpec) -> list[str]:
    if not shutil.which("apt-cache"):
        return []
    proc = _run(["apt-cache", "search", "--names-only", spec.search])
    if proc.returncode:
        return []
    names = (line.split(" - ", 1)[0].strip() for line in proc.stdout.splitlines())
    return [n for n in names if re.fullmatch(spec.package_re, n)]


def _apt_candidate(package: str) -> str | None:
    proc = _run(["apt-cache", "policy", package])
    m = re.search(r"^\s*Candidate:\s*(\S+)", proc.stdout, re.M)
    if proc.returncode or not m or m.group(1) == "(none)":
        return None
    return m.group(1)


def _abi(spec: KernelSpec, package: str) -> int:
    m = re.fullmatch(spec.package_re, package)
    return int(m.group("abi")) if m else -1


def resolve_package(spec: KernelSpec) -> tuple[str, str]:
    """The newest (package, version) apt offers for spec; KernelUnavailable if none.

    Runs `apt-get update` once when apt's lists know no such package (root only).
    """
    if not shutil.which("apt-cache"):
        raise KernelUnavailable("apt-cache not found: the kernel comes from Debian's archive")
    names = _apt_packages(spec)
    if not names:
        if os.geteuid() != 0:
            raise KernelUnavailable(
                f"apt knows no package matching {spec.package_re}: run `sudo apt-get update`")
        _say("apt knows no matching kernel package; running apt-get update ...")
        proc = _run(["apt-get", "update", "-q"])
        if proc.returncode:
            raise KernelUnavailable("apt-get update failed:\n" + (proc.stderr or proc.stdout)[-2000:])
        names = _apt_packages(spec)
        if not names:
            raise KernelUnavailable(
                f"no package matching {spec.package_re} in apt's sources "
                "(Debian 12 'bookworm' main has them)")
    # newest ABI first; within one ABI the signed package before -unsigned
    names.sort(key=lambda n: (_abi(spec, n), not n.endswith("-unsigned")), reverse=True)
    for name in names:
        version = _apt_candidate(name)
        if version:
            return name, version
    raise KernelUnavailable(f"apt lists {', '.join(names[:3])} but offers no candidate version")


def _cached_images(spec: KernelSpec) -> list[KernelImage]:
    found: list[KernelImage] = []
    root = cache_dir()
    if not root.is_dir():
        return found
    for meta_path in root.glob("*/kernel.json"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("spec") != spec.name or not (meta_path.parent / "vmlinuz").exists():
            continue
        config = meta_path.parent / "config"
        found.append(KernelImage(spec, meta["package"], meta["version"], meta["release"],
                                 meta_path.parent / "vmlinuz",
                                 config if config.exists() else None, True))
    found.sort(key=lambda k: (_abi(spec, k.package), k.version), reverse=True)
    return found


def _safe_dirname(package: str, version: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", f"{package}_{version}")


def _download(spec: KernelSpec, package: str, version: str, dest: Path) -> KernelImage:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        tmpdir = Path(tmp)
        _say(f"downloading {package} {version} (about 70 MB) ...")
        proc = _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=tmpdir)
        debs = list(tmpdir.glob("*.deb"))
        if proc.returncode or not debs:
            raise KernelUnavailable(f"`apt-get download {package}={version}` failed:\n"
                                    + (proc.stderr or proc.stdout).strip()[-2000:])
        deb = debs[0]
        sha256 = hashlib.sha256(deb.read_bytes()).hexdigest()
        out = tmpdir / "image"
        out.mkdir()
        release = _extract_boot_files(deb, out)
        deb.unlink()
        meta = {"spec": spec.name, "package": package, "version": version,
                "release": release, "deb_sha256": sha256,
                "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (out / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
        if dest.exists():  # a concurrent run won the race: keep its copy
            shutil.rmtree(out)
        else:
            os.replace(out, dest)
    return KernelImage(spec, package, version, release, dest / "vmlinuz",
                       dest / "config" if (dest / "config").exists() else None, False)


def _extract_boot_files(deb: Path, out: Path) -> str:
    """Copy ./boot/vmlinuz-* (and config-*) of a kernel .deb to out/; return the release.

    Streams `dpkg-deb --fsys-tarfile` instead of `dpkg-deb -x`, which would
    also write the ~400 MB of modules the initramfs does not need.
    """
    if not shutil.which("dpkg-deb"):
        raise KernelUnavailable("dpkg-deb not found (package dpkg)")
    release = None
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            m = re.fullmatch(r"\./boot/(vmlinuz|config)-(.+)", member.name)
            if not m or not member.isfile():
                continue
            data = tar.extractfile(member)
            assert data is not None
            (out / m.group(1)).write_bytes(data.read())
            if m.group(1) == "vmlinuz":
                release = m.group(2)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.wait() != 0:
        raise KernelUnavailable(f"dpkg-deb --fsys-tarfile {deb.name} failed: {err.strip()}")
    if not release:
        raise KernelUnavailable(f"{deb.name} has no /boot/vmlinuz-*")
    return release


_fetched: dict[str, KernelImage] = {}


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def fetch_kernel(spec: KernelSpec) -> KernelImage:
    """The newest kernel package of spec, downloaded once into cache_dir().

    Without apt or network, falls back to the newest kernel already cached.
    Asks apt once per process.
    """
    if spec.name not in _fetched:
        _fetched[spec.name] = _fetch_kernel(spec)
    return _fetched[spec.name]


def _fetch_kernel(spec: KernelSpec) -> KernelImage:
    cached = _cached_images(spec)
    try:
        package, version = resolve_package(spec)
    except KernelUnavailable as e:
        if cached:
            cached[0].note = f"apt could not say what is newest ({_one_line(e)}); using the cache"
            return cached[0]
        raise
    for image in cached:
        if (image.package, image.version) == (package, version):
            return image
    try:
        return _download(spec, package, version, cache_dir() / _safe_dirname(package, version))
    except KernelUnavailable as e:
        if cached:
            cached[0].note = (f"{package} {version} could not be downloaded "
                              f"({_one_line(e)}); using the older cached kernel")
            return cached[0]
        raise


# ------------------------------------------------------------- building

#: a backend's name in its ops table (csrc/track_*.c): the one place that
#: names the backends. CMakeLists.txt finds them by the same rule, and
#: tests/test_c_core.py checks that rule against the C table.
_BACKEND_NAME = re.compile(r'^[ \t]*\.name = "([a-z0-9-]+)",', re.M)


def backend_names() -> tuple[str, ...]:
    """The backends, read from the C sources (no build, no Python binding)."""
    names: list[str] = []
    for src in sorted((REPO / "csrc").glob("track_*.c")):
        names += _BACKEND_NAME.findall(src.read_text())
    return tuple(names)


BACKENDS = backend_names()


def binary_names() -> list[str]:
    """The binaries build_tests() makes, in the order they run, without compiling
    (the order CMakeLists.txt writes to c-tests.txt)."""
    return ([PROBE] + ["test_" + b.replace("-", "_") for b in BACKENDS]
            + sorted(p.stem for p in (REPO / "csrc" / "tests").glob("test_*.c")))


def build_tests(outdir: Path | str, only: Sequence[str] = ()) -> Build:
    """Build the test binaries statically with CMake (the project's one build
    definition, its warnings included) under outdir/cmake.

    only: fnmatch patterns; when given, just the binaries whose names match
    (probe_report always comes along)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    names = binary_names()
    if only:
        if not any(fnmatch.fnmatch(n, p) for n in names for p in only):
            raise MatrixError(f"no test binary matches {', '.join(only)}; "
                              f"there are: {', '.join(names)}")
        names = [n for n in names if n == PROBE or any(fnmatch.fnmatch(n, p) for p in only)]
    cmake = shutil.which("cmake")
    if cmake is None:
        raise MissingPrerequisite("no cmake: pip install cmake (or sudo apt-get install cmake)")
    build = outdir / "cmake"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    t0 = time.monotonic()
    # Release: no sanitizer, no debug info to carry into the initramfs
    proc = _run([cmake, "-S", str(REPO), "-B", str(build), *gen, "-DMEMCKPT_C_TESTS=ON",
                 "-DMEMCKPT_STATIC_TESTS=ON", "-DMEMCKPT_SANITIZE=OFF",
                 "-DCMAKE_BUILD_TYPE=Release"])
    if proc.returncode:
        raise BuildError(f"cmake configure failed:\n{(proc.stdout + proc.stderr).strip()[-4000:]}")
    built = (build / "c-tests.txt").read_text().split()
    if sorted(built) != sorted(binary_names()):
        raise BuildError(f"CMake makes {built}, the matrix expects {binary_names()}: "
                         "CMakeLists.txt and binary_names() disagree")
    proc = _run([cmake, "--build", str(build), "-j", str(os.cpu_count() or 2),
                 "--target", *names])
    if proc.returncode:
        raise BuildError(f"cmake --build failed:\n{(proc.stdout + proc.stderr).strip()[-4000:]}")
    binaries = [Binary(name, build / name) for name in names]
    dynamic = [b.name for b in binaries if not _is_static_elf(b.path)]
    if dynamic:
        raise BuildError(f"not statically linked: {', '.join(dynamic)} "
                         "(is a static libc installed? build-essential has it)")
    _say(f"built {len(binaries)} static binaries in {time.monotonic() - t0:.1f} s")
    return Build(outdir, binaries)


# ------------------------------------------------------------ initramfs

def _newc(entries: Iterable[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A cpio archive in the kernel's "newc" format (no cpio(1), no root needed
    for the device node). entries: (name, mode, data, (rdev major, minor))."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, (rmaj, rmin)) in enumerate(
            [*entries, ("TRAILER!!!", 0, b"", (0, 0))], start=1):
        namez = name.encode() + b"\0"
        nlink = 2 if (mode & 0o170000) == 0o040000 else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(namez), 0)
        out.extend(b"070701" + "".join(f"{v:08x}" for v in fields).encode() + namez)
        pad()
        out.extend(data)
        pad()
    return bytes(out)


INIT_TEMPLATE = r"""#!/bin/sh
# /init of the kernel-matrix initramfs, written by scripts/kernel_matrix.py
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
{thp}
echo "MCK-KERNEL $(uname -r)"
echo "MCK-INFO nproc=$(nproc)"
echo "MCK-INFO thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled)"
cd /tmp
for t in {tests}; do
    echo "MCK-BEGIN $t"
    timeout -s KILL {timeout} /tests/$t {args}2>&1
    echo "MCK-RESULT $t $?"
done
sync
echo "MCK-DONE"
poweroff -f
"""


def write_initramfs(path: Path, binaries: Sequence[Binary], test_timeout: float,
                    thp: str | None = "always", seed: int | None = None) -> Path:
    """An initramfs.gz with busybox, the binaries under /tests and /init."""
    thp_line = ""
    if thp:
        thp_line = (f"echo {thp} > /sys/kernel/mm/transparent_hugepage/enabled "
                    "2>/dev/null || echo 'MCK-INFO could not set THP'")
    init = INIT_TEMPLATE.format(tests=" ".join(b.name for b in binaries),
                                timeout=max(1, int(round(test_timeout))), thp=thp_line,
                                args="" if seed is None else f"{int(seed)} ")
    d, x, r = 0o040755, 0o100755, 0o100644
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        (name, d, b"", (0, 0)) for name in ("bin", "dev", "proc", "sys", "tmp", "tests")]
    entries.append(("dev/console", 0o020600, b"", (5, 1)))
    entries.append(("bin/busybox", x, BUSYBOX.read_bytes(), (0, 0)))
    entries += [(f"bin/{a}", 0o120777, b"busybox", (0, 0)) for a in BUSYBOX_APPLETS]
    entries += [(f"tests/{b.name}", x, b.path.read_bytes(), (0, 0)) for b in binaries]
    entries.append(("init", x, init.encode(), (0, 0)))
    entries.append(("README", r, b"kernel-matrix initramfs: see /init\n", (0, 0)))
    path.write_bytes(gzip.compress(_newc(entries), compresslevel=6, mtime=0))
    return path


# ------------------------------------------------------------- running

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_]|c)")

Line = tuple[float, str]  # (seconds since start, text)


def qemu_command(image: KernelImage, initrd: Path, smp: int, mttcg: bool = False) -> list[str]:
    """The qemu command line. Single-threaded TCG by default: it still gives the
    guest `smp` CPUs (SMP kernel paths, IPIs, threads on different CPUs), and is
    ~15x faster than multi-threaded TCG for uffd-sync, whose every fault
    crosses CPUs (a TLB flush under MTTCG stops all vCPUs)."""
    accel = "tcg,thread=multi" if mttcg else "tcg,thread=single"
    return ["qemu-system-x86_64", "-accel", accel, "-cpu", "max",
            "-m", str(image.spec.memory_mib), "-smp", str(smp),
            "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", str(image.vmlinuz), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet panic=-1"]


@dataclasses.dataclass
class Transcript:
    lines: list[Line]
    seconds: float
    timed_out: bool = False
    exit_code: int | None = None
    problem: str = ""  # why the run itself failed, if it did


def boot(cmd: Sequence[str], timeout: float, on_line: Callable[[str], None] | None = None,
         log: Path | None = None) -> Transcript:
    """Run qemu, return its console; kill it at timeout, or shortly after MCK-DONE."""
    _debug("$ " + shlex.join(cmd))
    t0 = time.monotonic()
    lines: list[Line] = []
    done = threading.Event()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    logf = open(log, "w", encoding="utf-8") if log else None

    def reader() -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            decoded = _ANSI.sub("", raw.decode("utf-8", "replace"))
            # a bare CR returns the carriage: what follows is a new line
            for text in decoded.replace("\r\n", "\n").rstrip("\n").split("\r"):
                lines.append((time.monotonic() - t0, text))
                if logf:
                    logf.write(text + "\n")
                    logf.flush()
                if on_line:
                    on_line(text)
                if re.search(r"MCK-DONE\s*$", text):
                    done.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    timed_out = False
    done_at = None
    while proc.poll() is None:
        now = time.monotonic()
        if done.is_set():
            done_at = done_at or now
            if now - done_at > 15:  # poweroff -f did not stop qemu: results are in
                proc.kill()
                break
        elif now - t0 > timeout:
            timed_out = True
            proc.kill()
            break
        time.sleep(0.1)
    proc.wait()
    thread.join(timeout=5)
    if logf:
        logf.close()
    return Transcript(lines, time.monotonic() - t0, timed_out, proc.returncode)


def run_on_host(binaries: Sequence[Binary], test_timeout: float,
                on_line: Callable[[str], None] | None = None,
                seed: int | None = None) -> Transcript:
    """Run the binaries here, and write the transcript /init would have written."""
    t0 = time.monotonic()
    lines: list[Line] = []

    def emit(text: str) -> None:
        lines.append((time.monotonic() - t0, text))
        if on_line:
            on_line(text)

    emit(f"MCK-KERNEL {os.uname().release}")
    emit(f"MCK-INFO nproc={os.cpu_count()}")
    try:
        emit("MCK-INFO thp=" + Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip())
    except OSError:
        pass
    with tempfile.TemporaryDirectory(prefix="mck-host-") as cwd:
        for b in binaries:
            emit(f"MCK-BEGIN {b.name}")
            try:
                argv = [str(b.path)] + ([] if seed is None else [str(int(seed))])
                proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      timeout=test_timeout)
                out, rc = proc.stdout, proc.returncode
            except subprocess.TimeoutExpired as e:
                out, rc = e.stdout or b"", -signal.SIGKILL
            for text in out.decode("utf-8", "replace").splitlines():
                emit(text)
            emit(f"MCK-RESULT {b.name} {128 - rc if rc < 0 else rc}")  # as a shell reports it
    emit("MCK-DONE")
    return Transcript(lines, time.monotonic() - t0, exit_code=0)


# -------------------------------------------------------------- parsing

# anywhere in a line: the console may glue a marker to what came before it
_MARKER = re.compile(r"MCK-(KERNEL|INFO|BEGIN|RESULT|DONE)\b(.*)$")
_KERNEL_MSG = re.compile(r"^\[\s*\d+\.\d+\]\s")
_KERNEL_TROUBLE = re.compile(r"BUG:|WARNING:|Oops|general protection|Kernel panic|"
                             r"Call Trace|segfault|Out of memory|hung_task|soft lockup")


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def parse_transcript(tr: Transcript, kernel: str, expected: Sequence[str],
                     test_timeout: float, facts: dict[str, str] | None = None) -> list[Result]:
    """Turn a console transcript into one Result per expected binary, plus the
    KERNEL_ROW row, which fails if the run itself went wrong."""
    release = ""
    info: dict[str, str] = dict(facts or {})
    results: dict[str, Result] = {}
    current: Result | None = None
    began = 0.0
    seen_done = False
    kernel_trouble: list[str] = []
    for stamp, text in tr.lines:
        m = _MARKER.search(text)
        if m and m.start() and current:
            # a test's last line without its newline, or console noise
            current.output.append(text[:m.start()])
        if not m:
            s = text.strip()
            if _KERNEL_MSG.match(s) and _KERNEL_TROUBLE.search(s):
                kernel_trouble.append(s)
                if current:
                    current.reason.append("kernel said: " + s)
            if current:
                current.output.append(text)
            continue
        what, rest = m.group(1), m.group(2).strip()
        if what == "KERNEL":
            release = rest
        elif what == "INFO":
            key, _, value = rest.partition("=")
            info[key.strip()] = value.strip()
        elif what == "BEGIN":
            current = Result(rest, kernel, release, "fail")
            results[current.test] = current
            began = stamp
        elif what == "RESULT":
            name, _, code = rest.partition(" ")
            r = results.setdefault(name, Result(name, kernel, release, "fail"))
            try:
                r.exit_code = int(code)
            except ValueError:
                r.reason.append(f"unreadable MCK-RESULT line: {text!r}")
            r.seconds = stamp - began
            current = None
        elif what == "DONE":
            seen_done = True
            current = None

    rows = []
    for name in expected:
        got = results.get(name)
        if got is None:
            rows.append(Result(name, kernel, release, "fail",
                               reason=["never ran: the guest stopped before it"]))
            continue
        _classify(got, test_timeout)
        rows.append(got)

    # the kernel row, first in the table
    row = Result(KERNEL_ROW, kernel, release, "pass", seconds=tr.seconds, values=info)
    problems = []
    if tr.problem:
        problems.append(tr.problem)
    if tr.timed_out:
        problems.append(f"timed out after {tr.seconds:.0f} s (raise --timeout?)")
    if not seen_done:
        problems.append("no MCK-DONE on the console: the run did not finish"
                        + (f" (qemu exit status {tr.exit_code})" if tr.exit_code is not None else ""))
    if not release:
        problems.append("no MCK-KERNEL line: /init never ran")
    if problems:
        row.status = "fail"
        row.reason = problems + kernel_trouble[:20]
        tail = [t for _, t in tr.lines[-12:]]
        row.output = tail
        row.reason += ["last console lines:"] + ["  " + t for t in tail]
    else:
        row.reason = [f"{k}={v}" for k, v in info.items()] + kernel_trouble[:20]
    return [row] + rows


def _classify(r: Result, test_timeout: float) -> None:
    for line in r.output:
        key, eq, value = line.partition("=")
        if eq and re.fullmatch(r"[A-Za-z_][\w.\-]*", key):
            r.values[key] = value
    rc = r.exit_code
    if rc is None:
        r.status = "fail"
        r.reason.insert(0, "no MCK-RESULT: the run stopped during this test")
    elif rc == 0:
        r.status = "pass"
    elif rc == SKIP_EXIT:
        r.status = "skip"
        why = [line.strip() for line in r.output if line.lstrip().startswith("SKIP")]
        r.reason = why or ["exit 77 without a SKIP line"] + r.output[-3:]
        if not why:
            r.status = "fail"  # a skip must say why
    else:
        r.status = "fail"
        head = f"exit status {rc}"
        if rc > 128:
            head = f"killed by {_signal_name(rc - 128)}"
            if rc - 128 == signal.SIGKILL and r.seconds is not None \
                    and r.seconds >= test_timeout - 1:
                head = f"timed out after {test_timeout:.0f} s (--test-timeout)"
        fails = [line.strip() for line in r.output if line.lstrip().startswith("FAIL")]
        r.reason = [head] + (fails or [f"last output: {t}" for t in r.output[-5:]]) + r.reason
        seed = next((m.group(1) for line in r.output
                     if (m := re.search(r"\bseed (\d+)", line))), None)
        if seed:
            r.reason.append(f"replay: python scripts/kernel_matrix.py --kernel {r.kernel} "
                            f"--test {r.test} --seed {seed}")
    if r.test == PROBE and r.status == "pass":
        v = r.values
        r.reason = [f"auto={v.get('auto', '?')}",
                    f"uffd_features={v.get('uffd_features', '?')} wp={v.get('uffd_wp', '?')} "
                    f"wp_async={v.get('uffd_wp_async', '?')} "
                    f"pagemap_scan={v.get('pagemap_scan', '?')} soft_dirty={v.get('soft_dirty', '?')}"]


# ------------------------------------------------------------ the matrix

def run_matrix(kernel: str = "debian-6.1", *, build: Build | None = None,
               timeout: float = DEFAULT_TIMEOUT, test_timeout: float = DEFAULT_TEST_TIMEOUT,
               smp: int = 2, workdir: Path | str | None = None, verbose: bool = False,
               on_line: Callable[[str], None] | None = None,
               seed: int | None = None, mttcg: bool = False) -> list[Result]:
    """Run every test binary on one kernel ("host" or a KERNELS name).

    Returns the KERNEL_ROW record, then one record per binary (probe_report
    first).  A failure of the run itself (qemu timeout, no MCK-DONE) is a
    failed KERNEL_ROW record, not an exception; MatrixError (and its
    subclasses MissingPrerequisite, KernelUnavailable, BuildError) means the
    matrix could not run at all.

    build: binaries from build_tests(), to compile once for several kernels.
    workdir: where to put the binaries, initrd.gz and console.log (kept);
    default: a temporary directory, removed afterwards.
    seed: passed to every binary as its argument (replays a failing seed).
    mttcg: multi-threaded TCG (vCPUs really in parallel; much slower here).
    """
    global _log_verbose
    _log_verbose = _log_verbose or verbose
    if kernel != HOST and kernel not in KERNELS:
        raise MatrixError(f"unknown kernel {kernel!r}; known: {', '.join(KERNEL_NAMES)}")
    require_prerequisites(kernel)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="mck-matrix-") as tmp:
            return run_matrix(kernel, build=build, timeout=timeout, test_timeout=test_timeout,
                              smp=smp, workdir=tmp, verbose=verbose, on_line=on_line,
                              seed=seed, mttcg=mttcg)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    image = None
    if kernel != HOST:
        image = fetch_kernel(KERNELS[kernel])  # before compiling: no network, no work
    if build is None:
        build = build_tests(work / "bin")
    names = [b.name for b in build.binaries]
    if on_line is None:
        on_line = _progress_printer(verbose)

    if image is None:
        _say(f"running {len(names)} binaries on the host kernel {os.uname().release} ...")
        tr = run_on_host(build.binaries, test_timeout, on_line, seed)
        return parse_transcript(tr, kernel, names, test_timeout, {"how": "directly on this machine"})

    spec = image.spec
    if image.note:
        _say("note: " + image.note)
    initrd = write_initramfs(work / f"initrd-{kernel}.gz", build.binaries, test_timeout, spec.thp,
                             seed)
    cmd = qemu_command(image, initrd, smp, mttcg)
    (work / f"boot-{kernel}.sh").write_text("#!/bin/sh\n# boots the matrix guest by hand\nexec "
                                            + shlex.join(cmd) + "\n")
    _say(f"booting {image.package} {image.version} ({image.release}) under qemu TCG, "
         f"-smp {smp}{' (multi-threaded)' if mttcg else ''}, {len(names)} binaries ...")
    tr = boot(cmd, timeout, on_line, log=work / f"console-{kernel}.log")
    facts = {"package": f"{image.package} {image.version}",
             "how": f"qemu {cmd[2]} -smp {smp} -m {spec.memory_mib}"
                    + (" (cached kernel)" if image.from_cache else "")}
    return parse_transcript(tr, kernel, names, test_timeout, facts)


def _progress_printer(verbose: bool) -> Callable[[str], None]:
    def show(text: str) -> None:
        if verbose:
            _say("  | " + text)
            return
        m = re.search(r"MCK-RESULT (\S+) (-?\d+)\s*$", text)
        if m:
            rc = int(m.group(2))
            word = "pass" if rc == 0 else "skip" if rc == SKIP_EXIT else f"FAIL (exit {rc})"
            _say(f"  {m.group(1)}: {word}")
    return show


def format_table(results: Sequence[Result]) -> str:
    """One table for any number of kernels: test, kernel, result, seconds, reason."""
    head = ("test", "kernel", "result", "seconds", "reason")
    rows = []
    for r in results:
        secs = f"{r.seconds:.1f}" if r.seconds is not None else "-"
        kernel = f"{r.kernel} {r.release}".strip()
        status = {"skip": "skip(77)"}.get(r.status, r.status)
        reasons = r.reason or [""]
        rows.append((r.test, kernel, status, secs, reasons[0]))
        rows += [("", "", "", "", line) for line in reasons[1:]]
    widths = [max(len(head[i]), *(len(row[i]) for row in rows)) if rows else len(head[i])
              for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head[:4], widths)) + "  " + head[4]]
    lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    for row in rows:
        lines.append(("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4]).rstrip())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    global _log_verbose
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="kernel_matrix.py",
        description=doc.split("\n\n", 1)[1] if "\n\n" in doc else doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python scripts/kernel_matrix.py                      # host and debian-6.1\n"
               "  python scripts/kernel_matrix.py --kernel debian-6.1  # only the qemu guest\n"
               "  python scripts/kernel_matrix.py --host               # only this machine, seconds\n"
               "  python scripts/kernel_matrix.py --kernel debian-6.1 --keep -v   # debug a guest run\n"
               "  pytest -m qemu tests/test_kernel_matrix.py          # the same, as tests\n"
               "\nenvironment: MEMCKPT_CACHE (kernel cache dir), CC (compiler, default cc)")
    parser.add_argument("--kernel", action="append", choices=KERNEL_NAMES, metavar="NAME",
                        help=f"a kernel to run on, repeatable: {', '.join(KERNEL_NAMES)} "
                             "(default: all of them)")
    parser.add_argument("--host", action="store_true",
                        help="run on the host kernel (same as --kernel host); "
                             "with --kernel, in addition to it")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (binaries, initrd, console log, "
                             "a boot-*.sh to boot the guest by hand) and print its path")
    parser.add_argument("--workdir", type=Path,
                        help="use this work directory (implies --keep)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show commands, compiler warnings and the live console")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds for a whole qemu run (default %(default)s)")
    parser.add_argument("--test-timeout", type=float, default=DEFAULT_TEST_TIMEOUT,
                        help="seconds for one binary (default %(default)s)")
    parser.add_argument("--test", action="append", metavar="PATTERN", dest="only",
                        help="run only the binaries matching this glob, repeatable "
                             "(e.g. --test 'test_uffd*'); probe_report always runs")
    parser.add_argument("--seed", type=int,
                        help="pass this seed to every test binary (replays a failure; "
                             "the binaries print their seed on their first line)")
    parser.add_argument("--smp", type=int, default=2, help="guest CPUs (default %(default)s)")
    parser.add_argument("--mttcg", action="store_true",
                        help="multi-threaded TCG: the guest's CPUs run truly in parallel, "
                             "but cross-CPU TLB flushes stop every vCPU, so uffd-sync "
                             "runs ~15x slower (raise --test-timeout)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the records as JSON to FILE")
    args = parser.parse_args(argv)
    _log_verbose = args.verbose

    kernels = list(dict.fromkeys((args.kernel or []) + ([HOST] if args.host else [])))
    if not kernels:
        kernels = list(KERNEL_NAMES)
    keep = args.keep or args.workdir is not None
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mck-matrix-"))
    t0 = time.monotonic()
    results: list[Result] = []
    try:
        for k in kernels:
            require_prerequisites(k)
        for k in kernels:  # fetch first: without the kernel there is nothing to build for
            if k != HOST:
                fetch_kernel(KERNELS[k])
        build = build_tests(work / "bin", args.only or ())
        for k in kernels:
            results += run_matrix(k, build=build, workdir=work, timeout=args.timeout,
                                  test_timeout=args.test_timeout, smp=args.smp,
                                  verbose=args.verbose, seed=args.seed, mttcg=args.mttcg)
    except MatrixError as e:
        _say(f"kernel_matrix: {type(e).__name__}: {e}")
        return 2
    finally:
        if keep:
            _say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(format_table(results))
    failed = [r for r in results if not r.ok]
    print(f"\n{len(results)} rows on {len(kernels)} kernel(s) in {time.monotonic() - t0:.1f} s: "
          f"{sum(r.status == 'pass' for r in results)} pass, "
          f"{sum(r.status == 'skip' for r in results)} skip, {len(failed)} fail")
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
