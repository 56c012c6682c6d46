"""`make bench`: services-mode benchmarks (real Redis, PostgreSQL, an S3 endpoint, separate worker processes).

Writes bench/results.json:
- stage_handoff_ms {p50, p95, n}: from the end of a stage item's last dependency (or, if later, the end of
  the previous task on the same worker process) to the start of the stage item — the orchestration and
  broker latency of one hand-off, without the time spent queueing behind busy workers.
- overhead_ratio: a 12-image campaign's end-to-end wall time (POST → job.succeeded event) divided by the
  time its diffusion calls alone took in the same run, with a bench-sized random SDXL (~1 s per image here).
  ``overhead_detail.breakdown`` splits the wall time: before the first image (planning and hand-offs),
  the diffusion span (busy in pipeline calls, and the diffusion worker's time outside them), after the
  last image (render, watermark and delivery of the last batch) and the client's share (HTTP, SSE);
  ``stage_seconds`` gives each stage's mean run time and ``cpu`` the CPU seconds of every process.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import CAMPAIGN, CpuMeter, Services, bench_models, machine, merge_results, percentile, run_job, ts  # noqa: E402

STAGE_COLUMNS = "name, item, worker, started_at, finished_at, gpu_seconds"


def ran(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stage items a worker ran (the orchestrator marks a skipped stage done itself: no worker)."""
    return [r for r in rows if r["worker"] and r["started_at"] is not None and r["finished_at"] is not None]


def handoffs(rows: list[dict[str, Any]], graph: Any) -> list[float]:
    """Hand-off latency (ms) for every stage item that had a dependency."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in rows:  # a stage skipped without a worker still ends (finished_at) when its dependents may start
        if r["finished_at"] is not None:
            by_name.setdefault(r["name"], []).append(r)
    rows = ran(rows)
    out = []
    for r in rows:
        st = graph.stage(r["name"])
        if not st.after:
            continue
        ends = []
        for dep_name in st.after:
            dep = graph.stage(dep_name)
            deps = by_name.get(dep_name, [])
            if graph.per_item(st, dep):
                deps = [d for d in deps if d["item"] == r["item"]]
            ends += [ts(d["finished_at"]) for d in deps]
        if not ends:
            continue
        ready = max(ends)
        start = ts(r["started_at"])
        same_worker = [ts(o["finished_at"]) for o in rows if o is not r and o["worker"] == r["worker"]
                       and ts(o["finished_at"]) <= start]
        if same_worker:
            ready = max(ready, max(same_worker))
        out.append((start - ready) * 1000.0)
    return out


def breakdown(rows: list[dict[str, Any]], job: dict[str, Any], client_wall: float) -> dict[str, Any]:
    """Where a campaign's wall time went, from the stage rows' timestamps (seconds)."""
    bg = [r for r in rows if r["name"] == "gpu.background"]
    first, last = min(ts(r["started_at"]) for r in bg), max(ts(r["finished_at"]) for r in bg)
    created, finished = ts(job["created_at"]), ts(job["finished_at"])
    diffusion = sum(r["gpu_seconds"] for r in bg)
    span = last - first
    return {"before_first_image_s": round(first - created, 3), "diffusion_span_s": round(span, 3),
            "in_pipeline_s": round(diffusion, 3), "diffusion_worker_outside_pipeline_s": round(span - diffusion, 3),
            "after_last_image_s": round(finished - last, 3), "client_s": round(client_wall - (finished - created), 3)}


def stage_seconds(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, list[float]] = {}
    for r in ran(rows):
        out.setdefault(r["name"], []).append(ts(r["finished_at"]) - ts(r["started_at"]))
    return {name: {"n": len(v), "mean_s": round(statistics.mean(v), 3), "sum_s": round(sum(v), 3)}
            for name, v in out.items()}


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
    from atelier_orchestrator.graphs import GRAPHS

    models_file = bench_models()
    at_start = machine()
    alone = diffusion_alone(models_file, CAMPAIGN["sizes"])
    with Services("overhead", redis_db=12, models_file=models_file) as s:
        procs = [s.start_api(),
                 s.worker("orchestrator", "orchestrator"),
                 s.worker("planner-render", "planning,render"),
                 s.worker("gpu-diffusion", "gpu.diffusion"),
                 s.worker("gpu-watermark", "gpu.watermark")]
        client = s.client(s.tenant())
        run_job(client, dict(CAMPAIGN, sizes=["1080x1080"], variants=1, seed=99))  # warm: model load, connections
        meter = CpuMeter({p.name: p.pid for p in procs}).start()
        job_id, wall = run_job(client, CAMPAIGN)
        cpu = meter.stop()
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] != "succeeded":
            raise RuntimeError(f"bench job {job['status']}: {job.get('error')}")
        rows = s.query(f"SELECT {STAGE_COLUMNS} FROM stages WHERE job_id = %s", (job_id,))
        job_row = s.query("SELECT created_at, finished_at FROM jobs WHERE id = %s", (job_id,))[0]
    diffusion = sum(r["gpu_seconds"] for r in rows if r["name"] == "gpu.background")
    hand = handoffs(rows, GRAPHS["campaign"])
    images = sum(1 for r in rows if r["name"] == "gpu.background")
    results = merge_results({
        "stage_handoff_ms": {"p50": round(percentile(hand, 0.5), 2), "p95": round(percentile(hand, 0.95), 2),
                             "n": len(hand)},
        "overhead_ratio": round(wall / diffusion, 3),
        "overhead_detail": {"images": images, "wall_s": round(wall, 3), "diffusion_s": round(diffusion, 3),
                            "s_per_image": round(diffusion / images, 3), "model": "sdxl-bench",
                            "s_per_image_alone": round(alone, 3),
                            "gen_max_side": 256, "mean_handoff_ms": round(statistics.mean(hand), 2),
                            "breakdown": breakdown(rows, job_row, wall), "stage_seconds": stage_seconds(rows),
                            "cpu": cpu},
        "machine": at_start,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    print(json.dumps({k: results[k] for k in ("stage_handoff_ms", "overhead_ratio", "overhead_detail")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
