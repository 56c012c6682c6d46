"""What asset URLs need of the stores: object size and digest, byte ranges streamed in chunks, presigning."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import urllib3
from atelier_contracts.errors import NotFound
from atelier_runtime.settings import Settings
from atelier_runtime.storage import CHUNK_BYTES, LocalStore, S3Store, make_store, public_client
from minio import Minio

DATA = os.urandom(CHUNK_BYTES * 2 + 1234)  # three chunks


@pytest.fixture
def s3(s3_endpoint: dict[str, str], tmp_path: Path) -> S3Store:
    settings = Settings(home=tmp_path, storage="s3", s3_endpoint=s3_endpoint["ATELIER_S3_ENDPOINT"],
                        s3_access_key=s3_endpoint["ATELIER_S3_ACCESS_KEY"],
                        s3_secret_key=s3_endpoint["ATELIER_S3_SECRET_KEY"], s3_bucket=s3_endpoint["ATELIER_S3_BUCKET"])
    store = make_store(settings)
    assert isinstance(store, S3Store)
    return store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "local":
        return LocalStore(tmp_path / "artifacts")
    return request.getfixturevalue("s3")


def test_stat_gives_size_and_digest_without_reading_into_memory(store: Any) -> None:
    store.put("t/a.bin", DATA, "image/png")
    info = store.stat("t/a.bin")
    assert info.size_bytes == len(DATA) and info.sha256 == hashlib.sha256(DATA).hexdigest()
    with pytest.raises(NotFound):
        store.stat("t/missing.bin")


@pytest.mark.parametrize(("offset", "length"), [(0, None), (0, len(DATA)), (5, 10), (CHUNK_BYTES - 3, 7),
                                                (len(DATA) - 1, 1), (100, None), (0, 0)])
def test_open_range_streams_exactly_the_asked_bytes_in_chunks(store: Any, offset: int, length: int | None) -> None:
    store.put("t/r.bin", DATA, "application/octet-stream")
    chunks = list(store.open_range("t/r.bin", offset=offset, length=length))
    end = len(DATA) if length is None else offset + length
    assert b"".join(chunks) == DATA[offset:end]
    assert all(len(c) <= CHUNK_BYTES for c in chunks)


def test_open_range_fails_before_the_first_chunk(store: Any) -> None:
    with pytest.raises(NotFound):
        store.open_range("t/nothing.bin")  # raised by the call itself, so a route can answer 404
    with pytest.raises(ValueError):
        store.open_range("t/nothing.bin", offset=-1)


def test_closing_an_s3_read_gives_its_connection_back(s3: S3Store, s3_endpoint: dict[str, str]) -> None:
    # a pool of one connection that blocks when it is taken: an abandoned read that kept it would hang the next
    pool = urllib3.PoolManager(maxsize=1, block=True)
    client = Minio(s3_endpoint["ATELIER_S3_ENDPOINT"], access_key=s3_endpoint["ATELIER_S3_ACCESS_KEY"],
                   secret_key=s3_endpoint["ATELIER_S3_SECRET_KEY"], secure=False, region="us-east-1",
                   http_client=pool)
    one = S3Store(client, s3.bucket)
    s3.put("t/c.bin", DATA, "application/octet-stream")
    done = threading.Event()

    def abandon_reads() -> None:
        for _ in range(5):
            it = one.open_range("t/c.bin")
            assert len(next(it)) == CHUNK_BYTES
            it.close()  # type: ignore[attr-defined]
        assert b"".join(one.open_range("t/c.bin", offset=1, length=3)) == DATA[1:4]
        done.set()

    worker = threading.Thread(target=abandon_reads, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert done.is_set(), "a closed read kept its connection"


def test_only_an_s3_store_with_a_public_endpoint_presigns(s3: S3Store, tmp_path: Path) -> None:
    assert s3.public_client is None and s3.presigned_get("t/a.bin", expires_s=60, content_type="image/png",
                                                         filename="a.png") is None
    assert not hasattr(LocalStore(tmp_path / "l"), "presigned_get")
    https = Settings(s3_public_endpoint="https://s3.example.com", s3_region="eu-west-1")
    client = public_client(https)
    assert client is not None
    url = S3Store(s3.client, "bkt-x", public_client=client).presigned_get(
        "t/a.bin", expires_s=600, content_type="image/png", filename="a.png")
    # signed with no network call (the region is set): example.com is never asked
    assert url is not None and url.startswith("https://s3.example.com/bkt-x/t/a.bin?")
    assert "eu-west-1" in url and "X-Amz-Expires=600" in url
    plain = public_client(Settings(s3_public_endpoint="cdn.example.com:9000", s3_secure=False))
    assert plain is not None and S3Store(s3.client, "bkt-x", public_client=plain).presigned_get(
        "k", expires_s=60, content_type="a/b", filename="f").startswith("http://cdn.example.com:9000/")
    assert public_client(Settings()) is None
