"""``atelier secrets init DIR``: one set of credentials and one signing identity for a whole deployment.

Every container of a deployment reads the same folder (docker-compose: a named volume the one-shot
``secrets-init`` service fills; Kubernetes: Secrets mounted as files at the same path), so the dashboard and
asset-URL signing secret, the C2PA signer and the trust anchors ``/v1/verify`` checks against are the same in
every process, and survive a container's recreation. What goes in DIR, only where it is missing:

* ``atelier_session_secret``, ``atelier_s3_secret_key``: random; Settings reads them as secret files (their names
  are the settings' environment variables in lower case), MinIO its root password (``MINIO_ROOT_PASSWORD_FILE``);
* ``atelier_database_password``: random, for PostgreSQL (``POSTGRES_PASSWORD_FILE``); with ``--database-url``,
  ``atelier_database_url`` too, that URL with the password in it;
* ``atelier_c2pa_signer_chain.pem``, ``atelier_c2pa_signer_key.pem``, ``atelier_c2pa_trust_anchors.pem``: a
  development CA's signing chain, key and root, made by the provenance package's own development-CA code. Its CA
  key is not kept: nothing in a deployment issues certificates.

A file that is there already, or that ``--import`` brings from another folder, is never replaced, so a user's own
certificate or passwords win; running it again changes nothing. Secrets are 0600, public certificates 0644. The
values are never printed.
"""

from __future__ import annotations

import filecmp
import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import typer
from atelier_runtime.settings import Settings

from .output import JsonFlag, emit, fail, json_errors, stdout_to_stderr

PREFIX = Settings.model_config["env_prefix"].lower()  # "atelier_": secret files are named like the env variables
SESSION_SECRET = f"{PREFIX}session_secret"
S3_SECRET_KEY = f"{PREFIX}s3_secret_key"
DATABASE_URL = f"{PREFIX}database_url"
DATABASE_PASSWORD = f"{PREFIX}database_password"  # not a setting: PostgreSQL's POSTGRES_PASSWORD_FILE
C2PA_CHAIN = f"{PREFIX}c2pa_signer_chain.pem"  # ATELIER_C2PA_CERT_PATH
C2PA_KEY = f"{PREFIX}c2pa_signer_key.pem"  # ATELIER_C2PA_KEY_PATH
C2PA_ANCHORS = f"{PREFIX}c2pa_trust_anchors.pem"  # ATELIER_C2PA_TRUST_ANCHORS_PATH
C2PA_FILES = (C2PA_CHAIN, C2PA_KEY, C2PA_ANCHORS)
# every file this command manages, with its mode
MODES = {SESSION_SECRET: 0o600, S3_SECRET_KEY: 0o600, DATABASE_PASSWORD: 0o600, DATABASE_URL: 0o600,
         C2PA_CHAIN: 0o644, C2PA_KEY: 0o600, C2PA_ANCHORS: 0o644}


class SecretsInitError(RuntimeError):
    """DIR cannot be completed without replacing what is there (or what was brought is unusable)."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one file: written (generated or imported), or kept as it was."""

    name: str
    action: str  # "generated" | "imported" | "kept"
    mode: int
    note: str = ""

    def view(self) -> dict[str, str]:
        """What ``--json`` shows of it: the file's name, what happened, its mode (octal text) and a note."""
        return {"name": self.name, "action": self.action, "mode": oct(self.mode)[2:].zfill(4), "note": self.note}

    def line(self) -> str:
        verb = "kept " if self.action == "kept" else "wrote"
        what = "present" if self.action == "kept" else self.action
        return f"{verb} {self.name} ({oct(self.mode)[2:].zfill(4)}, {what}{'; ' + self.note if self.note else ''})"


def init_secrets(dest: Path, *, owner: tuple[int, int] | None = None, import_dir: Path | None = None,
                 database_url: str | None = None) -> list[Outcome]:
    """Fill DEST with whatever of the deployment's secrets and signing identity it lacks (see the module docstring).

    Args:
        dest: the folder every service reads (created 0700 when missing).
        owner: (uid, gid) the files (and DEST) are given, e.g. the image's non-root user when this runs as root.
        import_dir: a folder of user-provided files with the same names, copied in where DEST lacks them.
        database_url: ``postgresql://user@host:port/db`` (no password) to write ``atelier_database_url`` from.
    """
    if database_url is not None:  # checked before anything is written
        parts = urlsplit(database_url)
        if parts.password is not None:
            raise SecretsInitError("--database-url takes the URL without a password: the password comes from "
                                   f"{DATABASE_PASSWORD}")
        if not parts.username or not parts.hostname:
            raise SecretsInitError("--database-url needs a user and a host, e.g. "
                                   "postgresql://atelier@postgres:5432/atelier")
    if not dest.is_dir():
        dest.mkdir(parents=True, mode=0o700)
    if owner is not None:  # the shared folder itself: its owner only (the volume's root starts as root's, 0755)
        os.chown(dest, *owner)
        os.chmod(dest, 0o700)
    done: dict[str, Outcome] = {}
    present = {name for name in MODES if (dest / name).exists()}

    if import_dir is not None and import_dir.is_dir():
        for name in MODES:
            source = import_dir / name
            if not source.is_file():
                continue
            if name in present:
                if not filecmp.cmp(source, dest / name, shallow=False):
                    done[name] = Outcome(name, "kept", MODES[name], f"{source} differs and was not copied: remove "
                                                                    f"{dest / name} to replace it")
                continue
            if _publish(dest / name, source.read_bytes(), MODES[name], owner):
                done[name] = Outcome(name, "imported", MODES[name], f"from {source}")

    def generate(name: str, value: str) -> None:
        if _publish(dest / name, value.encode(), MODES[name], owner):
            done[name] = Outcome(name, "generated", MODES[name])

    generate(SESSION_SECRET, secrets.token_hex(32))
    generate(S3_SECRET_KEY, secrets.token_hex(24))
    # a database URL the user brought carries the password PostgreSQL must be started with
    brought = urlsplit(_read(dest / DATABASE_URL)).password if (dest / DATABASE_URL).is_file() else None
    generate(DATABASE_PASSWORD, unquote(brought) if brought else secrets.token_hex(24))
    if database_url is not None:
        generate(DATABASE_URL, _with_password(database_url, _read(dest / DATABASE_PASSWORD)))
    _c2pa(dest, generate)

    for name in MODES:
        if name not in done and (dest / name).exists():
            mode = (dest / name).stat().st_mode & 0o777
            loose = mode & 0o077 and not MODES[name] & 0o077
            done[name] = Outcome(name, "kept", mode, f"readable by others: chmod {oct(MODES[name])[2:]} it" if loose
                                 else "")
    return [done[name] for name in MODES if name in done]


def _c2pa(dest: Path, generate: Callable[[str, str], None]) -> None:
    """The signing chain, key and anchors go together: all brought, or all made here."""
    have = [name for name in C2PA_FILES if (dest / name).exists()]
    if not have:
        chain, key, anchors = _development_identity()
        generate(C2PA_KEY, key)
        generate(C2PA_ANCHORS, anchors)
        generate(C2PA_CHAIN, chain)  # last: a folder with the chain has the whole set
    elif len(have) < len(C2PA_FILES):
        missing = [name for name in C2PA_FILES if name not in have]
        raise SecretsInitError(f"{dest} has {', '.join(have)} but not {', '.join(missing)}: a signing identity is "
                               "the chain (leaf first), its key and the roots that verify it, all three; add the "
                               "missing ones, or remove the others to get a development CA")
    _check_pair(dest / C2PA_CHAIN, dest / C2PA_KEY)


def _development_identity() -> tuple[str, str, str]:
    """(chain, key, anchors) PEM of a fresh development CA, made by the provenance package (its CA key stays
    behind in a temporary folder)."""
    try:
        from atelier_provenance import manifests  # the api, renderer and gpu extras bring it (both images have it)
    except ModuleNotFoundError as exc:
        raise SecretsInitError("making a development CA needs the provenance package (pip install "
                               "'atelier[api]'), or bring your own certificate files") from exc
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), secrets_dir=None, c2pa_cert_path=None, c2pa_key_path=None,
                            c2pa_trust_anchors_path=None)
        credentials = manifests.load_credentials(settings)
    assert credentials is not None and credentials.anchors_pem  # create=True makes one
    return credentials.chain_pem, credentials.key_pem, credentials.anchors_pem


def _check_pair(chain: Path, key: Path) -> None:
    """The key must be the leaf certificate's (the first of the chain): c2pa would only fail at the first asset."""
    try:  # cryptography comes with the provenance package (an extra), not with the CLI's core: no check without it
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ModuleNotFoundError:
        return

    try:
        leaf = x509.load_pem_x509_certificate(chain.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SecretsInitError(f"cannot read {chain.name} / {key.name} as PEM (an unencrypted key): {exc}") from exc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
        raise SecretsInitError(f"{key.name} is not the key of the first certificate in {chain.name}")


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{quote(password, safe='')}@{host}"))


def _read(path: Path) -> str:
    return path.read_text().strip()


def _publish(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> bool:
    """Write PATH whole with MODE (and OWNER) unless it exists; False when it does. link() fails on an existing
    name, so two runs at once never replace each other's file and no reader sees half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp made it 0600; public certificates are 0644
        if owner is not None:
            os.chown(tmp, *owner)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _owner(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    uid, _, gid = value.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        raise typer.BadParameter("give UID[:GID] as numbers, e.g. 10001:10001") from None


def register(app: typer.Typer) -> None:
    """Add ``atelier secrets init`` to the CLI."""
    secrets_app = typer.Typer(help="A deployment's shared secrets and signing identity.", no_args_is_help=True)
    app.add_typer(secrets_app, name="secrets")

    @secrets_app.command("init")
    def secrets_init(
        dest: Annotated[Path, typer.Argument(help="Folder every service reads its secret files from.")],
        owner: Annotated[str | None, typer.Option(help="UID[:GID] to give the files and DEST to (run as root: the "
                                                       "services' user, 10001 in the Atelier image).")] = None,
        import_dir: Annotated[Path | None, typer.Option(
            "--import", help="Folder of your own files with the same names (certificate, key, anchors, passwords), "
                             "copied in where DEST lacks them; ignored when missing.")] = None,
        database_url: Annotated[str | None, typer.Option(
            help="Database URL without the password (postgresql://atelier@postgres:5432/atelier): written, with the "
                 f"password, as {DATABASE_URL}.")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Write the deployment's secrets and C2PA signing identity into DEST where missing (never replaces a file).

        Writes a session secret, an S3 secret key, a database password (and URL) and a development CA's signing
        chain, key and trust anchors; secrets 0600, certificates 0644. Prints file names, never values.

        --json: {"dest", "files": [{"name", "action": generated|imported|kept, "mode", "note"}], "written", "kept"}.
        """
        try:
            with json_errors(as_json):
                uid_gid = _owner(owner)
            with stdout_to_stderr(as_json):
                outcomes = init_secrets(dest, owner=uid_gid, import_dir=import_dir, database_url=database_url)
        except (SecretsInitError, OSError) as exc:
            raise fail(str(exc), as_json) from exc
        written = sum(o.action != "kept" for o in outcomes)

        def lines() -> None:
            for outcome in outcomes:
                typer.echo(outcome.line())
            typer.echo(f"{dest}: {written} written, {len(outcomes) - written} kept")

        emit({"dest": str(dest), "files": [o.view() for o in outcomes], "written": written,
              "kept": len(outcomes) - written}, as_json, lines)
