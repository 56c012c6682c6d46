"""`make scale`: the control plane at fleet scale, on a simulated GPU fleet -> bench/scale.json.

For each fleet size (default 1, 8, 32, 128 simulated GPUs) a fresh services-mode stack (bench/stack.py: a new
PostgreSQL database, an S3 endpoint, the real API, orchestrator and planner processes) runs against a
redis-server of this bench's own (so INFO counters count nothing else), with the bench-only simulated fleet
(bench/simfleet.py): one process whose N thread slots are the GPUs (every ``gpu.*`` stage and ``gate.identity``
sleep their device time at real-card speed) and one whose slots simulate the renderer's CPU hosts (``render.ad``,
``render.storybook``, ``deliver``). Everything between the stages — API, orchestrator, reconciler, PostgreSQL,
Redis, the stage runner, S3 writes — is the production code.

A steady stream of mixed jobs (campaign and story alternately) keeps ``--inflight-per-gpu`` x N jobs in flight
(at least 4): a job is submitted over the API whenever one ends. After ``--warmup`` seconds the bench measures for
``--window`` seconds:

* ``jobs_per_hour``: jobs that succeeded inside the window, per hour;
* ``slot_busy_fraction``: device time slept inside the window / (N x window) — what a GPU fleet is paid for;
* ``handoff_ms`` {p50, p95, p99}: from the end of a stage item's last dependency (worker clock) to its start on a
  worker, for the items that became ready while a slot of their queue's pool was free (time spent waiting for a
  busy fleet is queueing, not hand-off); split into the orchestrator's part (to ``queued_at``) and the broker +
  worker part;
* per stage (a stage item a worker finished inside the window): the orchestrator's CPU ms, PostgreSQL
  transactions (``pg_stat_database`` deltas of this stack's database, less the bench's own queries), Redis
  commands (``INFO commandstats`` deltas, less the bench's own), and lock waits (backends seen waiting on a
  lock, sampled every 0.1 s);
* the CPU of every process (cores) and of the machine, and the GPU queues' mean depth (a fleet whose queue
  runs dry is starved by the control plane, or by the demand — the depth tells which).

``ceiling``: the first fleet size whose busy fraction falls below 0.9, and the resource that saturated first
there (the process or machine whose CPU was closest to full).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simfleet import ENV_FLAG, GPU_STAGES, PROFILES, RENDER_STAGES  # noqa: E402
from stack import ROOT, WORK, BackendSampler, CpuMeter, Services, machine, percentile, ts  # noqa: E402

from tests.conftest import free_port, wait_port  # noqa: E402

OUT = ROOT / "bench" / "scale.json"
SIMFLEET = ROOT / "bench" / "simfleet.py"
GPU_QUEUES = ("gpu.diffusion", "gpu.identity", "gpu.watermark")
ALL_QUEUES = ("orchestrator", "planning", *GPU_QUEUES, "render")
PLANNER_THREADS = 4  # `atelier worker` on a CPU queue: a thread pool of 4

CAMPAIGN: dict[str, Any] = {
    "brand": {"name": "Lumen", "palette": ["#3B2416", "#F5E6D3", "#C8102E"]},
    "product": {"name": "Cold Brew Bottle", "description": "A glass bottle of slow-steeped cold brew coffee."},
    "taglines": ["Slow steeped. Boldly smooth."],
    "cta": "Shop now",
    "sizes": ["1080x1080", "1200x628"],
    "variants": 2,
}
STORY: dict[str, Any] = {"premise": "A kite that wants to see the sea.", "culture": "coastal Kerala", "pages": 4}
TERMINAL = ("succeeded", "failed", "canceled")
# one bench tenant stands for a platform's many teams: its per-tenant submission rate limit and GPU-seconds quota
# (services-mode defaults: 120 jobs/min, one GPU-day) would cap the stream long before the fleet, so they are off
NO_TENANT_LIMITS = {"ATELIER_RATE_LIMIT_JOBS_PER_MINUTE": "0", "ATELIER_QUOTA_GPU_SECONDS_PER_DAY": "0"}


class RedisServer:
    """A redis-server of the bench's own on a free port (no persistence), stopped on exit."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.work = work
        self.p: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (make sysdeps)")
        self.work.mkdir(parents=True, exist_ok=True)
        self.p = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                   "--appendonly", "no", "--dir", str(self.work)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __exit__(self, *_exc: object) -> None:
        if self.p is not None:
            self.p.terminate()
            self.p.wait(timeout=10)


class Probe:
    """The bench's own view of the stack while it runs: jobs in flight, queue depths, lock waits.

    Every query and Redis command it makes is counted, so they can be taken out of the stack's totals.
    """

    def __init__(self, s: Services, interval: float = 0.1) -> None:
        import psycopg
        import redis

        self.pg = psycopg.connect(s.pg_url, autocommit=True)
        self.r = redis.Redis.from_url(s.redis_url)
        self.db = s.dbname
        self.interval = interval
        self.pg_queries = 0
        self.redis_calls: dict[str, int] = {}
        self.samples: list[dict[str, Any]] = []
        self.sampling = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scale-probe")

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        self.pg_queries += 1
        return self.pg.execute(query, params).fetchall()

    def redis(self, command: str, *args: Any) -> Any:
        self.redis_calls[command] = self.redis_calls.get(command, 0) + 1
        return self.r.execute_command(command, *args)

    def inflight(self) -> int:
        return int(self.sql("SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'canceled')")[0][0])

    def pg_counters(self) -> dict[str, int]:
        row = self.sql("SELECT xact_commit, xact_rollback, deadlocks, tup_inserted, tup_updated, tup_deleted "
                       "FROM pg_stat_database WHERE datname = %s", (self.db,))[0]
        return dict(zip(("xact_commit", "xact_rollback", "deadlocks", "tup_inserted", "tup_updated", "tup_deleted"),
                        (int(v) for v in row), strict=True))

    def redis_counters(self) -> dict[str, int]:
        raw = self.redis("INFO", "commandstats")
        out: dict[str, int] = {}
        for key, fields in raw.items():  # cmdstat_<command>[|<subcommand>] -> {calls, usec, ...}
            name = str(key).removeprefix("cmdstat_").split("|")[0]
            out[name] = out.get(name, 0) + int(fields["calls"])
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.sampling:
                continue
            try:
                waits = int(self.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                     "AND wait_event_type = 'Lock'", (self.db,))[0][0])
                depth = {q: int(self.redis("LLEN", q)) for q in ALL_QUEUES}
            except Exception:  # noqa: BLE001 - a missed sample is a missed sample
                continue
            self.samples.append({"lock_waits": waits, "depth": depth})

    def start(self) -> Probe:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.pg.close()


def deps_ready(rows: list[dict[str, Any]]) -> dict[str, float]:
    """stage row id -> when its last dependency ended (worker clock), for rows whose stage has dependencies."""
    from atelier_orchestrator.graphs import GRAPHS

    by_job: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        if r["finished_at"] is not None:
            by_job.setdefault(r["job_id"], {}).setdefault(r["name"], []).append(r)
    out: dict[str, float] = {}
    for r in rows:
        graph = GRAPHS[r["kind"]]
        st = graph.stage(r["name"])
        if not st.after:
            continue
        ends = []
        for dep_name in st.after:
            deps = by_job.get(r["job_id"], {}).get(dep_name, [])
            if graph.per_item(st, graph.stage(dep_name)):
                deps = [d for d in deps if d["item"] == r["item"]]
            ends += [ts(d["finished_at"]) for d in deps]
        if ends:
            out[r["id"]] = max(ends)
    return out


def pool_of(stage_name: str) -> str:
    from atelier_contracts.catalogue import STAGE_QUEUES

    q = STAGE_QUEUES[stage_name]
    return "gpu" if q in GPU_QUEUES else q


class Occupancy:
    """How many slots of one pool were busy over time, from its stage items' [started, finished) spans."""

    def __init__(self, spans: list[tuple[float, float]]) -> None:
        events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
        self.times, self.level = [], []
        n = 0
        for t, d in events:
            n += d
            self.times.append(t)
            self.level.append(n)

    def max_between(self, a: float, b: float) -> int:
        """The most slots busy at any moment of [a, b)."""
        i = bisect.bisect_right(self.times, a)
        j = bisect.bisect_left(self.times, b)
        at_a = self.level[i - 1] if i > 0 else 0
        return max([at_a, *self.level[i:j]])


def pct(xs: list[float]) -> dict[str, float | int | None]:
    if not xs:
        return {"p50": None, "p95": None, "p99": None, "n": 0}
    return {"p50": round(percentile(xs, 0.5), 2), "p95": round(percentile(xs, 0.95), 2),
            "p99": round(percentile(xs, 0.99), 2), "n": len(xs)}


def handoffs(rows: list[dict[str, Any]], t0: float, t1: float, pools: dict[str, int]) -> dict[str, Any]:
    """Hand-off latencies (ms) of the stage items that started inside the window and found a free slot in their
    pool all the way from becoming ready to starting (an item that waited for a busy pool was queueing, not being
    handed off); split into the orchestrator's part (ready -> queued_at) and the rest (queued_at -> started)."""
    ready = deps_ready(rows)
    ran = [r for r in rows if r["worker"] and r["started_at"] is not None and r["finished_at"] is not None]
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in ran:
        spans.setdefault(pool_of(r["name"]), []).append((ts(r["started_at"]), ts(r["finished_at"])))
    occupancy = {pool: Occupancy(sp) for pool, sp in spans.items()}
    total, orch, rest, queued = [], [], [], 0
    per_pool: dict[str, list[float]] = {}
    for r in ran:
        start = ts(r["started_at"])
        if r["id"] not in ready or not t0 <= start <= t1:
            continue
        t_ready = min(ready[r["id"]], start)
        pool = pool_of(r["name"])
        if occupancy[pool].max_between(t_ready, start) >= pools[pool]:
            queued += 1
            continue
        total.append((start - t_ready) * 1000)
        per_pool.setdefault(pool, []).append((start - t_ready) * 1000)
        if r["queued_at"] is not None:
            q = ts(r["queued_at"])
            orch.append((q - t_ready) * 1000)
            rest.append((start - q) * 1000)
    return {"total": pct(total), "orchestrator": pct(orch), "broker_and_worker": pct(rest),
            "by_pool": {pool: pct(xs) for pool, xs in sorted(per_pool.items())},
            "excluded_waiting_for_a_busy_pool": queued}


def slot_gaps(rows: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    """Per simulated GPU slot: the idle time (ms) between the end of one task's device time and the start of the
    next one's, inside the window — what a busy fleet loses per task to the stage protocol and the hand-off."""
    by_slot: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        sim = r["sim"] or {}
        if r["name"] in GPU_STAGES and "slot" in sim:
            by_slot.setdefault(sim["slot"], []).append((sim["device_start"], sim["device_start"] + sim["device_s"]))
    gaps = []
    for spans in by_slot.values():
        spans.sort()
        for (_, end), (nxt, _) in itertools.pairwise(spans):
            if t0 <= end and nxt <= t1:
                gaps.append((nxt - end) * 1000)
    return pct(gaps)


def overlap(a: float, b: float, t0: float, t1: float) -> float:
    return max(0.0, min(b, t1) - max(a, t0))


def run_size(gpus: int, args: argparse.Namespace) -> dict[str, Any]:
    """One fleet size on a fresh stack: warm up, measure a window, return its figures."""
    render_slots = max(4, gpus)
    inflight = max(4, math.ceil(args.inflight_per_gpu * gpus))
    pools = {"gpu": gpus, "render": render_slots, "planning": PLANNER_THREADS, "orchestrator": 4}
    sim_env = {ENV_FLAG: "1", "ATELIER_BENCH_SIMULATED_TIME_SCALE": str(args.time_scale)}
    with RedisServer(WORK / f"scale-{gpus}" / "redis") as rs, \
            Services(f"scale-{gpus}", redis_db=0, redis_url=rs.url, env=NO_TENANT_LIMITS) as s:
        procs = {"api": s.start_api(), "orchestrator": s.worker("orchestrator", "orchestrator"),
                 "planner": s.worker("planner", "planning"),
                 "sim-gpu": s.start_script("sim-gpu", SIMFLEET, ["--queues", ",".join(GPU_QUEUES), "--slots",
                                                                 str(gpus), "--stages", ",".join(GPU_STAGES)],
                                           sim_env),
                 "sim-render": s.start_script("sim-render", SIMFLEET, ["--queues", "render", "--slots",
                                                                       str(render_slots), "--stages",
                                                                       ",".join(RENDER_STAGES)], sim_env)}
        # more orchestrator consumers of the one queue (--orchestrators): the job row's lock serialises two that
        # meet on one job, so nothing is dispatched twice; their CPU is counted together as "orchestrator"
        more_orchestrators = [s.worker(f"orchestrator-{i}", "orchestrator") for i in range(2, args.orchestrators + 1)]
        client = s.client(s.tenant())
        probe = Probe(s).start()
        submitted = {"campaign": 0, "story": 0}
        stop = threading.Event()
        errors: list[str] = []

        def submitter() -> None:
            k = 0
            while not stop.is_set():
                try:
                    missing = inflight - probe.inflight()
                    for _ in range(max(0, missing)):
                        kind = "campaign" if k % 2 == 0 else "story"
                        spec = dict(CAMPAIGN if kind == "campaign" else STORY, seed=k)
                        r = client.post("/v1/jobs", json={"kind": kind, "spec": spec})
                        r.raise_for_status()
                        submitted[kind] += 1
                        k += 1
                except Exception as exc:  # noqa: BLE001 - recorded; the stream goes on
                    errors.append(repr(exc))
                stop.wait(0.2)

        feeder = threading.Thread(target=submitter, daemon=True, name="scale-submitter")
        feeder.start()
        time.sleep(args.warmup)
        pids: dict[str, int | list[int]] = {name: p.pid for name, p in procs.items()}
        pids["orchestrator"] = [procs["orchestrator"].pid, *(p.pid for p in more_orchestrators)]
        pids["redis-server"] = rs.p.pid  # type: ignore[union-attr]
        pids["s3 (nanio)"] = s.s3.pid  # type: ignore[union-attr]
        pg0, redis0 = probe.pg_counters(), probe.redis_counters()
        q0, rc0 = probe.pg_queries, dict(probe.redis_calls)
        meter = CpuMeter(pids).start()
        probe.sampling = True
        t0 = time.time()
        with BackendSampler(s.pg_backends) as backends:
            time.sleep(args.window)
        t1 = time.time()
        probe.sampling = False
        cpu = meter.stop()
        own_pg = probe.pg_queries - q0 + 1  # + the pg_counters() query below itself
        own_redis = {c: n - rc0.get(c, 0) for c, n in probe.redis_calls.items()}
        pg1, redis1 = probe.pg_counters(), probe.redis_counters()
        stop.set()
        feeder.join(timeout=30)
        rows = s.query("SELECT s.id, s.job_id, j.kind, s.name, s.item, s.worker, s.queued_at, s.started_at, "
                       "s.finished_at, s.gpu_seconds, s.output->'simulated' AS sim FROM stages s "
                       "JOIN jobs j ON j.id = s.job_id")
        jobs = s.query("SELECT kind, status, created_at, finished_at FROM jobs")
        probe.close()
        logs = {name: p.tail(20) for name, p in procs.items()} if errors else {}

    window = t1 - t0
    done = [r for r in rows if r["worker"] and r["finished_at"] is not None and t0 <= ts(r["finished_at"]) <= t1]
    skipped = [r for r in rows if not r["worker"] and r["finished_at"] is not None
               and t0 <= ts(r["finished_at"]) <= t1]
    n_stages = max(1, len(done))
    device = 0.0
    occupied = 0.0
    for r in rows:
        if r["name"] not in GPU_STAGES or r["started_at"] is None or r["finished_at"] is None:
            continue
        occupied += overlap(ts(r["started_at"]), ts(r["finished_at"]), t0, t1)
        sim = r["sim"] or {}
        if "device_start" in sim:
            device += overlap(sim["device_start"], sim["device_start"] + sim["device_s"], t0, t1)
    finished = [j for j in jobs if j["finished_at"] is not None and t0 <= ts(j["finished_at"]) <= t1]
    succeeded = [j for j in finished if j["status"] == "succeeded"]
    redis_delta = {c: redis1.get(c, 0) - redis0.get(c, 0) - own_redis.get(c, 0) for c in redis1}
    redis_delta = {c: n for c, n in redis_delta.items() if n > 0 and c != "info"}
    pg_tx = (pg1["xact_commit"] - pg0["xact_commit"]) + (pg1["xact_rollback"] - pg0["xact_rollback"]) - own_pg
    samples = probe.samples
    gpu_depth = [sum(smp["depth"][q] for q in GPU_QUEUES) for smp in samples]
    cores = {name: round(v / window, 3) for name, v in cpu["cpu_s"].items()}
    cores["postgres"] = round(backends.cpu_s / window, 3)
    cores["outside the stack"] = round(max(0.0, cpu["other_cpu_s"] - backends.cpu_s) / window, 3)
    hand = handoffs(rows, t0, t1, pools)
    per_stage_names: dict[str, int] = {}
    for r in done:
        per_stage_names[r["name"]] = per_stage_names.get(r["name"], 0) + 1
    return {
        "gpus": gpus, "orchestrators": args.orchestrators,
        "jobs_per_hour": round(len(succeeded) * 3600 / window, 1),
        "slot_busy_fraction": round(device / (gpus * window), 4),
        "slot_occupied_fraction": round(occupied / (gpus * window), 4),
        "handoff_ms": hand["total"],
        "handoff_detail": hand,
        "slot_gap_ms": slot_gaps(rows, t0, t1),
        "orchestrator_cpu_ms_per_stage": round(cpu["cpu_s"]["orchestrator"] * 1000 / n_stages, 2),
        "db_tx_per_stage": round(pg_tx / n_stages, 2),
        "db_lock_waits": {"mean_backends_waiting": round(statistics.mean(s["lock_waits"] for s in samples), 4)
                          if samples else None,
                          "samples_with_a_wait": sum(1 for s in samples if s["lock_waits"]),
                          "samples": len(samples), "deadlocks": pg1["deadlocks"] - pg0["deadlocks"]},
        "db_rows_written_per_stage": round(sum(pg1[k] - pg0[k] for k in ("tup_inserted", "tup_updated",
                                                                          "tup_deleted")) / n_stages, 2),
        "redis_ops_per_stage": round(sum(redis_delta.values()) / n_stages, 2),
        "redis_commands_per_stage": {c: round(n / n_stages, 2)
                                     for c, n in sorted(redis_delta.items(), key=lambda kv: -kv[1])[:10]},
        "api_cpu_ms_per_job": round(cpu["cpu_s"]["api"] * 1000 / max(1, sum(
            1 for j in jobs if t0 <= ts(j["created_at"]) <= t1)), 2),  # per job submitted inside the window
        "cpu_cores": cores,
        "machine_utilisation": cpu["machine_utilisation"],
        "gpu_queue_depth_mean": round(statistics.mean(gpu_depth), 2) if gpu_depth else None,
        "gpu_queue_empty_fraction": round(sum(1 for d in gpu_depth if d == 0) / len(gpu_depth), 3)
        if gpu_depth else None,
        "window_s": round(window, 2), "warmup_s": args.warmup, "jobs_in_flight_target": inflight,
        "render_slots": render_slots,
        "stages_in_window": len(done), "stages_by_name": per_stage_names, "skipped_by_orchestrator": len(skipped),
        "jobs_finished_in_window": {"succeeded": len(succeeded), "other": len(finished) - len(succeeded),
                                    "campaign": sum(1 for j in succeeded if j["kind"] == "campaign"),
                                    "story": sum(1 for j in succeeded if j["kind"] == "story")},
        "jobs_submitted": submitted, "submit_errors": errors[:5], **({"logs": logs} if logs else {}),
    }


def ceiling(fleet: list[dict[str, Any]], threshold: float = 0.9) -> dict[str, Any]:
    """The first fleet size whose busy fraction is below ``threshold``, and what ran out there."""
    cores = os.cpu_count() or 1
    for f in fleet:
        if f["slot_busy_fraction"] >= threshold:
            continue
        procs = {k: v for k, v in f["cpu_cores"].items() if k != "outside the stack"}
        top, used = max(procs.items(), key=lambda kv: kv[1])
        if f["machine_utilisation"] >= 0.85:
            resource = f"machine CPU ({cores} cores, {f['machine_utilisation']:.0%} busy); largest user: {top} " \
                       f"({used:.2f} cores)"
        elif used >= 0.85:
            resource = f"{top} ({used:.2f} cores: one process's GIL-bound thread pool)"
        else:
            resource = f"latency, not a full CPU: largest user {top} at {used:.2f} cores"
        return {"gpus": f["gpus"], "slot_busy_fraction": f["slot_busy_fraction"], "resource": resource,
                "threshold": threshold, "cpu_cores": procs, "machine_utilisation": f["machine_utilisation"],
                "gpu_queue_empty_fraction": f["gpu_queue_empty_fraction"]}
    return {"gpus": None, "threshold": threshold,
            "resource": f"none: every measured fleet size stayed at or above {threshold} busy"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,8,32,128", help="fleet sizes (simulated GPUs)")
    ap.add_argument("--window", type=float, default=60.0, help="measured seconds per fleet size")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds of the job stream before measuring")
    ap.add_argument("--inflight-per-gpu", type=float, default=1.25, help="jobs kept in flight per simulated GPU")
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiplies every simulated device time")
    ap.add_argument("--orchestrators", type=int, default=1,
                    help="orchestrator worker processes consuming the one orchestrator queue")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop processes, drop databases
    at_start = machine()
    fleet = []
    for n in (int(v) for v in args.sizes.split(",")):
        f = run_size(n, args)
        print(json.dumps({k: f[k] for k in ("gpus", "jobs_per_hour", "slot_busy_fraction", "handoff_ms",
                                            "orchestrator_cpu_ms_per_stage", "db_tx_per_stage",
                                            "redis_ops_per_stage", "cpu_cores", "machine_utilisation",
                                            "gpu_queue_depth_mean")}), flush=True)
        fleet.append(f)
    doc = {
        "fleet": fleet,
        "ceiling": ceiling(fleet),
        "workload": {
            "jobs": "campaign and story alternately: campaign 2 sizes x 2 variants (4 backgrounds, renders, "
                    "watermarks); story 4 pages (character sheets, 4 scenes, identity gates, pages, watermarks)",
            "jobs_in_flight": f"{args.inflight_per_gpu} per simulated GPU (at least 4), a new job submitted over "
                              "the API as one ends",
            "window_s": args.window, "warmup_s": args.warmup, "time_scale": args.time_scale,
            "device_time_s": {k: {"low": p.low_s * args.time_scale, "high": p.high_s * args.time_scale,
                                  "what": p.what} for k, p in PROFILES.items()},
            "simulated": "gpu.* stages and gate.identity on the GPU slots; render.ad, render.storybook and deliver "
                         "on CPU-host slots (bench/simfleet.py); planner (rules), API, orchestrator, reconciler, "
                         "PostgreSQL, Redis, S3 and the stage runner are production code",
            "tenant_limits": "off (one bench tenant stands for many teams): " + json.dumps(NO_TENANT_LIMITS),
            "processes": "1 API (uvicorn), 1 orchestrator worker (4 threads), 1 planner worker (4 threads), "
                         "1 simulated GPU worker (N slots), 1 simulated render worker (max(4, N) slots), "
                         "a redis-server of its own, nanio (S3), the machine's PostgreSQL",
        },
        "machine": at_start,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps(doc["ceiling"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
