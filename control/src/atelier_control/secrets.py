"""The process's signing secret: ``ATELIER_SESSION_SECRET``, else one generated once and kept under ``home``.

The dashboard's session cookies and the API's asset URLs (:mod:`atelier_control.asset_urls`) each derive their own
key from it (domain-separated), so one secret to set, rotate and share between API replicas and the orchestrator.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from atelier_runtime.settings import Settings

log = logging.getLogger(__name__)

SECRET_FILE = "session_secret"
MIN_SECRET_CHARS = 32


def resolve_secret(settings: Settings) -> bytes:
    """The configured secret, else one generated on first use and kept (0600) under ``settings.home``."""
    if settings.session_secret is not None and settings.session_secret.get_secret_value():
        return settings.session_secret.get_secret_value().encode()
    path = Path(settings.home_dir()) / SECRET_FILE
    try:
        return read_secret(path)
    except FileNotFoundError:
        pass
    # written whole to a private temp file, then published with link(), which fails when the name exists: a
    # process racing this one never reads a half-written secret, and every process ends up with the same one
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
            log.info("generated the signing secret in %s", path)
        except FileExistsError:  # another process published first: use theirs
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return read_secret(path)


def read_secret(path: Path) -> bytes:
    """The secret a file holds; ValueError when it is too short to sign with."""
    value = path.read_text().strip()
    if len(value) < MIN_SECRET_CHARS:
        raise ValueError(f"{path} holds a session secret shorter than {MIN_SECRET_CHARS} characters")
    return value.encode()
