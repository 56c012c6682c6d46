"""Services mode refuses to start with a placeholder or short secret; a trial may allow them explicitly."""

from __future__ import annotations

from pathlib import Path

import pytest
from atelier.cli import app
from typer.testing import CliRunner

SERVICES = {"ATELIER_BROKER_URL": "redis://127.0.0.1:6379/15", "ATELIER_STORAGE": "s3"}


@pytest.mark.parametrize("command", [["worker", "--queues", "render", "--no-supervise"], ["serve", "--port", "1"]])
def test_placeholder_secrets_stop_services_mode_at_start(tmp_path: Path, command: list[str]) -> None:
    env = {**SERVICES, "ATELIER_HOME": str(tmp_path), "ATELIER_S3_SECRET_KEY": "minioadmin",
           "ATELIER_DATABASE_URL": "postgresql://atelier:change-me@127.0.0.1:1/atelier"}
    result = CliRunner().invoke(app, command, env=env)
    assert result.exit_code == 2, result.output
    assert "ATELIER_S3_SECRET_KEY" in result.output and "ATELIER_DATABASE_URL" in result.output
    assert "ATELIER_ALLOW_PLACEHOLDER_SECRETS" in result.output


def test_a_trial_may_allow_them_and_the_embedded_mode_never_asks(tmp_path: Path) -> None:
    env = {**SERVICES, "ATELIER_HOME": str(tmp_path), "ATELIER_S3_SECRET_KEY": "minioadmin",
           "ATELIER_ALLOW_PLACEHOLDER_SECRETS": "true"}
    allowed = CliRunner().invoke(app, ["worker", "--queues", "nope"], env=env)
    assert allowed.exit_code == 2 and "unknown queue" in allowed.output  # past the secrets check
    embedded = CliRunner().invoke(app, ["serve", "--workers", "2"], env={"ATELIER_HOME": str(tmp_path),
                                                                        "ATELIER_BROKER_URL": ""})
    assert embedded.exit_code == 2 and "--workers needs a broker" in embedded.output
