"""A real S3 server for the tests: moto in server mode on loopback, started
by the tests themselves (one per session), and a fresh bucket per test."""
from __future__ import annotations

import itertools
import os
import secrets
from typing import Any, Iterator

import pytest

boto3 = pytest.importorskip("boto3", reason="the S3 tests need boto3 (pip install -e '.[test]')")
moto_server = pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (the test extra)")

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
    srv = S3Server()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """s3://<a fresh bucket>/run"""
    return f"s3://{s3_server.bucket()}/run"


import logging  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
