"""Atelier's HTTP API: jobs, uploads, artifacts, server-sent events, health and metrics."""

from __future__ import annotations

from .app import create_app
from .version import __version__

__all__ = ["__version__", "create_app"]
