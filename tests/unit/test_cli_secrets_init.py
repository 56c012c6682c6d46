"""`atelier secrets init DIR`: the files, their modes, idempotence, what a user brings, and one identity for two
"containers" reading the folder (the same session secret, a signature one makes that the other trusts)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from atelier.cli import app
from atelier_runtime.settings import Settings
from typer.testing import CliRunner

from atelier import secrets_init as si

pv = pytest.importorskip("atelier_provenance.manifests", reason="atelier-provenance is not installed")

DB = "postgresql://atelier@postgres:5432/atelier"
SECRETS = {si.SESSION_SECRET, si.S3_SECRET_KEY, si.DATABASE_PASSWORD, si.DATABASE_URL, si.C2PA_KEY}
PUBLIC = {si.C2PA_CHAIN, si.C2PA_ANCHORS}


def run(*args: str) -> str:
    result = CliRunner().invoke(app, ["secrets", "init", *args])
    assert result.exit_code == 0, result.output
    return result.output


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mode, p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


def tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 40)).save(buf, format="PNG")
    return buf.getvalue()


def container_settings(folder: Path, home: Path) -> Settings:
    """Settings as a compose/k8s container builds them: the secrets folder, the C2PA paths pointing into it, its
    own (fresh) home."""
    return Settings(home=home, secrets_dir=folder, c2pa_cert_path=folder / si.C2PA_CHAIN,
                    c2pa_key_path=folder / si.C2PA_KEY, c2pa_trust_anchors_path=folder / si.C2PA_ANCHORS)


def test_writes_every_file_with_its_mode_and_prints_no_value(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    out = run(str(folder), "--database-url", DB)
    assert {p.name for p in folder.iterdir()} == SECRETS | PUBLIC, "no temporary file left behind"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in SECRETS:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    for name in PUBLIC:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name
    assert len(bytes.fromhex((folder / si.SESSION_SECRET).read_text())) >= 32
    for name in SECRETS | PUBLIC:
        assert f"wrote {name}" in out
        if name != si.DATABASE_URL:  # the URL's readable parts (user, host) are in the option anyway
            for line in (folder / name).read_text().splitlines():
                if "-----" not in line:
                    assert line not in out, f"{name}'s value is printed"
    password = (folder / si.DATABASE_PASSWORD).read_text()
    assert (folder / si.DATABASE_URL).read_text() == f"postgresql://atelier:{password}@postgres:5432/atelier"
    assert "CA key" not in out and not list(folder.glob("*ca-key*")), "the development CA's key is not kept"


def test_a_second_run_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    run(str(folder), "--database-url", DB)
    before = snapshot(folder)
    out = run(str(folder), "--database-url", DB)
    assert snapshot(folder) == before  # same bytes, modes, inodes and mtimes
    assert "7 kept" in out and "0 written" in out


def test_two_containers_on_one_folder_share_one_identity(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    run(str(folder))
    api = container_settings(folder, tmp_path / "api-home")
    worker = container_settings(folder, tmp_path / "worker-home")
    assert api.session_secret is not None and worker.session_secret is not None
    assert api.session_secret.get_secret_value() == worker.session_secret.get_secret_value()
    assert api.s3_secret_key == worker.s3_secret_key and not api.insecure_secrets()
    signer = pv.load_credentials(worker)
    assert signer is not None and signer.source == "settings"
    assert signer.chain_pem == pv.load_credentials(api).chain_pem
    assert not (tmp_path / "worker-home" / "c2pa").exists(), "no container makes a development CA of its own"

    signed = pv.sign_asset(tiny_png(), "image/png", credentials=signer, title="ad.png", generation={"job_id": "j"})
    assert pv.read_manifest(signed, "image/png", anchors=pv.trust_anchors(api)).state == "trusted"
    # what this issue fixes: a container with a development CA of its own calls that signature untrusted
    alone = Settings(home=tmp_path / "alone", secrets_dir=None)
    pv.load_credentials(alone)
    assert pv.read_manifest(signed, "image/png", anchors=pv.trust_anchors(alone)).state == "untrusted"


def own_identity(tmp_path: Path) -> tuple[str, str, str]:
    """A signing identity of the user's own (here: another CA than the one secrets init would make)."""
    credentials = pv.load_credentials(Settings(home=tmp_path / "their-ca", secrets_dir=None))
    return credentials.chain_pem, credentials.key_pem, credentials.anchors_pem


def test_what_a_user_brings_is_imported_and_never_replaced(tmp_path: Path) -> None:
    chain, key, anchors = own_identity(tmp_path)
    brought = tmp_path / "brought"
    brought.mkdir()
    (brought / si.C2PA_CHAIN).write_text(chain)
    (brought / si.C2PA_KEY).write_text(key)
    (brought / si.C2PA_ANCHORS).write_text(anchors)
    (brought / si.DATABASE_URL).write_text("postgresql://atelier:their%2Fpassword@db.example:5432/atelier")
    folder = tmp_path / "secrets"
    out = run(str(folder), "--import", str(brought), "--database-url", DB)
    assert (folder / si.C2PA_CHAIN).read_text() == chain and (folder / si.C2PA_KEY).read_text() == key
    assert f"wrote {si.C2PA_CHAIN} (0644, imported" in out
    # PostgreSQL is started with the password of the URL the user brought
    assert (folder / si.DATABASE_PASSWORD).read_text() == "their/password"
    assert (folder / si.DATABASE_URL).read_text().startswith("postgresql://atelier:their%2Fpassword@db.example")
    signer = pv.load_credentials(container_settings(folder, tmp_path / "home"))
    signed = pv.sign_asset(tiny_png(), "image/png", credentials=signer, title="a.png", generation={})
    assert pv.read_manifest(signed, "image/png", anchors=anchors).state == "trusted"

    # a different file brought later is not copied over the one in use, and the run says so
    (brought / si.C2PA_ANCHORS).write_text(anchors + anchors)
    before = snapshot(folder)
    out = run(str(folder), "--import", str(brought))
    assert snapshot(folder) == before
    assert "differs and was not copied" in out


def test_the_import_folder_may_be_missing(tmp_path: Path) -> None:
    run(str(tmp_path / "secrets"), "--import", str(tmp_path / "nothing-here"))  # compose binds ./secrets: maybe empty
    assert (tmp_path / "secrets" / si.C2PA_CHAIN).is_file()


def test_a_partial_or_mismatched_signing_identity_is_refused(tmp_path: Path) -> None:
    chain, key, anchors = own_identity(tmp_path)
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / si.C2PA_CHAIN).write_text(chain)
    result = CliRunner().invoke(app, ["secrets", "init", str(folder)])
    assert result.exit_code == 1
    assert si.C2PA_KEY in result.output and si.C2PA_ANCHORS in result.output
    assert (folder / si.C2PA_CHAIN).read_text() == chain and not (folder / si.C2PA_KEY).exists()

    other_key = own_identity(tmp_path / "other")[1]
    (folder / si.C2PA_KEY).write_text(other_key)
    (folder / si.C2PA_ANCHORS).write_text(anchors)
    result = CliRunner().invoke(app, ["secrets", "init", str(folder)])
    assert result.exit_code == 1 and "is not the key of the first certificate" in result.output


def test_options_are_checked(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["secrets", "init", str(tmp_path / "a"), "--database-url",
                                      "postgresql://atelier:inline@postgres/atelier"])
    assert result.exit_code == 1 and "without a password" in result.output
    assert not (tmp_path / "a").exists(), "nothing written"
    result = CliRunner().invoke(app, ["secrets", "init", str(tmp_path / "b"), "--owner", "atelier"])
    assert result.exit_code == 2


def test_owner_is_given_to_every_file(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    run(str(folder), "--owner", f"{os.getuid()}:{os.getgid()}")  # as root in compose: 10001:10001
    for path in [folder, *folder.iterdir()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (os.getuid(), os.getgid())


def test_a_loosely_readable_secret_someone_brought_is_flagged(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / si.SESSION_SECRET).write_text("x" * 64)
    os.chmod(folder / si.SESSION_SECRET, 0o644)
    out = run(str(folder))
    assert f"kept  {si.SESSION_SECRET} (0644, present; readable by others: chmod 600 it)" in out
    assert (folder / si.SESSION_SECRET).read_text() == "x" * 64
