"""Artifact storage: an S3 implementation (the ``minio`` SDK) and a local-folder implementation.

Keys are deterministic (:mod:`atelier_contracts.keys`), so a retried task overwrites its own object instead
of writing a second one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, urlsplit

from atelier_contracts.errors import NotFound, StorageError
from minio import Minio
from minio.error import S3Error

from .settings import Settings

if TYPE_CHECKING:
    from urllib3 import BaseHTTPResponse  # minio's response type


@dataclass(frozen=True)
class StoredObject:
    key: str
    size_bytes: int
    sha256: str
    content_type: str


CHUNK_BYTES = 256 * 1024  # what a streamed read holds in memory at a time
PRESIGN_MAX_S = 7 * 24 * 3600  # S3's limit on a presigned URL's lifetime


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
    def stat(self, key: str) -> StoredObject: ...
    def open_range(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]: ...


class LocalStore:
    """Artifacts as files under a root folder (created 0700; files 0600); writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.exists():  # a new artifact folder is its owner's only (files are written 0600: mkstemp)
            try:
                self.root.mkdir(parents=True, mode=0o700)
                os.chmod(self.root, 0o700)
            except FileExistsError:  # another thread or process made it first (two stores opened at once): theirs
                pass

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

    def stat(self, key: str) -> StoredObject:
        """Size and SHA-256 of the stored file (hashed in chunks; never read whole); NotFound when missing."""
        path = self._path(key)
        digest = hashlib.sha256()
        try:
            with path.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                while chunk := fh.read(CHUNK_BYTES):
                    digest.update(chunk)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise NotFound(f"object {key} not found") from exc
        return StoredObject(key, size, digest.hexdigest(), "application/octet-stream")

    def open_range(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """``length`` bytes from ``offset`` (to the end when None), in chunks. The file is opened here, so a missing
        one is NotFound before the first chunk; closing the iterator closes the file."""
        _check_range(offset, length)
        try:
            fh = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise NotFound(f"object {key} not found") from exc
        return _file_chunks(fh, offset, length)


@contextlib.contextmanager
def _reading(key: str) -> Iterator[None]:
    """An S3 read's errors as the store's: a missing object is NotFound, anything else a StorageError."""
    try:
        yield
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject"):
            raise NotFound(f"object {key} not found") from exc
        raise StorageError(f"cannot read {key}: {exc}") from exc
    except (NotFound, StorageError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"cannot read {key}: {exc}") from exc


class S3Store:
    """Artifacts in an S3 bucket through the ``minio`` SDK; the client is injectable for tests.

    ``public_client`` (optional) signs presigned URLs for the endpoint integrators reach the bucket at; it needs
    its region set, so presigning is arithmetic and makes no network call.
    """

    def __init__(self, client: object, bucket: str, *, create_bucket: bool = True,
                 public_client: object | None = None) -> None:
        assert isinstance(client, Minio)
        assert public_client is None or isinstance(public_client, Minio)
        self.client = client
        self.bucket = bucket
        self.public_client = public_client
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
        return cls(client, settings.s3_bucket, public_client=public_client(settings))

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
        with _reading(key):
            resp = self.client.get_object(bucket_name=self.bucket, object_name=key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

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

    def stat(self, key: str) -> StoredObject:
        """Size, type and SHA-256 from the object's metadata (``sha256`` is '' for an object written without
        ours); NotFound when missing."""
        _check_key(key)
        try:
            info = self.client.stat_object(bucket_name=self.bucket, object_name=key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise NotFound(f"object {key} not found") from exc
            raise StorageError(f"cannot stat {key}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"cannot stat {key}: {exc}") from exc
        meta = info.metadata or {}
        digest = str(meta.get("x-amz-meta-sha256") or "")  # an HTTPHeaderDict: any case matches
        return StoredObject(key, int(info.size or 0), digest, info.content_type or "application/octet-stream")

    def open_range(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """``length`` bytes from ``offset`` (to the end when None), streamed in chunks. The request is sent here,
        so a missing object is NotFound before the first chunk; closing the iterator releases the connection."""
        _check_key(key)
        _check_range(offset, length)
        if length == 0:
            return iter(())
        with _reading(key):
            # minio asks for no range when both are 0 (the whole object), else bytes=offset-(offset+length-1)
            resp = self.client.get_object(bucket_name=self.bucket, object_name=key, offset=offset,
                                          length=length or 0)
        return _response_chunks(resp, key)

    def presigned_get(self, key: str, *, expires_s: int, content_type: str, filename: str,
                      signed_at: datetime | None = None) -> str | None:
        """A GET URL for the public endpoint, valid ``expires_s`` from ``signed_at`` (default now), that answers
        with this type and ``Content-Disposition: inline; filename=...``; None without a public endpoint."""
        _check_key(key)
        if self.public_client is None:
            return None
        if not 1 <= expires_s <= PRESIGN_MAX_S:
            raise ValueError(f"a presigned URL lives 1..{PRESIGN_MAX_S} s, not {expires_s}")
        return self.public_client.presigned_get_object(
            bucket_name=self.bucket, object_name=key, expires=timedelta(seconds=expires_s), request_date=signed_at,
            response_headers={"response-content-type": content_type,
                              "response-content-disposition": inline_disposition(filename)},
        )


def public_client(settings: Settings) -> Minio | None:
    """The client that presigns for ``s3_public_endpoint`` (None when unset): the store's credentials, and its
    region, so presigning never asks the endpoint for it."""
    if not settings.s3_public_endpoint:
        return None
    endpoint, secure = settings.s3_public_endpoint, settings.s3_secure
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        endpoint, secure = parts.netloc, parts.scheme == "https"
    return Minio(endpoint, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key, secure=secure,
                 region=settings.s3_region)


def inline_disposition(name: str) -> str:
    """``inline`` with an ASCII ``filename`` and the exact name as RFC 6266/8187 ``filename*``."""
    plain = "".join(c for c in name if c.isascii() and c.isprintable() and c not in '"\\') or "artifact"
    return f"inline; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"bad range: offset {offset}, length {length}")


def _file_chunks(fh: io.BufferedReader, offset: int, length: int | None) -> Iterator[bytes]:
    with fh:
        fh.seek(offset)
        left = length
        while left is None or left > 0:
            chunk = fh.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


def _response_chunks(resp: BaseHTTPResponse, key: str) -> Iterator[bytes]:
    try:
        yield from resp.stream(CHUNK_BYTES)
    except Exception as exc:  # noqa: BLE001 - a connection lost mid-object is a storage failure
        raise StorageError(f"cannot read {key}: {exc}") from exc
    finally:
        resp.close()
        resp.release_conn()


def make_store(settings: Settings) -> ArtifactStore:
    """The store the settings name."""
    if settings.storage == "s3":
        return S3Store.from_settings(settings)
    return LocalStore(settings.resolved_storage_root())
