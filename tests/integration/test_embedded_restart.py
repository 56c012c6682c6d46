"""The embedded mode after a crash: `atelier serve` SIGKILLed mid-job and started again finishes the job at once.

Its in-memory broker starts empty, so every stage the database says is queued or running is re-sent when the
process starts; the reconciler's stall timers (set far beyond this test's guard here) play no part.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.conftest import free_port, wait_port
from tests.procs import Proc, api_key_from, cli, wait_until

pytestmark = pytest.mark.integration

SLOW_STEPS = 40  # the tiny SDXL with many steps: a scene takes long enough to be killed mid-way
TERMINAL = ("succeeded", "failed", "canceled")


def _slow_models(tiny_models: Path, dest: Path) -> Path:
    doc = yaml.safe_load(tiny_models.read_text())
    for entry in doc["models"].values():
        entry["path"] = str((tiny_models.parent / entry["path"]).resolve())
    doc["models"]["sdxl-tiny"]["steps"] = SLOW_STEPS
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "models.yaml").write_text(yaml.safe_dump(doc))
    return dest / "models.yaml"


def test_a_killed_embedded_server_finishes_its_job_without_waiting_for_the_stall_timers(
        tmp_path: Path, tiny_models: Path) -> None:
    from atelier_control.models import Event

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(ATELIER_HOME=str(home), ATELIER_MODELS_FILE=str(_slow_models(tiny_models, tmp_path / "models")),
               ATELIER_GEN_MAX_SIDE="64", ATELIER_QUEUED_STALL_S="3600", ATELIER_STALL_AFTER_S="3600",
               ATELIER_START_STALL_S="3600", ATELIER_RENDER_OCR="false", PYTHONUNBUFFERED="1")
    key = api_key_from(cli(["tenants", "create", "crash"], env))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Proc("serve-1", ["serve", "--port", str(port)], env, tmp_path).start()
    restarted: Proc | None = None
    try:
        wait_port(port, timeout=120)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            r = client.post("/v1/jobs", json={"kind": "story", "spec": {
                "premise": "Two friends fly a kite over the river.", "culture": "Japan", "pages": 2, "seed": 3}})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]

            def a_scene_is_running() -> bool:
                stages = client.get(f"/v1/jobs/{job_id}").json()["stages"]
                return any(s["name"] == "gpu.scene" and s["status"] == "running" for s in stages)

            wait_until(a_scene_is_running, timeout=300, interval=0.2, what="a running gpu.scene")
        server.kill()  # SIGKILL: the in-memory broker and every worker die with it

        restarted = Proc("serve-2", ["serve", "--port", str(port)], env, tmp_path).start()
        wait_port(port, timeout=120)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            job = wait_until(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"] in TERMINAL and j,
                             timeout=600, interval=0.5, what="the job to end after the restart")
        assert job["status"] == "succeeded", job
        engine = create_engine(f"sqlite:///{home / 'atelier.db'}")
        with Session(engine) as session:
            reasons = [e.data.get("reason") for e in session.scalars(
                select(Event).where(Event.job_id == job_id, Event.type == "stage.redriven"))]
        engine.dispose()
        assert reasons and all(r == "the process restarted with an empty broker" for r in reasons), reasons
    finally:
        server.kill()
        if restarted is not None:
            restarted.stop()
