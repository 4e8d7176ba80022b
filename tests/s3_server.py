"""A real S3-compatible server for the `s3` tests: moto in server mode on 127.0.0.1.

`moto_server` (one per test session) listens on a free loopback port; `s3` (one per test) makes a
fresh bucket, points every AWS client of this process at the server, and clears the s3fs instance
cache before and after, so no filesystem object (or its listing cache) leaks between tests.
The artifact store itself gets the endpoint only through `run.storage_options`, as in production.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

ACCESS_KEY = SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass
class S3Bucket:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str

    @property
    def storage_options(self) -> dict[str, Any]:
        """What goes into `run.storage_options` (s3fs keyword arguments)."""
        return {"endpoint_url": self.endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY,
                "client_kwargs": {"region_name": REGION}}

    @property
    def polars_options(self) -> dict[str, str]:
        """The same server for readers that bring their own S3 client (polars / object_store)."""
        return {"aws_endpoint_url": self.endpoint, "aws_access_key_id": ACCESS_KEY,
                "aws_secret_access_key": SECRET_KEY, "aws_region": REGION, "aws_allow_http": "true"}

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def objects(self, prefix: str = "") -> dict[str, tuple[str, Any]]:
        """Every object under `prefix` (a key prefix or an s3:// URI): key -> (ETag, LastModified),
        read straight from the server with boto3, bypassing s3fs and its caches."""
        prefix = prefix.removeprefix(f"s3://{self.bucket}/").removeprefix(f"s3://{self.bucket}")
        out: dict[str, tuple[str, Any]] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = (obj["ETag"], obj["LastModified"])
        return out

    def get(self, key_or_uri: str) -> bytes:
        key = key_or_uri.removeprefix(f"s3://{self.bucket}/")
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


def _clear_s3fs_cache() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 (port picked by the OS); yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh, empty bucket on the loopback server; AWS env points nowhere but there."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)  # any client built without options stays local too
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")  # ignore a developer's ~/.aws
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("NO_PROXY", "no_proxy"):  # never route loopback through a proxy
        monkeypatch.setenv(var, ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get(var)])))
    _clear_s3fs_cache()
    bucket = S3Bucket(moto_server, f"sip-test-{uuid.uuid4().hex[:12]}")
    bucket.client().create_bucket(Bucket=bucket.bucket)
    try:
        yield bucket
    finally:
        _clear_s3fs_cache()
        client = bucket.client()
        keys = list(bucket.objects())
        for i in range(0, len(keys), 1000):
            client.delete_objects(Bucket=bucket.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
        client.delete_bucket(Bucket=bucket.bucket)
