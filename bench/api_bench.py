"""`make bench`: ``POST /v1/jobs`` throughput and latency at a fixed concurrency, next to a bare FastAPI route.

A live API process (``atelier serve``) in services mode — a fresh PostgreSQL database, Redis as the
broker — and bench/bare_api.py (one POST route answering 202, served with the same uvicorn settings)
are both loaded by wrk in the same run, with the same settings (``--connections`` keep-alive
connections, ``--threads`` wrk threads, ``--duration`` seconds after a short warm-up) and the same body,
through bench/wrk_submit.lua: a valid one-image campaign with the tenant's bearer token and no
Idempotency-Key, so every request creates a job. No orchestrator or worker process runs: the accepted
jobs only queue (their start messages wait in Redis), so nothing else competes for the CPU while wrk
runs; the database and the Redis database are dropped afterwards.

Merges into bench/results.json: ``api_submit`` {rps, p50_ms, p99_ms, bare_rps} and ``api_submit_detail``
(both runs in full, non-2xx counts, an unloaded one-connection run of each, a run at the API's database
pool size, the CPU per request of the server process and of PostgreSQL's backends, the CPU of the route's
service calls measured in-process, and the jobs and queued messages left behind).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import (  # noqa: E402
    RESULTS,
    BackendSampler,
    CpuMeter,
    Services,
    free_port,
    machine,
    merge_results,
    wait_port,
)

HERE = Path(__file__).resolve().parent
SHORT = ("connections", "requests", "rps", "p50_ms", "p99_ms", "non_2xx", "server_cpu_ms_per_request")
LUA = HERE / "wrk_submit.lua"
BODY = {"kind": "campaign",
        "spec": {"brand": {"name": "Lumen", "palette": ["#3B2416", "#F5E6D3"]},
                 "product": {"name": "Cold Brew", "description": "A bottle of cold brew coffee"},
                 "taglines": ["Slow steeped. Boldly smooth."], "cta": "Shop now", "sizes": ["1080x1080"],
                 "variants": 1}}


def service_cpu(s: Services, key: str, n: int = 200) -> dict[str, float]:
    """CPU ms per submission of the route's service calls alone, in this process (no HTTP, no FastAPI).

    The same functions the route calls, against the same database and broker: the key lookup, the body's
    validation, ``submit_job`` (brand kit, spec checks, job + event rows, commit, broker message, the view),
    and the broker message by itself. What the API process spends beyond their sum is the HTTP server,
    FastAPI's dependencies and thread-pool hops, response serialisation and the middleware.
    """
    from atelier_api import jobs as job_service
    from atelier_contracts.specs import JobRequest
    from atelier_contracts.tasks import T_START_JOB
    from atelier_control.auth import key_owner
    from atelier_control.db import make_engine, session_factory
    from atelier_runtime.celeryapp import make_celery
    from atelier_runtime.settings import Settings

    settings = Settings(database_url=s.pg_url, broker_url=s.redis_url, home=s.work / "home")
    engine = make_engine(s.pg_url)
    factory, celery = session_factory(engine), make_celery(settings)
    spent = {"key_lookup": 0.0, "validation": 0.0, "submit_job": 0.0}

    def once(timed: bool) -> None:
        with factory() as session:
            t0 = time.process_time()
            owner = key_owner(session, key)  # what the API's key dependency runs
            t1 = time.process_time()
            request = JobRequest.model_validate(BODY)
            t2 = time.process_time()
            job_service.submit_job(session, celery, tenant_id=owner.tenant_id, request=request)
            t3 = time.process_time()
        if timed:
            for k, v in zip(spent, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                spent[k] += v

    for i in range(n + 20):
        once(i >= 20)
    t0 = time.process_time()
    for _ in range(n):
        celery.send_task(T_START_JOB, args=["job_bench_send_only"])
    broker = time.process_time() - t0
    engine.dispose()
    out = {k: round(v * 1000 / n, 3) for k, v in spent.items()}
    out["broker_message_alone"] = round(broker * 1000 / n, 3)
    out["total"] = round(sum(spent.values()) * 1000 / n, 3)
    return out


def wrk(url: str, *, body_file: Path, token: str, connections: int, threads: int, seconds: float,
        procs: dict[str, int | list[int]]) -> dict[str, Any]:
    """One wrk run; its WRK_JSON line, wrk's own summary and the CPU the server and the machine used.

    ``procs`` names the processes to account for; the first is the server.
    """
    seconds = float(math.ceil(seconds))  # wrk takes whole seconds ("-d 7.5s" is a usage error)
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s",
           "-s", str(LUA), url]
    env = dict(os.environ, WRK_BODY_FILE=str(body_file), WRK_TOKEN=token)
    meter = CpuMeter(procs).start()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    cpu = meter.stop()
    server = cpu["cpu_s"][next(iter(procs))]
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr or out.stdout}")
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"no WRK_JSON line from wrk: {out.stdout}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    lat = raw["latency_us"]
    n = raw["requests"]
    non2xx = sum(v for k, v in raw["status_codes"].items() if not k.startswith("2"))
    return {"connections": connections, "threads": threads, "seconds": seconds, "requests": n,
            "rps": round(n / (raw["duration_us"] / 1e6), 1),
            "p50_ms": round(lat["p50"] / 1000, 2), "p90_ms": round(lat["p90"] / 1000, 2),
            "p99_ms": round(lat["p99"] / 1000, 2), "mean_ms": round(lat["mean"] / 1000, 2),
            "max_ms": round(lat["max"] / 1000, 2), "status_codes": raw["status_codes"], "non_2xx": non2xx,
            "wrk_non_2xx_or_3xx": raw["errors"]["status"],
            "socket_errors": {k: v for k, v in raw["errors"].items() if k != "status"},
            "server_cpu_ms_per_request": round(server * 1000 / n, 3) if n else None,
            "server_cpu_utilisation": round(server / cpu["wall_s"], 3),
            "cpu_ms_per_request": {k: round(v * 1000 / n, 3) for k, v in cpu["cpu_s"].items()} if n else {},
            "rest_of_machine_cpu_s": cpu["other_cpu_s"], "machine_utilisation": cpu["machine_utilisation"],
            "wrk_summary": [ln for ln in out.stdout.splitlines() if ln and not ln.startswith("WRK_JSON ")]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (1 leaves the cores to the servers)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes of the headline run (`atelier serve --workers`, and the bare route's), default "
                         "one per core; one process of each is measured too")
    ap.add_argument("--pool-size", type=int, default=20,
                    help="the API's SQLAlchemy pool_size (atelier_control.db): one more run at this concurrency")
    ap.add_argument("--out", type=Path, default=None, help="results file (default bench/results.json)")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: run `make sysdeps` (Debian package wrk)", file=sys.stderr)
        return 2
    at_start = machine()
    multi = max(1, args.workers)
    # the rate limit and the GPU quota stay on (their Redis script and SQL sum are part of every submission) but
    # far above what the run submits, so every request makes a job
    limits = {"ATELIER_RATE_LIMIT_JOBS_PER_MINUTE": "1000000000", "ATELIER_QUOTA_GPU_SECONDS_PER_DAY": "1e15"}
    with Services("api", redis_db=10, env=limits) as s, tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_text(json.dumps(BODY))
        apis = {1: s.start_api(workers=1, name="api")}
        ports = {1: s.api_port}
        if multi > 1:
            apis[multi] = s.start_api(workers=multi, name=f"api-{multi}")
            ports[multi] = s.api_port
        token = s.tenant()
        for port in ports.values():  # the body is valid and accepted before anything is timed
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                              timeout=60) as client:
                r = client.post("/v1/jobs", json=BODY)
                if r.status_code != 202:
                    raise RuntimeError(f"POST /v1/jobs answered {r.status_code}: {r.text}")
        bares: dict[int, subprocess.Popen[bytes]] = {}
        targets: dict[str, tuple[str, int]] = {}
        try:
            for workers in apis:
                port = free_port()
                bares[workers] = subprocess.Popen(
                    [sys.executable, str(HERE / "bare_api.py"), "--port", str(port), "--workers", str(workers)],
                    stdout=open(s.logs / f"bare-{workers}.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                    start_new_session=True)
                wait_port(port, timeout=60)
                suffix = "" if workers == 1 else f"_{workers}"
                targets[f"bare{suffix}"] = (f"http://127.0.0.1:{port}/v1/jobs", bares[workers].pid)
                targets[f"api{suffix}"] = (f"http://127.0.0.1:{ports[workers]}/v1/jobs", apis[workers].pid)

            def load(name: str, connections: int, threads: int, seconds: float) -> dict[str, Any]:
                url, pid = targets[name]
                with BackendSampler(s.pg_backends) as pg:
                    run = wrk(url, body_file=body_file, token=token, connections=connections, threads=threads,
                              seconds=seconds, procs={"server": pid})
                if name.startswith("api"):  # the bare route touches no database
                    n = max(1, run["requests"])
                    run["postgres"] = {"backend_cpu_ms_per_request": round(pg.cpu_s * 1000 / n, 3),
                                       "backends_started": pg.started,
                                       "note": "backends of the bench database sampled every 0.1 s (a lower bound)"}
                return run

            for name in targets:  # warm-up: connection pools, code paths
                load(name, args.connections, args.threads, args.warmup)
            runs = {name: load(name, args.connections, args.threads, args.duration) for name in targets}
            unloaded = {name: load(name, 1, 1, max(3.0, args.duration / 4)) for name in ("bare", "api")}
            # at the API's database pool size (pool_size connections kept, max_overflow more opened on demand)
            pooled = load("api", args.pool_size, args.threads, max(5.0, args.duration / 2))
        finally:
            for bare in bares.values():
                bare.terminate()
                bare.wait(timeout=30)
        jobs = s.query("SELECT count(*) AS n, count(*) FILTER (WHERE status = 'queued') AS queued FROM jobs")[0]
        queued_messages = redis.Redis.from_url(s.redis_url).llen("orchestrator")
        service = service_cpu(s, token)  # after the counts: it submits jobs of its own
    suffix = "" if multi == 1 else f"_{multi}"
    api_run, bare_run = runs[f"api{suffix}"], runs[f"bare{suffix}"]
    detail = {
        "wrk": f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, keep-alive, bench/wrk_submit.lua",
        "body": "one-image campaign (1 size x 1 variant), bearer token, no Idempotency-Key",
        "server": f"atelier serve --workers {multi} (headline) and --workers 1: uvicorn (uvloop + httptools), "
                  "PostgreSQL (fresh database), Redis broker; the bare route with the same process counts",
        "limits": "rate limit and GPU quota on, far above the load (every request makes a job)",
        "workers_running": "none: accepted jobs only queue",
        "processes": multi,
        "api": api_run, "bare": bare_run,
        "one_process": {"api": runs["api"], "bare": runs["bare"],
                        "ratio": round(runs["api"]["rps"] / runs["bare"]["rps"], 3) if runs["bare"]["rps"] else None},
        "unloaded": {name: {k: run[k] for k in SHORT} for name, run in unloaded.items()},
        "api_at_pool_size": {k: pooled[k] for k in (*SHORT, "postgres")},
        "service_cpu_ms_per_submission": service,
        "jobs_created": int(jobs["n"]), "jobs_still_queued": int(jobs["queued"]),
        "start_messages_queued_in_redis": int(queued_messages),
        "machine": at_start,
    }
    update = {"api_submit": {"rps": api_run["rps"], "p50_ms": api_run["p50_ms"], "p99_ms": api_run["p99_ms"],
                             "bare_rps": bare_run["rps"], "non_2xx": api_run["non_2xx"], "processes": multi,
                             "ratio": round(api_run["rps"] / bare_run["rps"], 3) if bare_run["rps"] else None,
                             "one_process_rps": runs["api"]["rps"], "one_process_bare_rps": runs["bare"]["rps"],
                             "cpu_ms_per_request": runs["api"]["server_cpu_ms_per_request"]},
              "api_submit_detail": detail}
    merge_results(update, args.out or RESULTS)
    print(json.dumps(update["api_submit"] | {"bare_p99_ms": bare_run["p99_ms"],
                                             "jobs_created": detail["jobs_created"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
