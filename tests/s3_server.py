"""A real S3 API on loopback for the storage tests: moto's server mode (``ThreadedMotoServer``) on 127.0.0.1 and a
random port, reached through s3fs with an endpoint URL, the way a user reaches MinIO or AWS.

:func:`s3_server` starts it with dummy credentials in the environment and yields an :class:`S3Server`; the server
stops when the block ends. ``server.env`` is what a subprocess needs (``AWS_ENDPOINT_URL`` and the dummy keys).
:func:`strict_auth` makes the server check credentials (moto accepts any by default), for the wrong-credentials test.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

#: Dummy credentials (moto accepts any unless :func:`strict_auth` is on).
DUMMY_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint URL and the environment that points s3fs (and boto3) at it."""

    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for a process that talks to this server."""
        return {**DUMMY_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    @property
    def storage_options(self) -> dict[str, object]:
        """fsspec storage options for this server (what ``--storage-options`` or ``datasets`` get)."""
        return {"key": DUMMY_ENV["AWS_ACCESS_KEY_ID"], "secret": DUMMY_ENV["AWS_SECRET_ACCESS_KEY"],
                "endpoint_url": self.endpoint}

    def make_bucket(self, name: str) -> None:
        """Create a bucket."""
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **_boto_keys()).create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key below ``prefix``, sorted."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **_boto_keys())
        out: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": DUMMY_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": DUMMY_ENV["AWS_SECRET_ACCESS_KEY"], "region_name": DUMMY_ENV["AWS_DEFAULT_REGION"]}


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """Start moto's S3 server on 127.0.0.1 (a free port), with the dummy credentials and endpoint in ``os.environ``
    while it runs; stop it and restore the environment after."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    saved = {k: os.environ.get(k) for k in (*DUMMY_ENV, "AWS_ENDPOINT_URL")}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Server(f"http://{host}:{port}")
        os.environ.update(s3.env)
        _clear_fsspec_cache()
        yield s3
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _clear_fsspec_cache()


def _clear_fsspec_cache() -> None:
    """Forget cached s3fs instances (they hold the endpoint and credentials they were made with)."""
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def strict_auth() -> Iterator[None]:
    """While the block runs, the in-process moto server refuses credentials it did not issue (InvalidAccessKeyId)."""
    from moto import settings

    old = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    try:
        yield
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = old
