"""Probes and metrics: ``/healthz`` (alive), ``/readyz`` (dependencies answer), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ..deps import CeleryDep, EngineDep, MetricsDep, RuntimeDep, SettingsDep, StoreDep
from ..health import check_readiness
from ..problems import problem_response, problem_responses, problem_type
from ..schemas import Health, Readiness

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health, summary="Liveness (no dependencies)")
def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503),
            summary="Readiness: database, broker, storage and runtime state answer")
async def readyz(engine: EngineDep, celery: CeleryDep, store: StoreDep, runtime: RuntimeDep,
                 settings: SettingsDep) -> Readiness | JSONResponse:
    checks = await check_readiness(engine=engine, celery=celery, store=store, runtime=runtime,
                                   embedded=settings.embedded)
    failed = [name for name, result in checks.items() if not result.ok]
    if failed:
        detail = "; ".join(f"{name}: {checks[name].error}" for name in failed)
        return problem_response(503, title="Not ready", type_=problem_type("not ready"), detail=detail,
                                extra={"checks": {k: v.model_dump() for k, v in checks.items()}})
    return Readiness(checks=checks)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)
