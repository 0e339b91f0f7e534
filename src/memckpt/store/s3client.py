"""The few S3 requests the object-store backend makes, over boto3: whole and
ranged GETs, PUTs that may refuse to overwrite (If-None-Match: "*"), a
listing, deletes. Every request's bytes are counted (``sent``, ``received``)
so that the cost of an epoch can be measured, and every failure becomes an
error naming the object's URL."""
from __future__ import annotations

import errno
import threading
from typing import Any, BinaryIO, List

from ..errors import CorruptionError, MemckptError

# options of storage_options that are memckpt's own, not the client's
_OWN = ("max_workers", "part_size")


class ObjectExists(MemckptError):
    """A conditional PUT found the object there already (HTTP 412)."""


def _client(options: dict[str, Any]) -> Any:
    try:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - the s3 extra is missing
        raise MemckptError("s3:// stores need boto3: pip install 'memckpt[s3]'") from None
    opts = {k: v for k, v in options.items() if k not in _OWN}
    workers = int(options.get("max_workers", 16))
    cfg = opts.pop("config", None)
    pool = Config(max_pool_connections=max(10, workers + 4), retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client("s3", config=pool if cfg is None else pool.merge(cfg), **opts)


class Bucket:
    """A bucket and a key prefix (``run/`` or empty) with one boto3 client (thread-safe)."""

    def __init__(self, bucket: str, prefix: str, options: dict[str, Any] | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.options = dict(options or {})
        self.client = _client(self.options)
        self.max_workers = int(self.options.get("max_workers", 16))
        # the largest ranged GET: a long run is fetched in parallel pieces of this size
        self.part_size = int(self.options.get("part_size", 8 << 20))
        if self.max_workers < 1 or self.part_size < 4096:
            raise ValueError(f"storage_options: max_workers must be >= 1 and part_size >= 4096, "
                             f"not {self.max_workers} and {self.part_size}")
        self._count = threading.Lock()
        self.sent = 0       # bytes of object bodies PUT
        self.received = 0   # bytes of object bodies GET
        self.requests = 0

    def url(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def _add(self, sent: int = 0, received: int = 0) -> None:
        with self._count:
            self.sent += sent
            self.received += received
            self.requests += 1

    def _error(self, exc: Exception, name: str, what: str) -> Exception:
        code = _code(exc)
        if code in ("NoSuchKey", "404", "NotFound"):
            return FileNotFoundError(errno.ENOENT, f"no such object ({what})", self.url(name))
        if code == "NoSuchBucket":
            return FileNotFoundError(errno.ENOENT, f"no such bucket {self.bucket!r} ({what})",
                                     self.url(name))
        return OSError(errno.EIO, f"{what} {self.url(name)} failed: {exc}")

    def get(self, name: str, limit: int | None = None) -> bytes:
        """The whole object (FileNotFoundError if absent; more than ``limit`` bytes is refused)."""
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
            size = int(r.get("ContentLength", 0))
            if limit is not None and size > limit:
                r["Body"].close()
                raise CorruptionError(f"{self.url(name)}: {size} bytes is more than an "
                                      f"object of this kind may hold ({limit})")
            data: bytes = r["Body"].read()
        except MemckptError:
            raise
        except Exception as exc:
            raise self._error(exc, name, "GET") from None
        self._add(received=len(data))
        return data

    def get_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object; a short answer is a CorruptionError."""
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name,
                                       Range=f"bytes={start}-{end - 1}")
            data: bytes = r["Body"].read()
        except Exception as exc:
            if _code(exc) == "InvalidRange":
                raise CorruptionError(f"{self.url(name)}: the object ends before byte {start} "
                                      f"(truncated?)") from None
            raise self._error(exc, name, "ranged GET") from None
        self._add(received=len(data))
        if len(data) != end - start:
            raise CorruptionError(f"{self.url(name)}: the object ends early (wanted bytes "
                                  f"{start}..{end}, got {len(data)}); truncated?")
        return data

    def put(self, name: str, body: bytes | BinaryIO, size: int, *, exclusive: bool) -> None:
        """Store the object; ``exclusive``: only if no object has the name
        (If-None-Match: "*"), else ObjectExists and nothing is changed."""
        kw: dict[str, Any] = {"IfNoneMatch": "*"} if exclusive else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=body,
                                   ContentLength=size, **kw)
        except Exception as exc:
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise ObjectExists(f"{self.url(name)} exists already") from None
            raise self._error(exc, name, "PUT") from None
        self._add(sent=size)

    def head(self, name: str) -> dict[str, Any] | None:
        try:
            r: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self.prefix + name)
        except Exception as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error(exc, name, "HEAD") from None
        self._add()
        return r

    def list(self) -> dict[str, tuple[int, float]]:
        """name -> (size, last-modified time) of the objects directly under the prefix."""
        out: dict[str, tuple[int, float]] = {}
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix, "Delimiter": "/"}
        try:
            while True:
                r = self.client.list_objects_v2(**kw)
                self._add()
                for o in r.get("Contents", ()):
                    out[o["Key"][len(self.prefix):]] = (int(o["Size"]), o["LastModified"].timestamp())
                if not r.get("IsTruncated"):
                    return out
                kw["ContinuationToken"] = r["NextContinuationToken"]
        except Exception as exc:
            raise self._error(exc, "", "LIST") from None

    def delete(self, names: List[str]) -> None:
        for i in range(0, len(names), 1000):
            part = names[i:i + 1000]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self.prefix + n} for n in part], "Quiet": True})
            except Exception as exc:
                raise self._error(exc, part[0], "DELETE") from None
            self._add()


def _code(exc: Exception) -> str:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        return str(resp.get("Error", {}).get("Code", ""))
    return ""
