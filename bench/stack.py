"""The services-mode stack the benchmarks run on, and what they share.

A fresh PostgreSQL database (migrated), a Redis database of its own, an S3 endpoint (nanio) and
``atelier`` processes started with :class:`tests.procs.Proc`; everything is torn down on exit (the
database dropped, the Redis database flushed). Also: campaign submission/waiting over the API, CPU
accounting per process and for the whole machine, and a description of the machine for the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import PG_ADMIN, free_port, wait_port  # noqa: E402
from tests.procs import Proc, api_key_from, cli  # noqa: E402

WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results.json"
BIN = Path(sys.executable).parent

# the 12-image campaign of overhead_ratio and scaleout_ratio: 3 sizes x 4 variants of the bench-sized SDXL
CAMPAIGN: dict[str, Any] = {
    "brand": {"name": "Lumen", "palette": ["#3B2416", "#F5E6D3", "#C8102E"]},
    "product": {"name": "Cold Brew Bottle", "description": "A glass bottle of slow-steeped cold brew coffee."},
    "taglines": ["Slow steeped. Boldly smooth.", "Twelve hours in every sip"],
    "cta": "Shop now",
    "sizes": ["1080x1080", "1200x628", "1080x1920"],
    "variants": 4,
    "model": "sdxl-bench",
    "seed": 1,
}
TERMINAL = ("job.succeeded", "job.failed", "job.canceled")


def merge_results(update: dict[str, Any], path: Path = RESULTS) -> dict[str, Any]:
    """Merge ``update`` into bench/results.json (other scripts' keys kept); return the whole document."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.update(update)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def bench_models() -> Path:
    """bench/.work/models/models.yaml with the bench-sized SDXL (written once)."""
    from atelier_gpu.tiny import init_tiny

    models = WORK / "models"
    if not (models / "models.yaml").exists() or "sdxl-bench" not in (models / "models.yaml").read_text():
        init_tiny(models, bench=True)
    return models / "models.yaml"


def virtualised() -> bool:
    """Whether the CPUs are a hypervisor's virtual CPUs (the ``hypervisor`` flag)."""
    try:
        return any(line.startswith("flags") and " hypervisor" in line
                   for line in Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return False


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_threads(env: dict[str, str] | None = None) -> int:
    """``torch.get_num_threads()`` in a fresh interpreter with ``env`` (what a worker started with it gets)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         env=env or dict(os.environ), capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.strip())


def machine(**extra: Any) -> dict[str, Any]:
    """The machine a figure was measured on: cores, CPU model, torch threads, load, date."""
    import torch

    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "virtual_cpus": virtualised(), "device": "cpu",
            "torch": torch.__version__,
            "torch_threads_default": torch_threads(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "date": datetime.now(UTC).isoformat(timespec="seconds"), **extra}


class CpuMeter:
    """CPU seconds used by given processes, and by the whole machine, between :meth:`start` and :meth:`stop`."""

    def __init__(self, procs: dict[str, int | list[int]]) -> None:
        self.procs = {name: [pids] if isinstance(pids, int) else list(pids) for name, pids in procs.items()}
        self.t0 = 0.0
        self.before: dict[str, float] = {}
        self.machine0 = 0.0

    @staticmethod
    def _proc_seconds(pid: int) -> float:
        try:
            p = psutil.Process(pid)
            total = 0.0
            for q in (p, *p.children(recursive=True)):
                t = q.cpu_times()
                total += t.user + t.system
            return total
        except psutil.Error:
            return 0.0

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))

    def start(self) -> CpuMeter:
        self.t0 = time.perf_counter()
        self.before = {name: sum(map(self._proc_seconds, pids)) for name, pids in self.procs.items()}
        self.machine0 = self._machine_busy()
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        used = {name: round(max(0.0, sum(map(self._proc_seconds, pids)) - self.before[name]), 2)
                for name, pids in self.procs.items()}
        busy = self._machine_busy() - self.machine0
        cores = os.cpu_count() or 1
        return {"wall_s": round(wall, 3), "cpu_s": used, "machine_busy_cpu_s": round(busy, 2),
                "machine_capacity_cpu_s": round(cores * wall, 2),
                "other_cpu_s": round(max(0.0, busy - sum(used.values())), 2),
                "machine_utilisation": round(busy / (cores * wall), 3) if wall > 0 else 0.0}


class BackendSampler:
    """PostgreSQL backends of one database, sampled every ``interval`` s while running: how many were started
    (a lower bound: a connection opened and closed between two samples is missed) and the CPU they used
    (a backend's CPU until its last sample)."""

    def __init__(self, find: Callable[[], list[int]], interval: float = 0.1) -> None:
        self.find, self.interval = find, interval
        self.base: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pg-backend-sampler")

    def _sample(self) -> None:
        for pid in self.find():
            try:
                t = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            self.last[pid] = t.user + t.system
            self.base.setdefault(pid, 0.0)

    def __enter__(self) -> BackendSampler:
        for pid in self.find():  # running before: count only what they use from now on
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                self.base[pid] = self.last[pid] = t.user + t.system
        self.existing = set(self.base)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def started(self) -> int:
        return len(set(self.base) - self.existing)

    @property
    def cpu_s(self) -> float:
        return sum(self.last[pid] - self.base[pid] for pid in self.last)


class Services:
    """A fresh services-mode stack; ``with Services(...) as s: s.start(...)``."""

    def __init__(self, name: str, *, redis_db: int, models_file: Path | None = None,
                 env: dict[str, str] | None = None, redis_url: str | None = None) -> None:
        self.name = name
        self.work = WORK / name
        self.logs = self.work / "logs"
        self.dbname = f"atelier_bench_{uuid.uuid4().hex[:8]}"
        self.pg_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{self.dbname}"
        # redis_url: another server (a bench that reads INFO counters runs its own, so nothing else is counted)
        self.redis_url = redis_url or f"redis://127.0.0.1:6379/{redis_db}"
        self.models_file = models_file
        self.extra_env = env or {}
        self.procs: list[Proc] = []
        self.s3: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.api_port = 0

    def __enter__(self) -> Services:
        from atelier_migrations import upgrade

        self.logs.mkdir(parents=True, exist_ok=True)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        try:
            upgrade(self.pg_url)
            redis.Redis.from_url(self.redis_url).flushdb()
            s3_port = free_port()
            self.s3 = subprocess.Popen([str(BIN / "nanio"), "serve", "--data-dir", str(self.work / "s3"), "--host",
                                        "127.0.0.1", "--port", str(s3_port), "--log-level", "warning",
                                        "--no-access-log"],
                                       env=dict(os.environ, NANIO_ACCESS_KEY="bench", NANIO_SECRET_KEY="bench-secret-key"))
            self.env = dict(os.environ, PYTHONUNBUFFERED="1", ATELIER_HOME=str(self.work / "home"),
                            ATELIER_DATABASE_URL=self.pg_url, ATELIER_BROKER_URL=self.redis_url, ATELIER_STORAGE="s3",
                            ATELIER_S3_ENDPOINT=f"127.0.0.1:{s3_port}", ATELIER_S3_ACCESS_KEY="bench",
                            ATELIER_S3_SECRET_KEY="bench-secret-key", ATELIER_S3_BUCKET="bench",
                            ATELIER_GEN_MAX_SIDE="256", ATELIER_SSE_POLL_S="0.05", **self.extra_env)
            if self.models_file is not None:
                self.env["ATELIER_MODELS_FILE"] = str(self.models_file)
            wait_port(s3_port)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start ``atelier ARGS`` (its log in the stack's logs folder); stopped on exit."""
        p = Proc(name, args, dict(self.env, **(env or {})), self.logs).start()
        self.procs.append(p)
        return p

    def start_api(self, *, workers: int = 1, name: str = "api") -> Proc:
        """``atelier serve`` on a free port (``workers`` processes); the stack's client talks to the last one."""
        self.api_port = free_port()
        p = self.start(name, ["serve", "--port", str(self.api_port), "--workers", str(workers)])
        wait_port(self.api_port, timeout=90)
        return p

    def start_script(self, name: str, script: Path, args: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start ``python SCRIPT ARGS`` (a bench launcher) like :meth:`start`."""
        p = Proc(name, args, dict(self.env, **(env or {})), self.logs, exe=[sys.executable, str(script)]).start()
        self.procs.append(p)
        return p

    def worker(self, name: str, queues: str, env: dict[str, str] | None = None) -> Proc:
        return self.start(name, ["worker", "--queues", queues, "--loglevel", "WARNING"], env)

    def tenant(self) -> str:
        """A new tenant's API key."""
        return api_key_from(cli(["tenants", "create", f"bench-{uuid.uuid4().hex[:6]}"], self.env))

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.api_port}", headers={"Authorization": f"Bearer {key}"},
                            timeout=900)

    def pg_backends(self) -> list[int]:
        """PIDs of the PostgreSQL backends connected to this stack's database (their title names it)."""
        pids = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or ())
            if cmd.startswith("postgres:") and f" {self.dbname} " in cmd:
                pids.append(p.pid)
        return pids

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with psycopg.connect(self.pg_url) as conn:
            cur = conn.execute(sql, params)
            cols = [c.name for c in cur.description or ()]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def __exit__(self, *_exc: object) -> None:
        for p in reversed(self.procs):
            p.stop()
        if self.s3 is not None:
            self.s3.terminate()
            self.s3.wait(timeout=10)
        redis.Redis.from_url(self.redis_url).flushdb()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')


def submit(client: httpx.Client, spec: dict[str, Any]) -> str:
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": spec})
    r.raise_for_status()
    return str(r.json()["id"])


def wait_terminal(client: httpx.Client, job_id: str) -> str:
    """Follow the job's event stream until its terminal event; return that event's type."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
        for line in resp.iter_lines():
            if line.startswith("event: ") and line.split(": ", 1)[1] in TERMINAL:
                return line.split(": ", 1)[1]
    return "stream ended"


def run_job(client: httpx.Client, spec: dict[str, Any]) -> tuple[str, float]:
    """Submit a campaign and wait for it: (job id, seconds from POST to its terminal event)."""
    t0 = time.perf_counter()
    job_id = submit(client, spec)
    wait_terminal(client, job_id)
    return job_id, time.perf_counter() - t0


def ts(v: Any) -> float:
    """A database or ISO timestamp as POSIX seconds (naive values are UTC)."""
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).timestamp()
    return datetime.fromisoformat(str(v)).timestamp()


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
