"""Object storage keys: one formatter (and parser where something reads keys back) per kind of object.

    tenants/{tenant}/jobs/{job}/{stage}/{name}.{ext}    what a job's stages write (deterministic: a retried
                                                        task overwrites its own object)
    tenants/{tenant}/uploads/{upload}.png               uploads (every upload is stored as PNG)
    tenants/{tenant}/fonts/{font}.font                  brand kit fonts

Everything a tenant owns lives under ``tenants/{tenant}/``; every key a job writes starts with its
:func:`job_prefix`, which is how the orchestrator checks a stage wrote nothing outside its job.
"""

from __future__ import annotations

from dataclasses import dataclass


def tenant_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}"


def job_prefix(tenant_id: str, job_id: str) -> str:
    """``tenants/{tenant}/jobs/{job}``: every key a job's stages write starts with it."""
    return f"{tenant_prefix(tenant_id)}/jobs/{job_id}"


def stage_key(prefix: str, stage: str, name: str, ext: str) -> str:
    """``{job prefix}/{stage}/{name}.{ext}``; a ``/`` in ``name`` cannot escape into another folder."""
    safe = name.replace("/", "_")
    return f"{prefix}/{stage}/{safe}.{ext}"


def upload_key(tenant_id: str, upload_id: str) -> str:
    """Where an upload lives (the API stores every upload as PNG)."""
    return f"{tenant_prefix(tenant_id)}/uploads/{upload_id}.png"


def font_key(tenant_id: str, font_id: str) -> str:
    """Where a brand kit's font lives (``POST /v1/brands/{id}/font`` writes it)."""
    return f"{tenant_prefix(tenant_id)}/fonts/{font_id}.font"


@dataclass(frozen=True)
class StageKey:
    """The parts of a job artifact's key."""

    tenant_id: str
    job_id: str
    stage: str
    name: str
    ext: str


def parse_stage_key(key: str) -> StageKey:
    """The inverse of :func:`stage_key` under :func:`job_prefix`; ValueError for any other key."""
    parts = key.split("/")
    if len(parts) != 6 or parts[0] != "tenants" or parts[2] != "jobs" or "." not in parts[5]:
        raise ValueError(f"{key!r} is not a job artifact key (tenants/<tenant>/jobs/<job>/<stage>/<name>.<ext>)")
    name, _, ext = parts[5].rpartition(".")
    return StageKey(tenant_id=parts[1], job_id=parts[3], stage=parts[4], name=name, ext=ext)


def in_job(key: str, tenant_id: str, job_id: str) -> bool:
    """True when ``key`` lies under the job's prefix."""
    return key.startswith(job_prefix(tenant_id, job_id) + "/")
