"""Readiness: can this process reach its database, broker, object store and runtime state?"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import anyio
from atelier_runtime.state import RuntimeState
from atelier_runtime.storage import ArtifactStore
from celery import Celery
from sqlalchemy import Engine, text

from .schemas import CheckResult

CHECK_TIMEOUT_S = 3.0


def _database(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _broker(celery: Celery, timeout_s: float) -> None:
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout_s)


async def _run(name: str, check: Callable[[], None], results: dict[str, CheckResult], timeout_s: float) -> None:
    start = time.perf_counter()
    try:
        with anyio.fail_after(timeout_s):
            # a hung client must not hang the probe: the thread is abandoned on timeout
            await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
    except TimeoutError:
        results[name] = CheckResult(ok=False, error=f"no answer within {timeout_s:g} s")
    except Exception as exc:  # noqa: BLE001 - any failure is "not ready", reported by name
        results[name] = CheckResult(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
    else:
        results[name] = CheckResult(ok=True, ms=round((time.perf_counter() - start) * 1000, 2))


async def check_readiness(*, engine: Engine, celery: Celery, store: ArtifactStore, runtime: RuntimeState,
                          embedded: bool, timeout_s: float = CHECK_TIMEOUT_S) -> dict[str, CheckResult]:
    """Run every check concurrently; the broker is skipped in embedded mode (it lives in this process)."""
    checks: dict[str, Callable[[], None]] = {
        "database": partial(_database, engine),
        "storage": store.ping,
        "runtime": runtime.ping,
    }
    if not embedded:
        checks["broker"] = partial(_broker, celery, timeout_s)
    results: dict[str, CheckResult] = {}
    async with anyio.create_task_group() as tg:
        for name, check in checks.items():
            tg.start_soon(_run, name, check, results, timeout_s)
    if embedded:
        results["broker"] = CheckResult(ok=True, skipped=True)
    return dict(sorted(results.items()))
