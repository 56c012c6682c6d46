"""What a tenant's records add to verifying a file (``POST /v1/verify``): its jobs and delivered asset sizes."""

from __future__ import annotations

from typing import Any

from atelier_control.models import Artifact, Job
from atelier_provenance.verify import MAX_CANDIDATE_SIZES
from sqlalchemy import func, select
from sqlalchemy.orm import Session

MAX_CANDIDATE_JOBS = 2000
MAX_DISTINCT_SIZES = 500  # the most common delivered sizes considered


class SessionTenantRecords:
    """``atelier_provenance.verify.TenantRecords`` read from the database, within one tenant."""

    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def jobs(self) -> list[tuple[str, str]]:
        rows = self.session.execute(select(Job.id, Job.kind).where(Job.tenant_id == self.tenant_id)
                                    .order_by(Job.created_at.desc()).limit(MAX_CANDIDATE_JOBS)).all()
        return [(r[0], r[1]) for r in rows]

    def asset_sizes(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """Sizes of the tenant's delivered assets with this image's aspect ratio (within 2%), most common first."""
        # one row per distinct size (the database counts), so the read is bounded by the sizes, not the history
        rows = self.session.execute(
            select(Artifact.width, Artifact.height, func.count()).where(
                Artifact.tenant_id == self.tenant_id, Artifact.kind == "asset", Artifact.width.is_not(None),
                Artifact.height.is_not(None))
            .group_by(Artifact.width, Artifact.height).order_by(func.count().desc()).limit(MAX_DISTINCT_SIZES)).all()
        ratio = size[0] / size[1]
        counts: dict[tuple[int, int], int] = {}
        for w, h, n in rows:
            if w and h and abs(w / h - ratio) / ratio < 0.02 and (w, h) != size:
                counts[(w, h)] = int(n)
        return [s for s, _ in sorted(counts.items(), key=lambda kv: -kv[1])][:MAX_CANDIDATE_SIZES]

    def job(self, job_id: str) -> dict[str, Any] | None:
        job = self.session.get(Job, job_id)
        if job is None or job.tenant_id != self.tenant_id:
            return None
        return {"id": job.id, "kind": job.kind, "status": job.status,
                "created_at": job.created_at.isoformat() if job.created_at else None}
