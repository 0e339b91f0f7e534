"""What the kernel offers, probed once per process, and which trackers work."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from functools import lru_cache

from . import _core

_THP = {-1: "unknown", 0: "never", 1: "madvise", 2: "always"}


@dataclass(frozen=True)
class Features:
    """The kernel's memory-tracking features, as probed in this process.

    Each ``*_reason`` is empty when the feature works, and otherwise says why
    not (and, where one exists, what would fix it).
    """

    kernel_release: str
    page_size: int
    thp_mode: str
    uffd: bool
    uffd_reason: str
    uffd_user_mode_only: bool
    unprivileged_userfaultfd: int | None
    uffd_features: int
    uffd_wp: bool
    uffd_wp_async: bool
    uffd_wp_unpopulated: bool
    pagemap_scan: bool
    pagemap_scan_reason: str
    soft_dirty: bool
    soft_dirty_reason: str


@dataclass(frozen=True)
class TrackerInfo:
    """One dirty-tracking backend: whether it works here, and why (not)."""

    name: str
    available: bool
    reason: str
    exact: bool
    kernel_writes: bool = True
    concurrent: bool = True


def _uffd_reason(f: dict) -> str:
    if f["uffd"] == _core.PROBE_OK:
        if f["uffd_user_mode_only"]:
            return ("only with UFFD_USER_MODE_ONLY (vm.unprivileged_userfaultfd=0 and no "
                    "CAP_SYS_PTRACE): faults the kernel raises on our behalf are not handled")
        return ""
    err = f["uffd_errno"]
    msg = f"userfaultfd() failed: {os.strerror(err)} ({errno.errorcode.get(err, err)})"
    if err == errno.EPERM:
        msg += "; allow it with `sysctl vm.unprivileged_userfaultfd=1` or run with CAP_SYS_PTRACE"
    elif err == errno.ENOSYS:
        msg += "; the kernel was built without CONFIG_USERFAULTFD"
    return msg


def _soft_dirty_reason(f: dict) -> str:
    if f["soft_dirty"] == _core.PROBE_OK:
        return ""
    err = f["soft_dirty_errno"]
    if err == errno.ENOTSUP:
        return ("kernel built without CONFIG_MEM_SOFT_DIRTY: /proc/self/clear_refs accepted '4' "
                "but a page written after it never showed pagemap bit 55")
    return f"/proc/self/clear_refs or pagemap unusable: {os.strerror(err)}"


@lru_cache(maxsize=None)
def features() -> Features:
    """The kernel's features, probed once per process (the result is cached)."""
    f = _core.probe()
    scan_reason = ""
    if f["pagemap_scan"] != _core.PROBE_OK:
        scan_reason = (f"PAGEMAP_SCAN ioctl refused: {os.strerror(f['pagemap_scan_errno'])} "
                       "(needs Linux >= 6.7)")
    return Features(
        kernel_release=os.uname().release,
        page_size=f["page_size"],
        thp_mode=_THP.get(f["thp_mode"], "unknown"),
        uffd=f["uffd"] == _core.PROBE_OK,
        uffd_reason=_uffd_reason(f),
        uffd_user_mode_only=bool(f["uffd_user_mode_only"]),
        unprivileged_userfaultfd=(None if f["unprivileged_userfaultfd"] < 0
                                  else f["unprivileged_userfaultfd"]),
        uffd_features=f["uffd_features"],
        uffd_wp=f["uffd_wp"] == _core.PROBE_OK,
        uffd_wp_async=f["uffd_wp_async"] == _core.PROBE_OK,
        uffd_wp_unpopulated=f["uffd_wp_unpopulated"] == _core.PROBE_OK,
        pagemap_scan=f["pagemap_scan"] == _core.PROBE_OK,
        pagemap_scan_reason=scan_reason,
        soft_dirty=f["soft_dirty"] == _core.PROBE_OK,
        soft_dirty_reason=_soft_dirty_reason(f),
    )


def tracker_info(backend: int) -> TrackerInfo:
    available, reason = _core.backend_status(backend)
    props = _core.backend_props(backend)
    name = _core.backend_names()[backend]
    kernel_writes = bool(props & _core.PROP_KERNEL_WRITES)
    # -- unprivileged uffd-sync (reliability) ---------------------------------
    # On a UFFD_USER_MODE_ONLY fd (what a process without CAP_SYS_PTRACE gets
    # with vm.unprivileged_userfaultfd=0) the kernel does not wait for the
    # handler on its own writes: read(2) into a protected page fails with
    # EFAULT (the backend's reason says so). The C props are per backend, not
    # per fd, so say it here: Checkpointer.rollback then reads into scratch.
    if name == "uffd-sync" and features().uffd_user_mode_only:
        kernel_writes = False
    return TrackerInfo(
        name=name,
        available=available,
        reason=reason,
        exact=bool(props & _core.PROP_EXACT),
        kernel_writes=kernel_writes,
        concurrent=bool(props & _core.PROP_CONCURRENT),
    )


def trackers() -> list[TrackerInfo]:
    """Every dirty-tracking backend, in the order ``auto`` prefers them."""
    return [tracker_info(b) for b in range(_core.BACKEND_COUNT)]


def backend_names() -> list[str]:
    return list(_core.backend_names())
