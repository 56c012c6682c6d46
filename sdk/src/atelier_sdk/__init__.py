"""The Python SDK of Atelier: :class:`AtelierClient` / :class:`AsyncAtelierClient` for the HTTP API,
:func:`verify_webhook` for receivers.

Depends on httpx and pydantic only.
"""

from .client import AsyncAtelierClient, AtelierClient
from .errors import ApiError, AtelierError
from .models import (
    SCHEMA_MODELS,
    ApiKeyInfo,
    Artifact,
    BrandKit,
    Capabilities,
    DeliveryPage,
    Event,
    FieldError,
    ItemFailure,
    Job,
    JobPage,
    LayoutDesign,
    Placement,
    PlanPreview,
    Problem,
    SizeLimits,
    Stage,
    StoryLanguages,
    Upload,
    Webhook,
    WebhookDelivery,
)
from .operations import OPERATIONS, UNSET
from .retry import RetryPolicy
from .version import __version__
from .webhooks import WEBHOOK_EVENTS, WebhookVerificationError, sign_webhook, verify_webhook

__all__ = [
    "OPERATIONS", "SCHEMA_MODELS", "UNSET", "WEBHOOK_EVENTS", "ApiError", "ApiKeyInfo", "Artifact",
    "AsyncAtelierClient", "AtelierClient", "AtelierError", "BrandKit", "Capabilities", "DeliveryPage", "Event",
    "FieldError", "ItemFailure", "Job", "JobPage", "Placement", "PlanPreview", "LayoutDesign", "Problem", "RetryPolicy",
    "SizeLimits", "Stage", "StoryLanguages", "Upload", "Webhook", "WebhookDelivery", "WebhookVerificationError",
    "__version__", "sign_webhook", "verify_webhook",
]
