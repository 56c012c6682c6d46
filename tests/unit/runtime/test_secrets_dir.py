"""Settings read secret files (pydantic-settings' secrets_dir): ATELIER_SECRETS_DIR, else /run/secrets if present."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from atelier_runtime import settings as settings_module
from atelier_runtime.settings import Settings

SESSION = "s" * 64


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("ATELIER_"):
            monkeypatch.delenv(key)
    # no /run/secrets on this machine unless a test says so
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", tmp_path / "no-run-secrets")


def write_secrets(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "atelier_session_secret").write_text(SESSION + "\n")  # compose/k8s files may end with a newline
    (folder / "atelier_s3_secret_key").write_text("  s3-key-from-a-file  ")
    (folder / "atelier_database_url").write_text("postgresql://atelier:pw-from-file@postgres:5432/atelier")
    (folder / "atelier_broker_url").write_text("redis://redis:6379/3")  # any setting, not only SecretStr ones
    (folder / "atelier_c2pa_signer_key.pem").write_text("not a setting: ignored")
    return folder


def test_files_named_like_the_variables_fill_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_secrets(tmp_path / "secrets")
    monkeypatch.setenv("ATELIER_SECRETS_DIR", str(folder))
    s = Settings()
    assert s.secrets_dir == folder
    assert s.session_secret is not None and s.session_secret.get_secret_value() == SESSION  # stripped
    assert s.s3_secret_key == "s3-key-from-a-file"
    assert s.database_url == "postgresql://atelier:pw-from-file@postgres:5432/atelier"
    assert s.broker_url == "redis://redis:6379/3" and not s.embedded
    assert not s.insecure_secrets()


def test_the_environment_and_arguments_win_over_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_secrets(tmp_path / "secrets")
    monkeypatch.setenv("ATELIER_SECRETS_DIR", str(folder))
    monkeypatch.setenv("ATELIER_S3_SECRET_KEY", "from-the-environment")
    s = Settings(database_url="sqlite:///x.db")
    assert s.s3_secret_key == "from-the-environment"
    assert s.database_url == "sqlite:///x.db"
    assert s.session_secret is not None and s.session_secret.get_secret_value() == SESSION  # the rest still from files


def test_which_folder_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_folder = write_secrets(tmp_path / "from-env")
    arg_folder = tmp_path / "from-arg"
    arg_folder.mkdir()
    (arg_folder / "atelier_s3_secret_key").write_text("argument-folder")
    monkeypatch.setenv("ATELIER_SECRETS_DIR", str(env_folder))
    assert Settings(secrets_dir=arg_folder).s3_secret_key == "argument-folder"
    assert Settings(_secrets_dir=arg_folder).s3_secret_key == "argument-folder"  # the library's own argument
    # none: the defaults, whatever the folder holds
    assert Settings(secrets_dir=None).session_secret is None
    monkeypatch.setenv("ATELIER_SECRETS_DIR", "")
    s = Settings()
    assert s.secrets_dir is None and s.session_secret is None and s.s3_secret_key == "minioadmin"


def test_default_is_run_secrets_only_when_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_secrets = tmp_path / "run-secrets"
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", run_secrets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing default folder is not worth a warning on every Settings()
        s = Settings()
    assert s.secrets_dir is None and s.session_secret is None
    write_secrets(run_secrets)
    s = Settings()
    assert s.secrets_dir == run_secrets
    assert s.session_secret is not None and s.session_secret.get_secret_value() == SESSION


def test_a_bad_file_is_refused_like_a_bad_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "atelier_api_port").write_text("eighty")
    monkeypatch.setenv("ATELIER_SECRETS_DIR", str(folder))
    with pytest.raises(ValidationError, match="api_port"):
        Settings()
