"""The Python SDK of Atelier: :class:`AtelierClient` for the HTTP API, :func:`verify_webhook` for receivers.

Depends on httpx and pydantic only.
"""

from .client import (
           ApiError,
           ApiKeyInfo,
           Artifact,
           AtelierClient,
           BrandKit,
           Event,
           Job,
           JobPage,
           Stage,
           Upload,
           Webhook,
           WebhookDelivery,
)
from .webhooks import WEBHOOK_EVENTS, WebhookVerificationError, sign_webhook, verify_webhook

__all__ = ["WEBHOOK_EVENTS", "ApiError", "ApiKeyInfo", "Artifact", "AtelierClient", "BrandKit", "Event", "Job",
           "JobPage", "Stage", "Upload", "Webhook", "WebhookDelivery", "WebhookVerificationError", "sign_webhook",
           "verify_webhook"]
