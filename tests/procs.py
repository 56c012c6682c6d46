"""Helpers to run Atelier processes (API, workers) as real subprocesses in tests and benches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent


class Proc:
    """One ``atelier ...`` process in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path,
                 exe: list[str] | None = None) -> None:
        self.name, self.args, self.env = name, args, env
        self.exe = exe or [str(BIN / "atelier")]  # another command line (a bench script) instead of ``atelier``
        self.log = log_dir / f"{name}.log"
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        fh = open(self.log, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.p = subprocess.Popen([*self.exe, *self.args], env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker and any pool children)."""
        if self.p and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.p and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


def wait_until(pred, timeout: float, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def cli(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run([str(BIN / "atelier"), *args], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"atelier {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def api_key_from(output: str) -> str:
    for line in output.splitlines():
        if "api key" in line:
            return line.rsplit(" ", 1)[-1].strip()
    raise ValueError(f"no api key in {output!r}")


class Receiver:
    """A loopback webhook receiver: keeps every POST's lower-cased headers and body, answers 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.times: list[float] = []  # wall-clock time of each request's arrival, beside ``requests``
        outer = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with lock:
                    outer.times.append(time.time())
                    outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/atelier"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def duplicates(self) -> int:
        """Messages (``webhook-id``) received more than once: each extra copy counts."""
        ids = [h.get("webhook-id") for h, _ in self.requests]
        return len(ids) - len(set(ids))

    def duplicated(self) -> dict[str, list[float]]:
        """Each message (``webhook-id``) received more than once → the times its copies arrived."""
        seen: dict[str, list[float]] = {}
        for (h, _), t in zip(self.requests, self.times, strict=True):
            seen.setdefault(h.get("webhook-id", ""), []).append(t)
        return {k: v for k, v in seen.items() if len(v) > 1}


def stack_env(tmp: Path, *, pg_url: str, redis_url: str, s3: dict[str, str], models_file: Path,
              **extra: str) -> dict[str, str]:
    """The environment of a services-mode stack in tests: the machine's PostgreSQL and Redis, the S3 endpoint,
    tiny models, and timings short enough for a test (heartbeats, re-drives, SSE polling)."""
    env = dict(os.environ)
    env.update(s3)
    env.update({
        "ATELIER_HOME": str(tmp / "home"), "ATELIER_DATABASE_URL": pg_url, "ATELIER_BROKER_URL": redis_url,
        "ATELIER_MODELS_FILE": str(models_file), "ATELIER_GEN_MAX_SIDE": "64",
        "ATELIER_HEARTBEAT_INTERVAL_S": "0.5", "ATELIER_RECONCILE_INTERVAL_S": "1", "ATELIER_RETRY_BACKOFF_S": "0.2",
        "ATELIER_SSE_POLL_S": "0.1", "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


class Stack:
    """API + worker processes of one services-mode stack; ``stop()`` ends them all."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        from tests.conftest import free_port

        self.env, self.tmp = env, tmp
        self.port = free_port()
        self.procs: dict[str, Proc] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        p = Proc(name, args, env or self.env, self.tmp).start()
        self.procs[name] = p
        return p

    def start_api(self) -> Proc:
        return self.start("api", ["serve", "--port", str(self.port)])

    def start_worker(self, name: str, queues: str, env: dict[str, str] | None = None) -> Proc:
        return self.start(name, ["worker", "--queues", queues, "--loglevel", "WARNING"], env)

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {key}"},
                            timeout=30)

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{p.tail()}" for n, p in self.procs.items())

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()
