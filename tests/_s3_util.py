"""A real S3 server for the tests: moto in server mode on loopback, started
by the tests themselves (one per session), and a fresh bucket per test."""
from __future__ import annotations

import itertools
import os
import secrets
from typing import Any, Iterator

import pytest

try:  # the test extra brings both; without them only the S3 tests skip, saying why
    import boto3
    from moto import server as moto_server
except ImportError as exc:  # pragma: no cover
    boto3 = moto_server = None
    _MISSING = f"the S3 tests need boto3 and moto[server] (pip install -e '.[test]'): {exc}"

_n = itertools.count()


class S3Server:
    """A moto server on 127.0.0.1 and the options that reach it."""

    def __init__(self) -> None:
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.options: dict[str, Any] = {
            "endpoint_url": self.endpoint, "region_name": "us-east-1",
            "aws_access_key_id": "memckpt-test", "aws_secret_access_key": "memckpt-test"}
        self.client = boto3.client("s3", **self.options)

    def bucket(self) -> str:
        name = f"memckpt-{os.getpid()}-{next(_n)}-{secrets.token_hex(3)}"
        self.client.create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    if moto_server is None:
        pytest.skip(_MISSING)
    srv = S3Server()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path):
    """A new, empty store (page size 4096) of each backend: the conformance suite's."""
    from memckpt.store import Store
    from memckpt.store.s3 import S3Store
    if request.param == "local":
        return Store(tmp_path / "s", create=True, page_size=4096)
    srv = request.getfixturevalue("s3_server")
    return S3Store(f"s3://{srv.bucket()}/run", create=True, page_size=4096, storage_options=srv.options)


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """s3://<a fresh bucket>/run"""
    return f"s3://{s3_server.bucket()}/run"


import logging  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
