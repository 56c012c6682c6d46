"""The brand kit's uploaded font, fetched for one job: the file travels with the job, never under a family name.

A campaign names its uploaded font by artifact id (``spec.brand.font_artifact``; the API checked at submission
that it is one of the tenant's fonts). The render stage fetches it from the store under the job's *own*
tenant (``tenants/{job's tenant}/fonts/{id}.font``), checks it opens, and passes its path down to the
compositor for this job only. The artifact id is the font's identity: ``spec.brand.font`` is only a label
for it and is never mapped to the uploaded file, so an upload called "NotoSans" cannot take over the
installed Noto Sans for any other job or tenant (see :mod:`atelier_renderer.fonts`).

Fetched bytes are kept in an on-disk cache named by their SHA-256 (so repeated renders of a job do not
write the file again); a cached file is used only when its bytes still hash to its name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atelier_contracts.errors import NotFound, StageError
from atelier_contracts.keys import font_key
from atelier_runtime.stage_runner import StageContext

from . import fonts

MAX_FONT_BYTES = 30 * 1024 * 1024


@dataclass(frozen=True)
class BrandFont:
    """One job's uploaded brand font: the artifact it came from and the content-addressed file holding it."""

    artifact_id: str
    path: Path
    sha256: str


def _cache_dir() -> Path:
    d = Path(tempfile.gettempdir()) / "atelier-fonts"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def _cached_file(data: bytes, sha256: str) -> Path:
    """A file holding exactly ``data``, named by its hash; a file already there is trusted only if it matches."""
    path = _cache_dir() / f"{sha256}.font"
    try:
        if path.is_file() and not path.is_symlink() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
            return path
    except OSError:
        pass  # unreadable: write it again below
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{sha256[:16]}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def fetch_brand_font(ctx: StageContext, brand: dict[str, Any]) -> BrandFont | None:
    """The job's uploaded brand font (``brand.font_artifact``), fetched under the job's tenant; None without one.

    Raises a non-retryable :class:`StageError` when the artifact is missing (for this tenant), too large or
    not a font FreeType can open."""
    font_id = brand.get("font_artifact")
    if not font_id:
        return None
    try:
        data = ctx.get(font_key(ctx.task.tenant_id, str(font_id)))
    except NotFound as exc:
        raise StageError(f"brand font {font_id} not found", retryable=False) from exc
    if len(data) > MAX_FONT_BYTES:
        raise StageError(f"brand font {font_id} is larger than {MAX_FONT_BYTES} bytes", retryable=False)
    try:
        fonts.font_from_bytes(data, 12)
    except OSError as exc:
        raise StageError(f"brand font {font_id} is not a readable TrueType/OpenType font: {exc}", retryable=False) from exc
    sha256 = hashlib.sha256(data).hexdigest()
    return BrandFont(artifact_id=str(font_id), path=_cached_file(data, sha256), sha256=sha256)
