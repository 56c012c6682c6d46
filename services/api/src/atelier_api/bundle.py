"""A job's delivery bundle: a zip of every delivered asset plus ``manifest.json`` and ``manifest.csv``.

What ad managers and DAMs import. Files are named by size and variant (``1080x1080/ad_1080x1080_v0.png``)
or page (``pages/page_01.png``), next to the storybook documents (``storybook.pdf``, ``storybook.html``).
Each manifest row has the file, its size and variant, the taglines, the SHA-256 of the bytes in the zip,
the render checks (OCR, contrast, canvas, safe zone) as gate scores, and the watermark and C2PA state.

The zip is streamed: rows are read first (the request's session closes before the body is sent), then
each object is fetched from storage and written as it comes; the manifests come last, so their
checksums are of the bytes actually written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from atelier_contracts import items
from atelier_contracts.errors import Conflict
from atelier_contracts.keys import parse_stage_key
from atelier_control.asset_urls import AssetLinks
from atelier_control.jobs import get_job
from atelier_control.models import Artifact, Stage
from atelier_runtime.storage import ArtifactStore
from sqlalchemy import select
from sqlalchemy.orm import Session

from .views import as_utc

CSV_COLUMNS = ("file", "kind", "size", "variant", "page", "width", "height", "taglines", "cta", "sha256", "bytes",
               "gates_passed", "gates", "watermark", "c2pa_state")


@dataclass
class Entry:
    file: str
    key: str
    stored_sha256: str
    row: dict[str, Any] = field(default_factory=dict)
    compress: bool = False


@dataclass
class BundlePlan:
    job_id: str
    filename: str
    header: dict[str, Any]
    entries: list[Entry]


def _link(links: AssetLinks | None, artifact: Artifact) -> dict[str, Any]:
    if links is None:
        return {}
    link = links.link(artifact.id, artifact.key, content_type=artifact.content_type, filename=artifact.name)
    return {"url": link.url, "url_expires_at": link.expires_at.isoformat().replace("+00:00", "Z")}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "job"


def plan_bundle(session: Session, *, tenant_id: str, job_id: str, links: AssetLinks | None = None) -> BundlePlan:
    """Everything the bundle holds, read while the session is open (404 for another tenant's job). With ``links``,
    each file's row in manifest.json also says where to fetch it again without an API key (``url``, expiring at
    ``url_expires_at``): what a DAM or an ad platform importing the manifest pulls."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.status != "succeeded":
        raise Conflict(f"job {job_id} is {job.status}; its bundle is ready once it has succeeded")
    arts = list(session.scalars(select(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.job_id == job_id)
                                .order_by(Artifact.created_at, Artifact.id)))
    renders = {a.name: a for a in arts if a.kind in ("render", "page")}
    spec = job.spec or {}
    entries: list[Entry] = []
    for a in sorted((a for a in arts if a.kind == "asset"), key=lambda a: _natural(a.name)):
        meta = a.meta or {}
        render_meta = (renders.get(a.name).meta or {}) if a.name in renders else {}
        gates = list(render_meta.get("gates") or [])
        ad, page_index = _ad_item(a.name), _page_item(a.name)
        ext = _ext(a.key)
        row: dict[str, Any] = {"kind": "ad" if ad else "page" if page_index is not None else a.kind, "width": a.width,
                               "height": a.height, "size": None, "variant": None, "page": None}
        if ad:
            size, variant = ad
            name = f"{size}/ad_{size}_v{variant}.{ext}"
            row.update(size=size, variant=variant, taglines=render_meta.get("taglines", spec.get("taglines", [])),
                       cta=render_meta.get("cta", spec.get("cta")))
        elif page_index is not None:
            page = page_index + 1
            name = f"pages/page_{page:02d}.{ext}"
            row.update(page=page, taglines=[], cta=None)
        else:
            name = f"assets/{a.name}.{ext}"
            row.update(taglines=[], cta=None)
        wm = meta.get("watermark") or {}
        row.update(gates=gates, gates_passed=all(g.get("passed") is not False for g in gates) if gates else None,
                   watermark={k: wm.get(k) for k in ("method", "payload_hex", "readback_ok", "carried") if k in wm} or None,
                   c2pa=_c2pa(meta))
        entries.append(Entry(file=name, key=a.key, stored_sha256=a.sha256, row={**row, **_link(links, a)}))
    for a in (a for a in arts if a.kind == "document"):
        ext = _ext(a.key)
        row = {"kind": "document", "width": None, "height": None, "size": None, "variant": None,
               "page": None, "taglines": [], "cta": None, "gates": [], "gates_passed": None, "watermark": None,
               "c2pa": _c2pa(a.meta or {}) if ext == "pdf" else None}
        entries.append(Entry(file=f"{a.name}.{ext}", key=a.key, stored_sha256=a.sha256, row={**row, **_link(links, a)},
                             compress=ext == "html"))
    created = as_utc(job.created_at)
    finished = as_utc(job.finished_at)
    brand = spec.get("brand") or {}
    header = {"job_id": job.id, "kind": job.kind, "created_at": created.isoformat() if created else None,
              "finished_at": finished.isoformat() if finished else None,
              "brand": brand.get("name"), "brand_id": spec.get("brand_id"), "title": spec.get("premise"),
              "sizes": spec.get("sizes"), "variants": spec.get("variants"), "backdrop": spec.get("backdrop"),
              # a partial job's failed items (delivered sizes are the entries; these are not in the zip)
              "failed": [{"stage": r.name, "item": r.item, "error": r.error} for r in session.scalars(
                  select(Stage).where(Stage.job_id == job.id, Stage.status == "failed").order_by(Stage.position,
                                                                                               Stage.item))]}
    label = brand.get("name") or job.kind
    return BundlePlan(job_id=job.id, filename=f"atelier_{_slug(str(label))}_{job.id}.zip", header=header,
                      entries=entries)


def _ad_item(name: str) -> tuple[str, int] | None:
    try:
        return items.parse_size_variant(name)
    except ValueError:
        return None


def _page_item(name: str) -> int | None:
    try:
        return items.parse_scene(name)
    except ValueError:
        return None


def _ext(key: str) -> str:
    try:
        return parse_stage_key(key).ext
    except ValueError:
        return key.rsplit(".", 1)[-1] if "." in key else "png"


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _c2pa(meta: dict[str, Any]) -> str:
    c2pa = meta.get("c2pa")
    if isinstance(c2pa, dict) and c2pa.get("state"):
        return str(c2pa["state"])
    return "unsigned"


class _Pipe(io.RawIOBase):
    """A write-only, unseekable sink whose bytes are handed out in chunks (zipfile streams into it)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        with self.lock:
            self.buf += bytes(b)
        return len(b)

    def take(self) -> bytes:
        with self.lock:
            out = bytes(self.buf)
            self.buf.clear()
        return out


def manifest_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        gates = ";".join(f"{g['name']}={'' if g.get('score') is None else g['score']}"
                         f"{'' if g.get('passed') is None else (':pass' if g['passed'] else ':FAIL')}"
                         for g in r.get("gates") or [])
        wm = r.get("watermark") or {}
        w.writerow([r["file"], r["kind"], r.get("size") or "", "" if r.get("variant") is None else r["variant"],
                    "" if r.get("page") is None else r["page"], r.get("width") or "", r.get("height") or "",
                    " | ".join(r.get("taglines") or []), r.get("cta") or "", r["sha256"], r["bytes"],
                    "" if r.get("gates_passed") is None else str(r["gates_passed"]).lower(), gates,
                    wm.get("method", "") + (":ok" if wm.get("readback_ok") else "") if wm else "", r.get("c2pa") or ""])
    return out.getvalue().encode("utf-8")


def stream_bundle(plan: BundlePlan, store: ArtifactStore) -> Iterator[bytes]:
    """The zip, chunk by chunk: every file, then manifest.json and manifest.csv."""
    pipe = _Pipe()
    rows: list[dict[str, Any]] = []
    with zipfile.ZipFile(pipe, mode="w", allowZip64=True) as zf:  # type: ignore[arg-type]
        for e in plan.entries:
            data = store.get(e.key)
            digest = hashlib.sha256(data).hexdigest()
            info = zipfile.ZipInfo(e.file, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if e.compress else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
            row = {"file": e.file, **e.row, "sha256": digest, "bytes": len(data)}
            if digest != e.stored_sha256:
                row["stored_sha256"] = e.stored_sha256  # the object changed since it was recorded: say so
            rows.append(row)
            yield pipe.take()
        manifest = {**plan.header, "count": len(rows), "files": rows}
        for name, body in (("manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")),
                           ("manifest.csv", manifest_csv(rows))):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, body)
    yield pipe.take()
