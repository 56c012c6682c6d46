"""Artifact storage: an S3 implementation (the ``minio`` SDK) and a local-folder implementation.

Keys are deterministic (:mod:`atelier_contracts.keys`), so a retried task overwrites its own object instead
of writing a second one.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from atelier_contracts.errors import NotFound, StorageError
from minio import Minio
from minio.error import S3Error

from .settings import Settings


@dataclass(frozen=True)
class StoredObject:
    key: str
    size_bytes: int
    sha256: str
    content_type: str


def _check_key(key: str) -> None:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"bad storage key {key!r}")


class ArtifactStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> StoredObject: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def ping(self) -> None: ...
    def local_path(self, key: str) -> Path | None: ...


class LocalStore:
    """Artifacts as files under a root folder (created 0700; files 0600); writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.exists():  # a new artifact folder is its owner's only (files are written 0600: mkstemp)
            self.root.mkdir(parents=True, mode=0o700)
            os.chmod(self.root, 0o700)

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredObject(key, len(data), hashlib.sha256(data).hexdigest(), content_type)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"object {key} not found") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self.root
        return sorted(
            str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")
            and str(p.relative_to(base)).startswith(prefix)
        )

    def ping(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"artifact folder {self.root} is missing")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


class S3Store:
    """Artifacts in an S3 bucket through the ``minio`` SDK; the client is injectable for tests."""

    def __init__(self, client: object, bucket: str, *, create_bucket: bool = True) -> None:
        assert isinstance(client, Minio)
        self.client = client
        self.bucket = bucket
        self._create_bucket = create_bucket
        self._bucket_ready = False

    def _ensure_bucket(self) -> None:
        """Create the bucket on first use, so a process starts (and reports not-ready) while S3 is down."""
        if self._bucket_ready or not self._create_bucket:
            return
        try:
            if not self.client.bucket_exists(bucket_name=self.bucket):
                self.client.make_bucket(bucket_name=self.bucket)
        except Exception as exc:  # noqa: BLE001 - any SDK/network failure is a storage failure
            raise StorageError(f"cannot reach bucket {self.bucket}: {exc}") from exc
        self._bucket_ready = True

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
        return cls(client, settings.s3_bucket)

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        _check_key(key)
        self._ensure_bucket()
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.client.put_object(
                bucket_name=self.bucket, object_name=key, data=io.BytesIO(data), length=len(data),
                content_type=content_type, metadata={"sha256": digest},
            )
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot write {key}: {exc}") from exc
        return StoredObject(key, len(data), digest, content_type)

    def get(self, key: str) -> bytes:
        _check_key(key)
        try:
            resp = self.client.get_object(bucket_name=self.bucket, object_name=key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise NotFound(f"object {key} not found") from exc
            raise StorageError(f"cannot read {key}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot read {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(bucket_name=self.bucket, object_name=key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise StorageError(f"cannot stat {key}: {exc}") from exc

    def delete(self, key: str) -> None:
        self.client.remove_object(bucket_name=self.bucket, object_name=key)

    def list(self, prefix: str) -> list[str]:
        objs = self.client.list_objects(bucket_name=self.bucket, prefix=prefix, recursive=True)
        return sorted(o.object_name for o in objs if o.object_name)

    def ping(self) -> None:
        self._ensure_bucket()
        try:
            if not self.client.bucket_exists(bucket_name=self.bucket):
                raise StorageError(f"bucket {self.bucket} does not exist")
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot reach bucket {self.bucket}: {exc}") from exc

    def local_path(self, key: str) -> Path | None:
        return None


def make_store(settings: Settings) -> ArtifactStore:
    """The store the settings name."""
    if settings.storage == "s3":
        return S3Store.from_settings(settings)
    return LocalStore(settings.resolved_storage_root())
