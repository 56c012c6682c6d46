"""Fixtures of the orchestrator's unit tests: a migrated SQLite database per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from atelier_control.db import make_engine, session_factory
from atelier_migrations import upgrade


@pytest.fixture
def db(tmp_path: Path) -> Any:
    """A session factory on a fresh SQLite database at the latest migration."""
    url = f"sqlite:///{tmp_path / 'orchestrator.db'}"
    upgrade(url)
    return session_factory(make_engine(url))
