"""Fixtures shared by every test folder: real PostgreSQL, Redis, an S3 endpoint, tiny models."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN = os.environ.get("ATELIER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("ATELIER_TEST_REDIS", "redis://127.0.0.1:6379")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head, dropped at the end."""
    import psycopg
    from atelier_migrations import upgrade

    name = f"atelier_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_REDIS_DBS = itertools.cycle(range(1, 16))


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A Redis database number of this test module's own, flushed before and after.

    Each module gets its own number, so a worker process or an unacked message one module leaves behind
    can never take a task from the next module's stack (they share queue names). ATELIER_TEST_REDIS_DB
    pins the number (parallel runs by several developers use different ones).
    """
    import redis

    db = os.environ.get("ATELIER_TEST_REDIS_DB") or str(next(_REDIS_DBS))
    url = f"{REDIS_BASE}/{db}"
    r = redis.Redis.from_url(url)
    r.flushdb()
    yield url
    r.flushdb()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real S3 HTTP server (nanio) that checks SigV4 signatures, on a free port."""
    port = free_port()
    data = tmp_path_factory.mktemp("s3")
    env = dict(os.environ, NANIO_ACCESS_KEY="atelier-test", NANIO_SECRET_KEY="atelier-test-secret-key")
    proc = subprocess.Popen([str(BIN / "nanio"), "serve", "--data-dir", str(data), "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning", "--no-access-log"], env=env)
    try:
        wait_port(port)
        yield {"ATELIER_STORAGE": "s3", "ATELIER_S3_ENDPOINT": f"127.0.0.1:{port}",
               "ATELIER_S3_ACCESS_KEY": "atelier-test", "ATELIER_S3_SECRET_KEY": "atelier-test-secret-key",
               "ATELIER_S3_BUCKET": "atelier-test", "ATELIER_S3_SECURE": "false"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-init SDXL and FLUX pipelines written with save_pretrained; returns models.yaml."""
    from atelier_gpu.tiny import init_tiny

    return Path(init_tiny(tmp_path_factory.mktemp("models")))
