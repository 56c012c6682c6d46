"""`make bench`: services-mode benchmarks (real Redis, PostgreSQL, an S3 endpoint, separate worker processes).

Writes bench/results.json:
- stage_handoff_ms {p50, p95, n}: from the end of a stage item's last dependency (or, if later, the end of
  the previous task on the same worker process) to the start of the stage item — the orchestration and
  broker latency of one hand-off, without the time spent queueing behind busy workers.
- overhead_ratio: a 12-image campaign's end-to-end wall time (POST → job.succeeded event) divided by the
  time its diffusion calls alone took in the same run, with a bench-sized random SDXL (~1 s per image here).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import PG_ADMIN, free_port, wait_port  # noqa: E402
from tests.procs import Proc, api_key_from, cli  # noqa: E402

WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results.json"
BIN = Path(sys.executable).parent

CAMPAIGN = {
    "brand": {"name": "Lumen", "palette": ["#3B2416", "#F5E6D3", "#C8102E"]},
    "product": {"name": "Cold Brew Bottle", "description": "A glass bottle of slow-steeped cold brew coffee."},
    "taglines": ["Slow steeped. Boldly smooth.", "Twelve hours in every sip"],
    "cta": "Shop now",
    "sizes": ["1080x1080", "1200x628", "1080x1920"],
    "variants": 4,
    "model": "sdxl-bench",
    "seed": 1,
}


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _ts(v: Any) -> float:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp()
    return datetime.fromisoformat(str(v)).timestamp()


def handoffs(rows: list[dict[str, Any]], graph: Any) -> list[float]:
    """Hand-off latency (ms) for every stage item that had a dependency."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    out = []
    for r in rows:
        st = graph.stage(r["name"])
        if not st.after:
            continue
        ends = []
        for dep_name in st.after:
            dep = graph.stage(dep_name)
            deps = by_name[dep_name]
            if graph.per_item(st, dep):
                deps = [d for d in deps if d["item"] == r["item"]]
            ends += [_ts(d["finished_at"]) for d in deps]
        ready = max(ends)
        start = _ts(r["started_at"])
        same_worker = [_ts(o["finished_at"]) for o in rows if o is not r and o["worker"] == r["worker"]
                       and _ts(o["finished_at"]) <= start]
        if same_worker:
            ready = max(ready, max(same_worker))
        out.append((start - ready) * 1000.0)
    return out


def diffusion_alone(models_file: Path, sizes: list[str], runs: int = 3) -> float:
    """Seconds per image of the bench model in this process, with nothing else running (the baseline)."""
    from atelier_gpu.recipes import text_to_image as t2i
    from atelier_gpu.registry import ModelRegistry

    reg = ModelRegistry(models_file)
    spec = reg.spec("sdxl-bench")
    pipe = reg.load("sdxl-bench")
    dims = [t2i.generation_size(*map(int, sz.split("x")), spec.max_side or 256) for sz in sizes]
    t2i.run(pipe, family=spec.family, prompt="warm up", width=dims[0][0], height=dims[0][1], steps=spec.steps,
            guidance=spec.guidance, seed=0)
    t0 = time.perf_counter()
    for i in range(runs):
        w, h = dims[i % len(dims)]
        t2i.run(pipe, family=spec.family, prompt="a studio backdrop", width=w, height=h, steps=spec.steps,
                guidance=spec.guidance, seed=i)
    return (time.perf_counter() - t0) / runs


def main() -> int:
    from atelier_gpu.tiny import init_tiny
    from atelier_migrations import upgrade
    from atelier_orchestrator.graphs import GRAPHS

    WORK.mkdir(parents=True, exist_ok=True)
    models = WORK / "models"
    if not (models / "models.yaml").exists() or "sdxl-bench" not in (models / "models.yaml").read_text():
        init_tiny(models, bench=True)
    alone = diffusion_alone(models / "models.yaml", CAMPAIGN["sizes"])  # type: ignore[arg-type]
    dbname = f"atelier_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    pg_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{dbname}"
    upgrade(pg_url)
    redis_url = "redis://127.0.0.1:6379/12"
    redis.Redis.from_url(redis_url).flushdb()
    s3_port = free_port()
    s3 = subprocess.Popen([str(BIN / "nanio"), "serve", "--data-dir", str(WORK / "s3"), "--host", "127.0.0.1",
                           "--port", str(s3_port), "--log-level", "warning", "--no-access-log"],
                          env=dict(os.environ, NANIO_ACCESS_KEY="bench", NANIO_SECRET_KEY="bench-secret-key"))
    api_port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", ATELIER_HOME=str(WORK / "home"), ATELIER_DATABASE_URL=pg_url,
               ATELIER_BROKER_URL=redis_url, ATELIER_STORAGE="s3", ATELIER_S3_ENDPOINT=f"127.0.0.1:{s3_port}",
               ATELIER_S3_ACCESS_KEY="bench", ATELIER_S3_SECRET_KEY="bench-secret-key", ATELIER_S3_BUCKET="bench",
               ATELIER_MODELS_FILE=str(models / "models.yaml"), ATELIER_GEN_MAX_SIDE="256", ATELIER_SSE_POLL_S="0.05")
    logs = WORK / "logs"
    logs.mkdir(exist_ok=True)
    procs = [
        Proc("api", ["serve", "--port", str(api_port)], env, logs),
        Proc("orchestrator", ["worker", "--queues", "orchestrator", "--loglevel", "WARNING"], env, logs),
        Proc("planner-render", ["worker", "--queues", "planning,render", "--loglevel", "WARNING"], env, logs),
        Proc("gpu-diffusion", ["worker", "--queues", "gpu.diffusion", "--loglevel", "WARNING"], env, logs),
        Proc("gpu-watermark", ["worker", "--queues", "gpu.watermark", "--loglevel", "WARNING"], env, logs),
    ]
    try:
        wait_port(s3_port)
        for p in procs:
            p.start()
        wait_port(api_port, timeout=90)
        key = api_key_from(cli(["tenants", "create", f"bench-{uuid.uuid4().hex[:6]}"], env))
        client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": f"Bearer {key}"},
                              timeout=600)

        def run_job(spec: dict[str, Any]) -> tuple[str, float]:
            t0 = time.perf_counter()
            r = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec})
            r.raise_for_status()
            job_id = r.json()["id"]
            with client.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
                for line in resp.iter_lines():
                    if line.startswith("event: job."):
                        if line.split(": ", 1)[1] in ("job.succeeded", "job.failed", "job.canceled"):
                            break
            return job_id, time.perf_counter() - t0

        run_job(dict(CAMPAIGN, sizes=["1080x1080"], variants=1, seed=99))  # warm: model load, connections
        job_id, wall = run_job(CAMPAIGN)
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] != "succeeded":
            raise RuntimeError(f"bench job {job['status']}: {job.get('error')}")
        with psycopg.connect(pg_url) as conn:
            cur = conn.execute("SELECT name, item, worker, started_at, finished_at, gpu_seconds FROM stages WHERE job_id = %s",
                               (job_id,))
            rows = [dict(zip(("name", "item", "worker", "started_at", "finished_at", "gpu_seconds"), row, strict=True))
                    for row in cur.fetchall()]
        diffusion = sum(r["gpu_seconds"] for r in rows if r["name"] == "gpu.background")
        hand = handoffs(rows, GRAPHS["campaign"])
        images = sum(1 for r in rows if r["name"] == "gpu.background")
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results.update({
            "stage_handoff_ms": {"p50": round(percentile(hand, 0.5), 2), "p95": round(percentile(hand, 0.95), 2),
                                 "n": len(hand)},
            "overhead_ratio": round(wall / diffusion, 3),
            "overhead_detail": {"images": images, "wall_s": round(wall, 3), "diffusion_s": round(diffusion, 3),
                                "s_per_image": round(diffusion / images, 3), "model": "sdxl-bench",
                                "s_per_image_alone": round(alone, 3),
                                "gen_max_side": 256, "mean_handoff_ms": round(statistics.mean(hand), 2)},
            "machine": {"cpus": os.cpu_count(), "device": "cpu"},
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        })
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({k: results[k] for k in ("stage_handoff_ms", "overhead_ratio", "overhead_detail")}, indent=2))
        return 0
    finally:
        for p in procs:
            p.stop()
        s3.terminate()
        s3.wait(timeout=10)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    raise SystemExit(main())
