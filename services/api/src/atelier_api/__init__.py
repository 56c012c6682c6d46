"""Atelier's HTTP API: jobs, uploads, artifacts, server-sent events, health and metrics."""

from __future__ import annotations

__version__ = "0.1.0"

from .app import create_app  # noqa: E402

__all__ = ["__version__", "create_app"]
