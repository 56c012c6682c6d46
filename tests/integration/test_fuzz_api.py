"""Schemathesis against the live OpenAPI of a real API process (services mode: PostgreSQL, Redis, S3).

Every operation of /openapi.json gets generated requests — valid ones, invalid ones, and valid ones
aimed at real objects of the tenant — sent over HTTP to ``atelier serve`` with a real tenant key. Every
response must pass: no 5xx (not_a_server_error), a documented status code, a documented content type,
and a body that matches the documented schema.

``make test`` sends at least 300 requests; ``make fuzz`` (ATELIER_FUZZ_REQUESTS=5000) at least 5,000.
Failures are collected over the whole run and reported together, one line per distinct failure with a
curl command that reproduces it.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import free_port, wait_port
from tests.procs import Proc, api_key_from, cli

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (requirements-dev.txt)")
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.integration

REQUESTS = int(os.environ.get("ATELIER_FUZZ_REQUESTS", "300"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
TIMEOUT_S = 15.0
SEED = int(os.environ.get("ATELIER_FUZZ_SEED", "8"))
REPORT = Path(os.environ.get("ATELIER_FUZZ_REPORT", "out/fuzz/report.txt"))
INVALID_HTTP = b"Invalid HTTP request received."  # uvicorn's answer to a request that is not valid HTTP/1.1


@dataclass
class Api:
    url: str
    key: str
    proc: Proc
    ids: dict[str, str] = field(default_factory=dict)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (180, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def api(pg_url: str, redis_url: str, s3_endpoint: dict[str, str], tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Api]:
    """``atelier serve`` in services mode (no workers: jobs stay queued, which the API must not mind)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(s3_endpoint)
    env.update({"ATELIER_HOME": str(tmp / "home"), "ATELIER_DATABASE_URL": pg_url, "ATELIER_BROKER_URL": redis_url,
                "ATELIER_SSE_POLL_S": "0.05", "ATELIER_PLAN_PREVIEW_TIMEOUT_S": "8", "PYTHONUNBUFFERED": "1"})
    port = free_port()
    key = api_key_from(cli(["tenants", "create", f"fuzz-{time.time_ns()}"], env))
    proc = Proc("api", ["serve", "--host", "127.0.0.1", "--port", str(port)], env, tmp).start()
    # a planner (rules backend) answers POST /v1/plans:preview; nothing consumes the orchestrator queue, so
    # submitted jobs stay queued and no stage work competes with the API for the CPU
    planner = Proc("planner", ["worker", "--queues", "planning", "--loglevel", "WARNING"], env, tmp).start()
    try:
        wait_port(port, timeout=60)
        api = Api(f"http://127.0.0.1:{port}", key, proc)
        _seed(api)
        yield api
    finally:
        proc.stop()
        planner.stop()


def _seed(api: Api) -> None:
    """Real objects the generated requests can aim at: a finished job with artifacts and an upload."""
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.key}"}, timeout=30) as c:
        upload = c.post("/v1/uploads", files={"file": ("p.png", _png(), "image/png")})
        assert upload.status_code == 201, upload.text
        api.ids["artifact_id"] = upload.json()["id"]
        job = c.post("/v1/jobs", json={"kind": "story", "spec": {"premise": "A kite that wants to see the sea.",
                                                                 "culture": "Gujarati", "pages": 3}})
        assert job.status_code == 202, job.text
        api.ids["job_id"] = job.json()["id"]
        # canceled: its event stream ends after job.canceled, so a generated GET .../events returns
        assert c.post(f"/v1/jobs/{api.ids['job_id']}/cancel").status_code == 202


@dataclass
class Run:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    unsatisfiable: list[str] = field(default_factory=list)
    not_http: int = 0  # requests the HTTP server refused as malformed before the application saw them

    def record(self, operation: str, exc: BaseException, status: int | None, case: Any, headers: dict[str, str],
               response: Any) -> None:
        key = _failure_key(operation, exc, status)
        if key not in self.failures:
            body = (response.content[:300].decode("utf-8", "replace") if response is not None else "").replace("\n", " ")
            self.failures[key] = f"{case.as_curl_command(headers=headers)[:600]}\n      -> {body}"


def _failure_key(operation: str, exc: BaseException, status: int | None = None) -> tuple[str, str]:
    title = getattr(exc, "title", None) or type(exc).__name__
    message = str(getattr(exc, "message", None) or exc).strip()
    first = " ".join(message.split())[:200]
    return operation, f"[{status if status is not None else '-'}] {title}: {first}"


def _exercise(api: Api, operation: Any, mode: GenerationMode, budget: int, run: Run, *,
              path_parameters: dict[str, str] | None = None) -> None:
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None)
    headers = {"Authorization": f"Bearer {api.key}"}

    # a fixed seed in `make test` (the same requests every run); `make fuzz` passes a fresh one each time
    @seed(SEED)
    @settings(max_examples=budget, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def probe(case: Any) -> None:
        run.sent += 1
        try:
            response = case.call(base_url=api.url, headers=headers, timeout=TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a hung or dropped connection is a finding too
            run.record(operation.label, exc, None, case, headers, None)
            return
        run.statuses[response.status_code] += 1
        status = response.status_code
        if status == 400 and response.content == INVALID_HTTP:
            # a generated header the HTTP server itself refuses (a Content-Length that is not a number): the
            # request never reached the application, and 400 is what RFC 9112 asks of the server
            run.not_http += 1
            return
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseExceptionGroup as group:  # schemathesis' FailureGroup: one entry per failed check
            for exc in group.exceptions:
                run.record(operation.label, exc, status, case, headers, response)
        except Exception as exc:  # noqa: BLE001 - collect every distinct failure, keep generating
            run.record(operation.label, exc, status, case, headers, response)

    try:
        probe()
    except Unsatisfiable:  # e.g. no invalid request exists for an operation without parameters
        run.unsatisfiable.append(f"{operation.label} ({mode.value})")


def test_live_openapi_survives_generated_requests(api: Api) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/jobs", "GET /v1/jobs/{job_id}", "POST /v1/uploads"} <= labels, labels

    run = Run()
    # operations with nothing to vary (no parameters, no body) run out of distinct requests early: aim higher
    per_operation = max(4, -(-REQUESTS * 5 // (4 * len(operations))))
    for operation in operations:
        params = [p.name for p in operation.path_parameters]
        real = {name: api.ids[name] for name in params if name in api.ids}
        aimed = len(real) == len(params) and bool(params)
        # valid requests, invalid requests (they must be refused with a documented 4xx), and valid requests
        # aimed at real objects where the path names one
        shares = {"positive": 2, "negative": 2, "aimed": 2} if aimed else {"positive": 3, "negative": 3}
        for kind, share in shares.items():
            budget = max(2, per_operation * share // sum(shares.values()))
            mode = GenerationMode.NEGATIVE if kind == "negative" else GenerationMode.POSITIVE
            _exercise(api, operation, mode, budget, run, path_parameters=real if kind == "aimed" else None)

    assert api.proc.p is not None and api.proc.p.poll() is None, "the API process died:\n" + api.proc.tail()
    report = "\n".join(f"{op}: {what}\n    {curl}" for (op, what), curl in sorted(run.failures.items()))
    summary = (f"fuzz (seed {SEED}): {run.sent} requests over {len(operations)} operations; "
               f"statuses {dict(sorted(run.statuses.items()))}; {run.not_http} refused as malformed HTTP by the "
               f"server; no invalid request exists for {run.unsatisfiable}")
    print("\n" + summary)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(f"{summary}\n{len(run.failures)} distinct failures\n{report}\n")
    errors = [line for line in api.proc.tail(2000).splitlines() if "Traceback" in line or "ERROR" in line]
    assert not run.failures, f"{len(run.failures)} distinct failures in {run.sent} requests (also in {REPORT}):\n" \
                             f"{report}\n--- api errors ---\n" + "\n".join(errors[:20])
    assert run.sent >= REQUESTS, f"only {run.sent} requests were generated (wanted {REQUESTS})"
    assert sum(n for s, n in run.statuses.items() if 200 <= s < 300) > 0, "nothing succeeded: the key is not used"


def _string_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_paths(v, (*path, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _string_paths(v, (*path, k))


def _with_nul_at(value: Any, path: tuple[Any, ...]) -> Any:
    """A copy of ``value`` whose string at ``path`` has a NUL character in it."""
    if not path:
        return value[:8] + "\x00" + value[8:]
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[path[0]] = _with_nul_at(value[path[0]], path[1:])
    return copy


def test_nul_characters_in_json_bodies_are_refused_not_500(api: Api) -> None:
    """PostgreSQL text columns cannot hold NUL: every JSON body with NULs in its strings gets a 4xx or is stored."""
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    headers = {"Authorization": f"Bearer {api.key}"}
    probed, answers = [], Counter()
    for operation in (r.ok() for r in schema.get_all_operations()):
        if operation.method.upper() not in ("POST", "PUT", "PATCH") or not operation.body:
            continue
        if "application/json" not in [b.media_type for b in operation.body]:
            continue

        @seed(SEED)
        @settings(max_examples=3, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(media_type="application/json", path_parameters={
            p.name: api.ids[p.name] for p in operation.path_parameters if p.name in api.ids} or None))
        def probe(case: Any) -> None:
            body = case.body
            for path in list(_string_paths(body))[:16]:  # one NUL at a time, so the rest of the body stays valid
                case.body = _with_nul_at(body, path)
                response = case.call(base_url=api.url, headers=headers, timeout=TIMEOUT_S)
                answers[response.status_code] += 1
                assert response.status_code < 500, f"{case.as_curl_command(headers=headers)} -> {response.status_code}"

        probe()
        probed.append(operation.label)
    assert "POST /v1/jobs" in probed and sum(answers.values()) >= len(probed), (probed, answers)


def test_the_server_still_answers_after_the_fuzzing(api: Api) -> None:
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.key}"}, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get(f"/v1/jobs/{api.ids['job_id']}").json()["status"] == "canceled"


def test_fuzz_budget_is_at_least_the_issue_floor() -> None:
    assert REQUESTS >= 300
    assert Path(__file__).name == "test_fuzz_api.py"
