"""Standard Webhooks (https://www.standardwebhooks.com/): the events Atelier sends and their signatures.

Atelier signs every delivery with :func:`sign_webhook`; a receiver checks it with :func:`verify_webhook`::

    from atelier_sdk import verify_webhook

    payload = verify_webhook(secret, request.headers, request.body)   # raises WebhookVerificationError
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

WEBHOOK_EVENTS = ("job.succeeded", "job.failed", "job.canceled", "job.warning", "stage.completed", "artifact.created")
DEFAULT_TOLERANCE_S = 300


def _secret_bytes(secret: str) -> bytes:
    raw = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    return base64.b64decode(raw)


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`` keyed with the ``whsec_`` secret."""
    mac = hmac.new(_secret_bytes(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class WebhookVerificationError(Exception):
    pass


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes, *,
                   tolerance_s: int = DEFAULT_TOLERANCE_S, now: float | None = None) -> dict[str, Any]:
    """Check a received webhook (Standard Webhooks); returns the parsed payload or raises.

    Header names are matched case-insensitively; any of the space-separated ``v1,`` signatures may match
    (secret rotation); the timestamp must be within ``tolerance_s`` of now (replay protection)."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, ts, sigs = h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"]
    except KeyError as exc:
        raise WebhookVerificationError(f"missing header {exc.args[0]}") from None
    try:
        timestamp = int(ts)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too old or in the future")
    expected = sign_webhook(secret, msg_id, timestamp, body).split(",", 1)[1]
    for sig in sigs.split():
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return dict(json.loads(body))
    raise WebhookVerificationError("no matching signature")
