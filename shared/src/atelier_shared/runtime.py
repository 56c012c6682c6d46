"""Fast, DB-free runtime state shared by workers: cancel flags and stage heartbeats.

GPU hosts need only the broker and the bucket, so this lives in Redis when the broker is Redis;
in the embedded mode everything is one process and a dict does.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from .settings import Settings

CANCEL_TTL_S = 7 * 24 * 3600


class RuntimeState(Protocol):
    def cancel(self, job_id: str) -> None: ...
    def is_canceled(self, job_id: str) -> bool: ...
    def heartbeat(self, stage_id: str) -> None: ...
    def last_heartbeat(self, stage_id: str) -> float | None: ...
    def ping(self) -> None: ...


class MemoryRuntime:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._canceled: set[str] = set()
        self._beats: dict[str, float] = {}

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self._canceled.add(job_id)

    def is_canceled(self, job_id: str) -> bool:
        return job_id in self._canceled

    def heartbeat(self, stage_id: str) -> None:
        with self._lock:
            self._beats[stage_id] = time.time()

    def last_heartbeat(self, stage_id: str) -> float | None:
        return self._beats.get(stage_id)

    def ping(self) -> None:
        return None


class RedisRuntime:
    def __init__(self, client: object, *, namespace: str = "atelier", beat_ttl_s: int = 3600) -> None:
        import redis

        assert isinstance(client, redis.Redis)
        self.r = client
        self.ns = namespace
        self.beat_ttl_s = beat_ttl_s

    @classmethod
    def from_url(cls, url: str) -> RedisRuntime:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30))

    def cancel(self, job_id: str) -> None:
        self.r.set(f"{self.ns}:cancel:{job_id}", "1", ex=CANCEL_TTL_S)

    def is_canceled(self, job_id: str) -> bool:
        return bool(self.r.exists(f"{self.ns}:cancel:{job_id}"))

    def heartbeat(self, stage_id: str) -> None:
        self.r.set(f"{self.ns}:hb:{stage_id}", repr(time.time()), ex=self.beat_ttl_s)

    def last_heartbeat(self, stage_id: str) -> float | None:
        v = self.r.get(f"{self.ns}:hb:{stage_id}")
        return float(v) if v is not None else None

    def ping(self) -> None:
        self.r.ping()


_MEMORY = MemoryRuntime()


def make_runtime(settings: Settings) -> RuntimeState:
    """Redis when the broker is Redis, else the process-wide in-memory state."""
    if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        return RedisRuntime.from_url(settings.broker_url)
    return _MEMORY
