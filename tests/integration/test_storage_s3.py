"""The S3 result store over real HTTP, against moto's S3 server started on a free local port."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from launch.processes import free_port
from shared.settings import Settings
from shared.storage import InvalidKey, S3Store, make_store, result_key, timelapse_key

pytestmark = pytest.mark.integration

ACCESS_KEY = "AKIAARTGENTESTKEY01"
SECRET_KEY = "artgen-test-secret-key-not-used-anywhere"


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, torn down after the module."""
    binary = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if server.poll() is not None:
                    pytest.fail(f"moto_server exited at start:\n{log_path.read_text()}")
                try:
                    httpx.get(f"{url}/moto-api/", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"moto_server did not answer in 30 s:\n{log_path.read_text()}")
                    time.sleep(0.1)
            yield url
        finally:
            server.terminate()
            server.wait(10)


@pytest.fixture
def bucket(s3_url: str) -> str:
    name = f"artgen-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    client.create_bucket(Bucket=name)
    return name


def _store(s3_url: str, bucket: str) -> S3Store:
    store = make_store(
        Settings(
            result_store="s3",
            s3_bucket=bucket,
            s3_endpoint_url=s3_url,
            s3_region="us-east-1",
            s3_access_key_id=ACCESS_KEY,
            s3_secret_access_key=SECRET_KEY,
        )
    )
    assert isinstance(store, S3Store)
    return store


def test_round_trip_over_http(s3_url: str, bucket: str) -> None:
    store = _store(s3_url, bucket)
    job = str(uuid.uuid4())
    picture = bytes(range(256)) * 64  # binary, not text: bytes must come back untouched

    store.check()
    assert store.get(result_key(job)) is None
    assert not store.exists(result_key(job))

    store.put(result_key(job), picture, "image/png")
    store.put(timelapse_key(job), b"RIFF....WEBP", "image/webp")
    assert store.exists(result_key(job))
    assert store.get(result_key(job)) == picture
    assert store.get(timelapse_key(job)) == b"RIFF....WEBP"

    # The object is really in the bucket, with its content type, as another S3 client sees it.
    raw = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ).get_object(Bucket=bucket, Key=f"{job}/result.png")
    assert raw["ContentType"] == "image/png" and raw["Body"].read() == picture

    store.put(result_key(job), b"replaced", "image/png")
    assert store.get(result_key(job)) == b"replaced"

    store.delete(result_key(job))
    assert not store.exists(result_key(job)) and store.get(result_key(job)) is None
    assert store.exists(timelapse_key(job))
    store.delete(result_key(job))  # deleting what is gone is not an error


def test_bad_keys_never_reach_the_server(s3_url: str, bucket: str) -> None:
    store = _store(s3_url, bucket)
    with pytest.raises(InvalidKey):
        store.put("../escape.png", b"x", "image/png")


def test_missing_bucket_is_an_error_not_an_empty_store(s3_url: str) -> None:
    from botocore.exceptions import ClientError

    store = _store(s3_url, "no-such-bucket-here")
    with pytest.raises(ClientError):
        store.check()
    with pytest.raises(ClientError):
        store.get(result_key(str(uuid.uuid4())))
