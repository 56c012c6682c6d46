"""Chaos harness: a mixed run of jobs in services mode while processes and servers fail under it.

Used by `make chaos` (bench/chaos.py: 40 jobs, 10 kills) and by a smaller run in `make test`
(tests/integration/test_chaos.py). It starts its own redis-server (on another port, with an AOF so a
restart keeps the queues, as a production broker would), a fresh PostgreSQL database on the machine's
server, an S3 endpoint (nanio), and one process per role; then, while the jobs run, it SIGKILLs worker
processes (every role, the orchestrator included) and restarts them, restarts Redis, terminates every
PostgreSQL connection of the database, and restarts the API while SSE clients are attached.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from minio import Minio

from tests.conftest import BIN, PG_ADMIN, free_port, wait_port
from tests.procs import Proc, Receiver, api_key_from, cli

ROLES = {
    "orchestrator": ["worker", "--queues", "orchestrator", "--loglevel", "WARNING"],
    "planning": ["worker", "--queues", "planning", "--loglevel", "WARNING"],
    "render": ["worker", "--queues", "render", "--loglevel", "WARNING"],
    "gpu.diffusion": ["worker", "--queues", "gpu.diffusion", "--loglevel", "WARNING"],
    "gpu.watermark": ["worker", "--queues", "gpu.watermark", "--loglevel", "WARNING"],
    "gpu.identity": ["worker", "--queues", "gpu.identity", "--loglevel", "WARNING"],
}
TERMINAL = ("job.succeeded", "job.failed", "job.canceled")
DISPATCHER_ROLE = "orchestrator"  # the webhook dispatcher runs beside the orchestrator's tasks (`atelier worker`)
# a copy of a message that arrived this close to a SIGKILL of the dispatcher's process was in flight when it died:
# the receiver had it (or its bytes were in the socket), the sender never recorded it
KILL_SLACK_S = 2.0


def _stamp(t: float) -> str:
    """A wall-clock time as HH:MM:SS.mmm (the fault log's and the duplicate report's)."""
    return f"{time.strftime('%H:%M:%S', time.localtime(t))}.{int(t % 1 * 1000):03d}"


@dataclass
class ChaosConfig:
    jobs: int = 40
    kills: int = 10
    redis_restart: bool = True
    pg_drop: bool = True
    api_restart: bool = True
    seed: int = 0
    timeout_s: float = 1200.0


@dataclass
class Follower:
    """An SSE client for one job that reconnects with Last-Event-ID until the terminal event."""

    job_id: str
    ids: list[int] = field(default_factory=list)
    reconnects: int = 0
    done: bool = False


class Chaos:
    def __init__(self, cfg: ChaosConfig, work: Path, models_file: Path) -> None:
        self.cfg, self.work, self.models_file = cfg, work, models_file
        self.rng = random.Random(cfg.seed)
        self.procs: dict[str, Proc] = {}
        self.log: list[str] = []
        self.kill_times: dict[str, list[float]] = {}  # role → when each SIGKILL was sent
        self.kills = 0
        self.stop = threading.Event()

    # --- servers ---------------------------------------------------------------------------------
    def start_redis(self) -> None:
        rdir = self.work / "redis"
        rdir.mkdir(exist_ok=True)
        self.redis = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--dir", str(rdir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
             "--logfile", str(rdir / "redis.log")])
        wait_port(self.redis_port)

    def restart_redis(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.redis_port), "shutdown"], capture_output=True, timeout=30)
        self.redis.wait(timeout=30)
        time.sleep(0.5)
        self.start_redis()
        self.note("restarted redis")

    def drop_pg(self) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            n = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()", (self.dbname,)).fetchone()
        self.note(f"terminated {n[0] if n else 0} postgres connections")

    def note(self, msg: str) -> None:
        self.log.append(f"{_stamp(time.time())} {msg}")

    # --- processes -------------------------------------------------------------------------------
    def start_role(self, role: str) -> None:
        args = ["serve", "--port", str(self.api_port)] if role == "api" else ROLES[role]
        self.procs[role] = Proc(role.replace(".", "-"), args, self.env, self.work).start()

    def kill_role(self, role: str) -> None:
        self.kill_times.setdefault(role, []).append(time.time())
        self.procs[role].kill()
        self.kills += 1
        self.note(f"SIGKILL {role}")
        time.sleep(self.rng.uniform(0.2, 1.0))
        self.start_role(role)

    # --- jobs ------------------------------------------------------------------------------------
    def spec(self, i: int) -> tuple[str, dict[str, Any]]:
        if i % 2 == 0:
            return "campaign", {
                "brand": {"name": "Chaos Co", "palette": ["#102030", "#F0E0D0"]},
                "product": {"name": "Tea tin", "description": "A tin of green tea."},
                "taglines": [f"Calm in a cup #{i}"], "cta": "Buy",
                "sizes": ["512x512", "640x400"], "variants": 1, "seed": i,
            }
        return "story", {"premise": f"A child finds a lost kite (tale {i}).", "culture": "Japan", "pages": 2, "seed": i}

    def submit(self, client: httpx.Client, i: int) -> str:
        kind, spec = self.spec(i)
        key = f"chaos-{self.run_id}-{i}"
        while True:  # the API may be down for a moment: retry with the same Idempotency-Key
            try:
                r = client.post("/v1/jobs", json={"kind": kind, "spec": spec}, headers={"Idempotency-Key": key})
                if r.status_code in (200, 202):
                    return str(r.json()["id"])
                if r.status_code < 500:
                    raise RuntimeError(f"submit {i}: {r.status_code} {r.text}")
            except httpx.TransportError:
                pass
            time.sleep(0.3)

    def follow(self, f: Follower) -> None:
        while not f.done and not self.stop.is_set():
            headers = {"Authorization": f"Bearer {self.key}"}
            if f.ids:
                headers["Last-Event-ID"] = str(f.ids[-1])
            try:
                with httpx.stream("GET", f"{self.base}/v1/jobs/{f.job_id}/events", headers=headers,
                                  timeout=httpx.Timeout(10.0, read=60.0)) as resp:
                    if resp.status_code != 200:
                        raise httpx.TransportError(f"status {resp.status_code}")
                    event = None
                    for line in resp.iter_lines():
                        if line.startswith("id: "):
                            event = int(line[4:])
                        elif line.startswith("event: ") and event is not None:
                            if not f.ids or event > f.ids[-1]:
                                f.ids.append(event)
                            if line[7:] in TERMINAL:
                                f.done = True
                if not f.done:
                    f.reconnects += 1
            except (httpx.TransportError, httpx.HTTPError):
                f.reconnects += 1
                time.sleep(0.3)

    # --- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.run_id = uuid.uuid4().hex[:8]
        self.redis_port, self.api_port, s3_port = free_port(), free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.start_redis()
        self.dbname = f"atelier_chaos_{self.run_id}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        pg_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{self.dbname}"
        from atelier_migrations import upgrade

        upgrade(pg_url)
        s3 = subprocess.Popen([str(BIN / "nanio"), "serve", "--data-dir", str(self.work / "s3"), "--host", "127.0.0.1",
                               "--port", str(s3_port), "--log-level", "warning", "--no-access-log"],
                              env=dict(os.environ, NANIO_ACCESS_KEY="chaos", NANIO_SECRET_KEY="chaos-secret-key"))
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", ATELIER_HOME=str(self.work / "home"),
                        ATELIER_DATABASE_URL=pg_url, ATELIER_BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
                        ATELIER_STORAGE="s3", ATELIER_S3_ENDPOINT=f"127.0.0.1:{s3_port}", ATELIER_S3_ACCESS_KEY="chaos",
                        ATELIER_S3_SECRET_KEY="chaos-secret-key", ATELIER_S3_BUCKET="chaos",
                        ATELIER_MODELS_FILE=str(self.models_file), ATELIER_GEN_MAX_SIDE="64",
                        ATELIER_VISIBILITY_TIMEOUT_S="12", ATELIER_UNACKED_RESTORE_INTERVAL_S="1",
                        ATELIER_HEARTBEAT_INTERVAL_S="0.5", ATELIER_STALL_AFTER_S="5", ATELIER_QUEUED_STALL_S="25",
                        ATELIER_START_STALL_S="10", ATELIER_RECONCILE_INTERVAL_S="1", ATELIER_RETRY_BACKOFF_S="0.2",
                        ATELIER_STAGE_MAX_ATTEMPTS="6", ATELIER_SSE_POLL_S="0.1", ATELIER_WORKER_LOOP_STALL_S="15",
                        ATELIER_SSRF_ALLOW="127.0.0.1/32", ATELIER_WEBHOOK_POLL_S="0.2")
        self.receiver = Receiver()
        t0 = time.monotonic()
        try:
            wait_port(s3_port)
            self.start_role("api")
            for role in ROLES:
                self.start_role(role)
            wait_port(self.api_port, timeout=90)
            self.key = api_key_from(cli(["tenants", "create", f"chaos-{self.run_id}"], self.env))
            client = httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
            # every webhook event type, so the receiver sees a message per stage, artifact and job
            r = client.post("/v1/webhooks", json={"url": self.receiver.url})
            if r.status_code != 201:
                raise RuntimeError(f"webhook endpoint: {r.status_code} {r.text}")
            job_ids = [self.submit(client, i) for i in range(self.cfg.jobs)]
            followers = [Follower(j) for j in job_ids]
            threads = [threading.Thread(target=self.follow, args=(f,), daemon=True) for f in followers]
            for t in threads:
                t.start()
            self.faults(followers)
            deadline = time.monotonic() + self.cfg.timeout_s
            while time.monotonic() < deadline and not all(f.done for f in followers):
                time.sleep(0.5)
            stalls = {} if all(f.done for f in followers) else self.thread_dumps()
            self.stop.set()
            self.drain_webhooks(pg_url)
            return {**self.verify(client, pg_url, s3_port, followers, time.monotonic() - t0), "stall_dumps": stalls}
        finally:
            self.stop.set()
            for p in self.procs.values():
                p.stop(timeout=10)
            subprocess.run(["redis-cli", "-p", str(self.redis_port), "shutdown", "nosave"], capture_output=True)
            self.receiver.server.shutdown()
            s3.terminate()
            s3.wait(timeout=10)
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')

    def thread_dumps(self) -> dict[str, str]:
        """Every live process's thread stacks (SIGUSR2 → faulthandler, see `atelier worker`), for a stalled run."""
        self.note("jobs stalled: asked every worker for its thread stacks")
        for role, p in self.procs.items():
            if role != "api" and p.p is not None and p.p.poll() is None:
                os.killpg(p.pid, signal.SIGUSR2)
        time.sleep(2)
        return {role: p.tail(150) for role, p in self.procs.items()}

    def faults(self, followers: list[Follower]) -> None:
        """Kills at random points while jobs run: every role first, then random roles; one of each fault."""
        roles = list(ROLES)
        self.rng.shuffle(roles)
        plan: list[str] = [roles[i % len(roles)] for i in range(self.cfg.kills)]
        extra = [f for f, on in (("redis", self.cfg.redis_restart), ("pg", self.cfg.pg_drop), ("api", self.cfg.api_restart)) if on]
        for f in extra:
            plan.insert(self.rng.randint(min(1, len(plan)), len(plan)), f)
        for fault in plan:
            if all(f.done for f in followers):
                self.note(f"jobs finished before fault {fault}")
                break
            time.sleep(self.rng.uniform(1.0, 4.0))
            if fault == "redis":
                self.restart_redis()
            elif fault == "pg":
                self.drop_pg()
            elif fault == "api":
                attached = sum(1 for f in followers if not f.done)
                self.kill_role("api")
                self.kills -= 1  # the API restart is counted on its own
                self.note(f"restarted the API with {attached} SSE clients attached")
            else:
                self.kill_role(fault)

    def expected_webhooks(self, pg_url: str) -> set[str]:
        """``webhook-id`` of every message the dispatcher owes the receiver (one per subscribed event)."""
        from atelier_orchestrator.webhooks import message_id
        from atelier_sdk import WEBHOOK_EVENTS

        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT id FROM events WHERE type = ANY(%s) AND job_id IS NOT NULL",
                                (list(WEBHOOK_EVENTS),)).fetchall()
        return {message_id(r[0]) for r in rows}

    def duplicates(self, pg_url: str) -> list[dict[str, Any]]:
        """Messages the receiver got more than once: when each copy arrived, the delivery's attempts as the
        dispatcher recorded them, and whether the sender died with them in flight.

        Webhooks are at least once (Standard Webhooks; receivers dedupe on ``webhook-id``): a dispatcher SIGKILLed
        after the receiver took a message and before it recorded the answer leaves the delivery claimed, and the
        message goes out again, with the same id, once the claim's lease runs out. Such a copy is ``sender_killed``:
        its attempt is missing from the delivery's log, and it arrived within ``KILL_SLACK_S`` of a SIGKILL of the
        dispatcher's process. Any other duplicate is a bug."""
        kills = self.kill_times.get(DISPATCHER_ROLE, [])
        out = []
        with psycopg.connect(pg_url) as conn:
            for msg, times in sorted(self.receiver.duplicated().items()):
                row = conn.execute("SELECT attempts, log FROM webhook_deliveries WHERE message_id = %s", (msg,)).fetchone()
                attempts, log = (row[0], row[1] or []) if row else (0, [])
                unrecorded = attempts - len({e.get("attempt") for e in log})
                early = times[:-1]  # the copies before the last one: each one's sender never recorded it
                killed = unrecorded >= len(early) and all(any(abs(t - k) <= KILL_SLACK_S for k in kills) for t in early)
                out.append({"message_id": msg, "received": [_stamp(t) for t in times], "extra": len(early),
                            "attempts": attempts, "recorded": [(e.get("attempt"), e.get("status_code")) for e in log],
                            "sender_killed": killed})
        return out

    def drain_webhooks(self, pg_url: str, timeout_s: float = 60.0) -> None:
        """Give the dispatcher time to send what the last events owe (it retries with backoff)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = {h.get("webhook-id") for h, _ in self.receiver.requests}
            if self.expected_webhooks(pg_url) <= got:
                return
            time.sleep(0.5)

    def verify(self, client: httpx.Client, pg_url: str, s3_port: int, followers: list[Follower],
               seconds: float) -> dict[str, Any]:
        job_ids = [f.job_id for f in followers]
        with psycopg.connect(pg_url) as conn:
            statuses = dict(conn.execute("SELECT id, status FROM jobs WHERE id = ANY(%s)", (job_ids,)).fetchall())
            errors = [r[0] for r in conn.execute("SELECT error FROM jobs WHERE id = ANY(%s) AND error IS NOT NULL",
                                                  (job_ids,)).fetchall()]
            arts = conn.execute("SELECT key, sha256 FROM artifacts").fetchall()
            redriven = conn.execute("SELECT coalesce(sum(redriven), 0) FROM stages").fetchone()[0]
            stuck = conn.execute("SELECT count(*) FROM stages WHERE status IN ('pending','queued','running')").fetchone()[0]
            events = {j: [r[0] for r in conn.execute("SELECT id FROM events WHERE job_id = %s ORDER BY id", (j,))]
                      for j in job_ids}
        s3 = Minio(f"127.0.0.1:{s3_port}", access_key="chaos", secret_key="chaos-secret-key", secure=False)
        stored = {o.object_name for o in s3.list_objects("chaos", prefix="tenants/", recursive=True)}
        missing = 0
        for key, sha in arts:
            if key not in stored:
                missing += 1
                continue
            resp = s3.get_object("chaos", key)
            try:
                if hashlib.sha256(resp.read()).hexdigest() != sha:
                    missing += 1
            finally:
                resp.close()
                resp.release_conn()
        orphans = sorted(stored - {k for k, _ in arts})
        missed = sum(len(set(events[f.job_id]) - set(f.ids)) for f in followers)
        dups = self.duplicates(pg_url)
        succeeded = sum(1 for j in job_ids if statuses.get(j) == "succeeded")
        canceled = sum(1 for j in job_ids if statuses.get(j) == "canceled")
        return {
            "jobs_total": len(job_ids), "jobs_succeeded": succeeded, "jobs_canceled": canceled,
            "jobs_lost": len(job_ids) - succeeded - canceled, "artifacts_missing": missing,
            "orphan_keys": len(orphans), "orphan_examples": orphans[:5],
            "duplicate_webhooks": self.receiver.duplicates(),
            "duplicate_webhooks_unexplained": sum(d["extra"] for d in dups if not d["sender_killed"]),
            "duplicate_examples": dups[:5],
            "webhooks_received": len(self.receiver.requests),
            "webhooks_missing": len(self.expected_webhooks(pg_url) - {h.get("webhook-id") for h, _ in self.receiver.requests}),
            "kills": self.kills, "stages_redriven": int(redriven), "stages_stuck": int(stuck),
            "sse_events_missed": missed, "sse_reconnects": sum(f.reconnects for f in followers),
            "seconds": round(seconds, 1), "faults": self.log, "job_errors": errors[:5],
            # a worker that died on its own (not one of our SIGKILLs) and was restarted by `atelier worker`
            "worker_restarts": {role: n for role, p in self.procs.items()
                                if (n := p.tail(100_000).count("atelier worker: the worker exited"))},
            # ... of them, how many the event-loop watchdog ended (alive but no longer consuming)
            "loop_stalls": {role: n for role, p in self.procs.items()
                            if (n := p.tail(100_000).count("event loop has not turned"))},
        }


def run_chaos(cfg: ChaosConfig, work: Path, models_file: Path) -> dict[str, Any]:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed")
    work.mkdir(parents=True, exist_ok=True)
    return Chaos(cfg, work, models_file).run()


def dump(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
