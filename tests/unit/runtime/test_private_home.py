"""ATELIER_HOME and what Atelier writes into it are its owner's only: the folder 0700, the SQLite file and artifacts 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from atelier_control.db import make_engine
from atelier_runtime.settings import Settings
from atelier_runtime.storage import LocalStore
from sqlalchemy import text


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_home_artifacts_and_the_database_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: what mkdir and SQLite would give others without care
    try:
        home = Settings(home=tmp_path / "var" / "home").home_dir()
        assert mode(home) == 0o700
        store = LocalStore(home / "artifacts")
        obj = store.put("tenants/t/jobs/j/render.ad/a.png", b"png", "image/png")
        assert mode(home / "artifacts") == 0o700 and mode(home / "artifacts" / obj.key) == 0o600
        db = home / "atelier.db"
        engine = make_engine(f"sqlite:///{db}")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        engine.dispose()
        assert mode(db) == 0o600
        for side in (db.with_name("atelier.db-wal"), db.with_name("atelier.db-shm")):
            if side.exists():
                assert mode(side) == 0o600, side
    finally:
        os.umask(old)


def test_an_existing_home_is_left_as_its_owner_made_it(tmp_path: Path) -> None:
    shared = tmp_path / "chosen"
    shared.mkdir(mode=0o750)
    os.chmod(shared, 0o750)
    assert Settings(home=shared).home_dir() == shared and mode(shared) == 0o750


def test_services_mode_names_placeholder_and_short_secrets() -> None:
    trial = Settings(broker_url="redis://127.0.0.1:6379/0", storage="s3", s3_secret_key="minioadmin",
                     database_url="postgresql://atelier:change-me@db/atelier", session_secret="change-me-please")
    problems = trial.insecure_secrets()
    assert len(problems) == 3 and any("ATELIER_S3_SECRET_KEY" in p for p in problems)
    assert any("ATELIER_SESSION_SECRET" in p for p in problems) and any("DATABASE_URL" in p for p in problems)
    good = Settings(broker_url="redis://127.0.0.1:6379/0", storage="s3", s3_secret_key="k" * 24,
                    database_url="postgresql://postgres@db/atelier", session_secret="s" * 64)
    assert good.insecure_secrets() == []


def test_placeholder_or_non_pem_signing_files_are_named(tmp_path: Path) -> None:
    chain, key, roots = (tmp_path / n for n in ("chain.pem", "key.pem", "roots.pem"))
    chain.write_text("change-me: the signing certificate chain, PEM, leaf first")
    key.write_text("not a key at all")
    roots.write_text("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n")
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", c2pa_cert_path=chain, c2pa_key_path=key,
                        c2pa_trust_anchors_path=roots)
    problems = settings.insecure_secrets()
    assert len(problems) == 2 and "ATELIER_C2PA_CERT_PATH" in problems[0] and "ATELIER_C2PA_KEY_PATH" in problems[1]
    # a path with no file behind it (a role that has none mounted) is not judged here
    assert Settings(broker_url="redis://127.0.0.1:6379/0", c2pa_key_path=tmp_path / "absent.pem").insecure_secrets() == []

def test_two_stores_opened_at_once_on_a_new_folder_both_open(tmp_path: Path, monkeypatch) -> None:
    """Two threads opening a LocalStore on the same new folder: the one that finds it made by the other between its
    check and its mkdir opens it too (it failed with FileExistsError, a flaky GPU serving test)."""
    root = tmp_path / "artifacts"
    real_exists = Path.exists
    # the other thread made the folder just after this one looked
    monkeypatch.setattr(Path, "exists", lambda self: False if self == root else real_exists(self))
    root.mkdir(mode=0o700)
    store = LocalStore(root)
    monkeypatch.undo()
    assert store.put("tenants/t/jobs/j/a.txt", b"x", "text/plain").size_bytes == 1
