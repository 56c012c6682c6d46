"""Expiring asset URLs: what integrators (HubSpot, Braze, a DAM) fetch a delivered artifact with, no API key.

Two kinds, chosen by the settings:

* with ``storage=s3`` and ``s3_public_endpoint`` set, an S3 presigned GET URL signed for that endpoint (the bytes
  never pass through the API; the URL names the type and ``inline; filename=...`` the answer carries);
* otherwise ``/v1/assets/{artifact_id}?expires=<unix>&signature=<sig>``, served by the API, absolute when
  ``public_base_url`` is set. The signature is HMAC-SHA256 over the artifact id and the expiry, keyed with a key
  derived from the process's signing secret (:mod:`atelier_control.secrets`) for asset URLs only.

Expiry is ``now + asset_url_ttl_s`` rounded up to the next whole hour, so every URL made for an artifact within
the same hour is the same URL (cacheable by whoever holds it). The API (artifact views, ``/v1/assets``) and the
orchestrator (webhooks) both use this module; it imports nothing of either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from atelier_runtime.settings import Settings
from atelier_runtime.storage import PRESIGN_MAX_S, ArtifactStore, S3Store

from .secrets import resolve_secret

HOUR_S = 3600
ASSET_PATH = "/v1/assets/"
_DOMAIN = b"atelier-asset-url\x00"  # the dashboard's cookie key uses another prefix: a MAC of one is none of the other


@dataclass(frozen=True)
class AssetLink:
    """An asset URL and the moment it stops working."""

    url: str
    expires_at: datetime


def signing_key(settings: Settings) -> bytes:
    """The key asset URLs are signed with: derived from the signing secret, for this use only."""
    return hashlib.sha256(_DOMAIN + resolve_secret(settings)).digest()


def sign(artifact_id: str, expires_at: int, key: bytes) -> str:
    """base64url (unpadded) HMAC-SHA256 of ``{artifact_id}\\n{expires_at}``."""
    mac = hmac.new(key, f"{artifact_id}\n{int(expires_at)}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def verify(artifact_id: str, expires_at: int, signature: str, key: bytes, now: float) -> bool:
    """True when ``signature`` is this artifact's and expiry's and ``now`` is before the expiry (constant time)."""
    expected = sign(artifact_id, expires_at, key).encode()
    given = signature.encode("utf-8", "replace")
    return hmac.compare_digest(expected, given) and now < expires_at


def expiry(now: float | datetime, ttl_s: int) -> int:
    """``now + ttl_s`` rounded up to the next whole hour (unix seconds): the same all through an hour."""
    return (int(_seconds(now)) + ttl_s) // HOUR_S * HOUR_S + HOUR_S


def _seconds(now: float | datetime | None) -> float:
    if now is None:
        return time.time()
    return now.timestamp() if isinstance(now, datetime) else float(now)


class AssetLinks:
    """Makes asset links for one process: the signing key is read once, the store tells whether S3 presigns.

    Build it once (``from_settings``) and reuse it; ``asset_url`` below is the one-off form.
    """

    def __init__(self, settings: Settings, *, key: bytes, store: ArtifactStore | None = None) -> None:
        self.settings = settings
        self.key = key
        self.store = store

    @classmethod
    def from_settings(cls, settings: Settings, store: ArtifactStore | None = None) -> AssetLinks:
        """With no store and ``storage=s3``, one is made from the settings (making it opens no connection)."""
        if store is None and settings.storage == "s3" and settings.s3_public_endpoint:
            store = S3Store.from_settings(settings)
        return cls(settings, key=signing_key(settings), store=store)

    def link(self, artifact_id: str, storage_key: str, *, content_type: str, filename: str,
             now: float | datetime | None = None) -> AssetLink:
        """The artifact's asset URL as of ``now`` (unix seconds or an aware datetime; default: the clock) and when
        it expires."""
        expires = expiry(_seconds(now), self.settings.asset_url_ttl_s)
        presigned = self._presigned(storage_key, expires, content_type=content_type, filename=filename,
                                    ttl_s=self.settings.asset_url_ttl_s)
        if presigned is not None:
            return presigned
        path = (f"{ASSET_PATH}{quote(artifact_id, safe='')}?expires={expires}"
                f"&signature={sign(artifact_id, expires, self.key)}")
        base = (self.settings.public_base_url or "").rstrip("/")  # validated so, unless built with model_copy
        return AssetLink(url=base + path,
                         expires_at=datetime.fromtimestamp(expires, UTC))

    def _presigned(self, storage_key: str, expires: int, *, content_type: str, filename: str,
                   ttl_s: int) -> AssetLink | None:
        store = self.store
        if self.settings.storage != "s3" or not self.settings.s3_public_endpoint or not isinstance(store, S3Store):
            return None
        # S3 wants the signing time at or before the request, and a lifetime of at most 7 days: sign at the
        # start of the window the expiry was rounded in (the same all through it), and live ttl + 1 h from
        # there, cut to S3's limit (then the URL expires a little before ``expires``)
        signed_at = expires - HOUR_S - ttl_s
        lifetime = min(expires - signed_at, PRESIGN_MAX_S)
        url = store.presigned_get(storage_key, expires_s=lifetime, content_type=content_type, filename=filename,
                                  signed_at=datetime.fromtimestamp(signed_at, UTC))
        if url is None:  # a store without a public client
            return None
        return AssetLink(url=url, expires_at=datetime.fromtimestamp(signed_at + lifetime, UTC))


def asset_link(settings: Settings, artifact_id: str, storage_key: str, *, content_type: str, filename: str,
               store: ArtifactStore | None = None, now: float | datetime | None = None) -> AssetLink:
    """The artifact's asset URL and its expiry (see the module docstring for which kind)."""
    return AssetLinks.from_settings(settings, store).link(artifact_id, storage_key, content_type=content_type,
                                                          filename=filename, now=now)


def asset_url(settings: Settings, artifact_id: str, storage_key: str, *, content_type: str, filename: str,
              store: ArtifactStore | None = None, now: float | datetime | None = None) -> str:
    """The artifact's expiring asset URL: S3 presigned for ``s3_public_endpoint``, else the API-signed
    ``/v1/assets/...`` (absolute with ``public_base_url``)."""
    return asset_link(settings, artifact_id, storage_key, content_type=content_type, filename=filename,
                      store=store, now=now).url
