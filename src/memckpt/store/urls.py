"""Store URLs: which schemes memckpt opens, and a clear error for the rest.

A store is named by a local path, a ``file://`` URL (the same local
directory) or an ``s3://bucket/prefix`` URL (store/s3.py). Anything else
that looks like a URL (``scheme://...``) is refused, naming the scheme: a
string such as ``gs://bucket/run`` must never become a local directory
``./gs:/bucket/run``."""
from __future__ import annotations

import os
import re
from typing import Any

from ..errors import MemckptError

__all__ = ["SCHEMES", "UnsupportedURL", "local_path", "split_url"]

SCHEMES = ("file", "s3")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)


class UnsupportedURL(MemckptError, ValueError):
    """A store named by a URL whose scheme memckpt cannot open."""


def split_url(spec: Any) -> tuple[str, str] | None:
    """(scheme, rest) if ``spec`` is a string (or path) that looks like a URL, else None."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        return None
    m = _URL.match(spec)
    if m is None:
        return None
    return m.group(1).lower(), m.group(2)


def _refuse(spec: str, scheme: str) -> UnsupportedURL:
    return UnsupportedURL(
        f"store {spec!r}: memckpt cannot open {scheme}:// URLs; a store is a local "
        f"directory (a path or file:///path) or an S3 bucket (s3://bucket/prefix)")


def local_path(spec: Any) -> Any:
    """``spec`` as a local path for memckpt.Store: a file:// URL becomes its
    path; an s3:// URL is refused with the way to open it, any other URL
    with the schemes memckpt knows. Anything else is returned as it is."""
    parts = split_url(spec)
    if parts is None:
        return spec
    scheme, rest = parts
    if scheme == "file":
        if not rest.startswith("/"):
            raise UnsupportedURL(f"store {spec!r}: a file:// URL needs an absolute path "
                                 f"(file:///dir/store)")
        return rest
    if scheme == "s3":
        raise UnsupportedURL(f"store {spec!r} is in S3: open it with memckpt.open_store(url, "
                             f"storage_options=...) (memckpt.Store is a local directory)")
    raise _refuse(os.fspath(spec), scheme)
