"""The bench-only simulated GPU fleet (bench/simfleet.py) is real plumbing, and only runs when asked for.

A two-slot simulated worker takes a campaign's GPU stages through the production stage runner: the orchestrator,
the planner and ``deliver`` are the real ones, and ``deliver`` reads the simulated assets back from S3.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import wait_port
from tests.procs import Proc, Stack, api_key_from, cli, stack_env, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SIMFLEET = ROOT / "bench" / "simfleet.py"
CAMPAIGN = {
    "brand": {"name": "Lumen", "palette": ["#3B2416", "#F5E6D3"]},
    "product": {"name": "Cold Brew Bottle", "description": "A glass bottle of cold brew coffee."},
    "taglines": ["Slow steeped. Boldly smooth."],
    "sizes": ["1080x1080", "1200x628"],
    "variants": 1,
    "seed": 3,
}


def test_refuses_to_start_without_the_bench_flag(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ATELIER_BENCH_SIMULATED_GPU"}
    env["ATELIER_BROKER_URL"] = "redis://127.0.0.1:6379/15"
    out = subprocess.run([sys.executable, str(SIMFLEET), "--slots", "2"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "ATELIER_BENCH_SIMULATED_GPU=1" in out.stderr
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import simfleet
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert not simfleet.enabled({}) and not simfleet.enabled({"ATELIER_BENCH_SIMULATED_GPU": "true"})
    with pytest.raises(RuntimeError, match="bench-only"):
        simfleet.simulated_app(None, ["gpu.diffusion"], stages=["gpu.background"], slots=1, env={})


@pytest.fixture(scope="module")
def stack(pg_url: str, redis_url: str, s3_endpoint: dict[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("simfleet")
    env = stack_env(tmp, pg_url=pg_url, redis_url=redis_url, s3=s3_endpoint, models_file=tmp / "no-models.yaml")
    sim_env = dict(env, ATELIER_BENCH_SIMULATED_GPU="1")
    s = Stack(env, tmp)
    s.start_api()
    s.start_worker("orchestrator", "orchestrator")
    s.start_worker("planner", "planning")
    for name, args in (("sim-gpu", ["--queues", "gpu.diffusion,gpu.identity,gpu.watermark", "--slots", "2",
                                    "--time-scale", "0.05"]),
                       # render.ad simulated, deliver real: it reads the simulated assets back from storage
                       ("sim-render", ["--queues", "render", "--slots", "2", "--stages", "render.ad",
                                       "--time-scale", "0.05"])):
        s.procs[name] = Proc(name, args, sim_env, tmp, exe=[sys.executable, str(SIMFLEET)]).start()
    try:
        wait_port(s.port, timeout=60)
        yield s
    finally:
        s.stop()


def test_simulated_slots_run_a_campaign_through_the_real_stage_protocol(stack: Stack) -> None:
    key = api_key_from(cli(["tenants", "create", f"simfleet-{time.time_ns()}"], stack.env))
    with stack.client(key) as c:
        r = c.post("/v1/jobs", json={"kind": "campaign", "spec": CAMPAIGN})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        job = wait_until(lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["status"] in
                         ("succeeded", "failed", "canceled") and j, timeout=25, what="the job to end")
        assert job["status"] == "succeeded", stack.logs() + str(job)
        with psycopg.connect(stack.env["ATELIER_DATABASE_URL"]) as conn:
            rows = conn.execute("SELECT name, item, output, gpu_seconds FROM stages WHERE job_id = %s",
                                (job_id,)).fetchall()
        stages = {(name, item): {"output": out or {}, "gpu_seconds": gpu} for name, item, out, gpu in rows}
        for item in ("1080x1080-v0", "1200x628-v0"):
            for name in ("gpu.background", "gpu.watermark", "render.ad"):
                out = stages[(name, item)]["output"]
                assert out["simulated"]["device_s"] > 0, out  # it slept a device time ...
            assert stages[("gpu.background", item)]["output"]["recipe"] == "simulated"
            assert stages[("gpu.background", item)]["gpu_seconds"] > 0  # device time, as a real GPU stage reports
        assert "simulated" not in stages[("deliver", "")]["output"]  # ... and the real deliver ran after it
        arts = c.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
        kinds = sorted(a["kind"] for a in arts)
        assert kinds.count("background") == 2 and kinds.count("asset") == 2 and "manifest" in kinds
        for a in arts:  # every artifact is real bytes in the S3 store, as recorded
            body = c.get(a["url"])
            assert body.status_code == 200
            assert hashlib.sha256(body.content).hexdigest() == a["sha256"]
            if a["kind"] in ("background", "asset"):
                assert body.content.startswith(b"\x89PNG")
