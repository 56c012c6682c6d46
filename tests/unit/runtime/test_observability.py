"""Logs that name the job and stage they are about (text and JSON), and the metrics workers and the orchestrator
expose (issue 17, "Observable")."""

from __future__ import annotations

import io
import json
import logging
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from atelier_control.db import make_engine, session_factory, session_scope
from atelier_control.models import Base, Job, Stage, Tenant
from atelier_orchestrator.metrics import StateCollector
from atelier_runtime import observability as obs
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from tests.conftest import free_port


@pytest.fixture
def captured() -> Any:
    stream = io.StringIO()
    yield stream
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_atelier_observability", False):
            root.removeHandler(h)


def test_json_logs_carry_the_job_and_stage_they_are_about(captured: io.StringIO) -> None:
    obs.configure_logging("INFO", "json", stream=captured)
    log = logging.getLogger("atelier.test")
    log.info("outside any stage")
    with obs.log_context(job_id="job_1", stage="gpu.background", item="728x90-v0", stage_id="stg_9",
                         tenant_id="ten_2"):
        log.warning("painting %s", "the background", extra={"steps": 4})
        with obs.log_context(item="728x90-v1"):  # nested: the inner ids win, the others stay
            log.error("again")
    log.info("after")
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [r["message"] for r in lines] == ["outside any stage", "painting the background", "again", "after"]
    assert "job_id" not in lines[0] and "job_id" not in lines[3]
    inside = lines[1]
    assert inside["level"] == "WARNING" and inside["logger"] == "atelier.test" and inside["time"]
    assert (inside["job_id"], inside["stage"], inside["item"], inside["stage_id"], inside["tenant_id"]) == \
        ("job_1", "gpu.background", "728x90-v0", "stg_9", "ten_2")
    assert inside["steps"] == 4 and lines[2]["item"] == "728x90-v1" and lines[2]["job_id"] == "job_1"


def test_text_logs_name_the_job_and_stage_too(captured: io.StringIO) -> None:
    obs.configure_logging("INFO", "text", stream=captured)
    with obs.log_context(job_id="job_1", stage="render.ad", item="1080x1080-v0"):
        logging.getLogger("x").info("composed")
    logging.getLogger("x").info("idle")
    first, second = captured.getvalue().splitlines()
    assert first.endswith("INFO x [job=job_1 stage=render.ad[1080x1080-v0]] composed")
    assert second.endswith("INFO x idle")


def test_the_context_belongs_to_its_thread(captured: io.StringIO) -> None:
    obs.configure_logging("INFO", "json", stream=captured)
    seen: list[dict[str, str]] = []
    with obs.log_context(job_id="job_main"):
        t = threading.Thread(target=lambda: seen.append(obs.current_context()))
        t.start()
        t.join()
    assert seen == [{}]  # a new thread starts without the ids of the one that made it


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_stage_runs_count_and_time_by_stage_and_outcome() -> None:
    before = _sample("atelier_stage_runs_total", {"stage": "gpu.test", "status": "succeeded"})
    gpu = _sample("atelier_gpu_seconds_total", {"stage": "gpu.test"})
    obs.record_stage_run("gpu.test", "succeeded", 1.5, 1.25)
    obs.record_stage_run("gpu.test", "failed", 0.2, 0.0)
    assert _sample("atelier_stage_runs_total", {"stage": "gpu.test", "status": "succeeded"}) == before + 1
    assert _sample("atelier_gpu_seconds_total", {"stage": "gpu.test"}) == gpu + 1.25
    assert _sample("atelier_stage_duration_seconds_count", {"stage": "gpu.test", "status": "failed"}) >= 1
    # the default registry carries the process collectors the issue asks for
    assert REGISTRY.get_sample_value("process_cpu_seconds_total") is not None


def test_the_state_collector_counts_jobs_stages_and_queues(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    Base.metadata.create_all(engine)
    factory = session_factory(engine)
    with session_scope(factory) as s:
        s.add(Tenant(id="ten_1", name="acme"))
        s.flush()
        for i, status in enumerate(["queued", "running", "running", "succeeded"]):
            s.add(Job(id=f"job_{i}", tenant_id="ten_1", kind="story", status=status, spec={}, request_hash="h"))
        s.flush()
        for i, status in enumerate(["pending", "queued", "running", "succeeded", "succeeded"]):
            s.add(Stage(job_id="job_1", name=f"s{i}", item="", queue="planning", status=status))
    registry = CollectorRegistry()
    depths = {"gpu.diffusion": 7}
    registry.register(StateCollector(factory, lambda q: depths.get(q, 0)))
    text = generate_latest(registry).decode()
    assert 'atelier_jobs{state="running"} 2.0' in text and 'atelier_jobs{state="failed"} 0.0' in text
    assert 'atelier_stages{state="pending"} 1.0' in text and 'state="succeeded"' not in text.split("atelier_stages")[-1]
    assert 'atelier_queue_depth{queue="gpu.diffusion"} 7.0' in text and 'atelier_queue_depth{queue="render"} 0.0' in text

    def broken(queue: str) -> int:
        raise ConnectionError("redis is down")

    errors = _sample("atelier_metrics_source_errors_total", {"source": "broker"})
    down = CollectorRegistry()
    down.register(StateCollector(factory, broken))
    text = generate_latest(down).decode()  # the scrape still answers, with what it could read
    assert "atelier_jobs{" in text and "atelier_queue_depth{" not in text
    assert _sample("atelier_metrics_source_errors_total", {"source": "broker"}) == errors + 1
    engine.dispose()


def test_the_metrics_server_serves_the_default_registry() -> None:
    port = free_port()
    assert obs.start_metrics_server(None) is False
    assert obs.start_metrics_server(port, addr="127.0.0.1") is True
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()  # noqa: S310
    assert "atelier_stage_runs_total" in body and "process_resident_memory_bytes" in body
