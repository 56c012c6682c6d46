"""Fast, DB-free runtime state shared by workers: cancel flags and stage heartbeats.

GPU hosts need only the broker and the bucket, so this lives in Redis when the broker is Redis;
in the embedded mode everything is one process and a dict does.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import redis

from .settings import Settings

CANCEL_TTL_S = 7 * 24 * 3600


class RuntimeState(Protocol):
    """Cancel flags, heartbeats, and per-stage leases + done marks that keep a re-sent stage from running twice."""

    def cancel(self, job_id: str) -> None: ...
    def is_canceled(self, job_id: str) -> bool: ...
    def heartbeat(self, stage_id: str) -> None: ...
    def last_heartbeat(self, stage_id: str) -> float | None: ...
    def acquire_lease(self, stage_id: str, owner: str, ttl_s: float) -> bool: ...
    def renew_lease(self, stage_id: str, owner: str, ttl_s: float) -> bool: ...
    def release_lease(self, stage_id: str, owner: str) -> None: ...
    # done marks are per attempt: a stage run again on purpose (a retried job's deliver) has a new attempt number,
    # while the copies the reconciler or the broker re-send carry the attempt they duplicate
    def mark_done(self, stage_id: str, regeneration: int = 0, attempt: int = 1) -> None: ...
    def is_done(self, stage_id: str, regeneration: int = 0, attempt: int = 1) -> bool: ...
    def ping(self) -> None: ...


class MemoryRuntime:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._canceled: set[str] = set()
        self._beats: dict[str, float] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._done: set[str] = set()

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

    def acquire_lease(self, stage_id: str, owner: str, ttl_s: float) -> bool:
        with self._lock:
            held = self._leases.get(stage_id)
            if held is not None and held[0] != owner and held[1] > time.monotonic():
                return False
            self._leases[stage_id] = (owner, time.monotonic() + ttl_s)
            return True

    def renew_lease(self, stage_id: str, owner: str, ttl_s: float) -> bool:
        return self.acquire_lease(stage_id, owner, ttl_s)  # in one process, taking and extending are one step

    def release_lease(self, stage_id: str, owner: str) -> None:
        with self._lock:
            if self._leases.get(stage_id, ("",))[0] == owner:
                del self._leases[stage_id]

    def mark_done(self, stage_id: str, regeneration: int = 0, attempt: int = 1) -> None:
        with self._lock:
            self._done.add(f"{stage_id}:{regeneration}:{attempt}")

    def is_done(self, stage_id: str, regeneration: int = 0, attempt: int = 1) -> bool:
        return f"{stage_id}:{regeneration}:{attempt}" in self._done

    def ping(self) -> None:
        return None


class RedisRuntime:
    def __init__(self, client: object, *, namespace: str = "atelier", beat_ttl_s: int = 3600) -> None:
        assert isinstance(client, redis.Redis)
        self.r = client
        self.ns = namespace
        self.beat_ttl_s = beat_ttl_s

    @classmethod
    def from_url(cls, url: str) -> RedisRuntime:
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

    # compare-and-set in one round trip, so a lease that expired and was taken by another worker is left alone
    _RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] or redis.call('exists', KEYS[1]) == 0 then " \
             "return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 else return 0 end"
    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"

    def acquire_lease(self, stage_id: str, owner: str, ttl_s: float) -> bool:
        key = f"{self.ns}:lease:{stage_id}"
        if self.r.set(key, owner, nx=True, px=int(ttl_s * 1000)):
            return True
        return bool(self.r.get(key) == owner.encode())

    def renew_lease(self, stage_id: str, owner: str, ttl_s: float) -> bool:
        return bool(self.r.eval(self._RENEW, 1, f"{self.ns}:lease:{stage_id}", owner, int(ttl_s * 1000)))

    def release_lease(self, stage_id: str, owner: str) -> None:
        self.r.eval(self._RELEASE, 1, f"{self.ns}:lease:{stage_id}", owner)

    def mark_done(self, stage_id: str, regeneration: int = 0, attempt: int = 1) -> None:
        self.r.set(f"{self.ns}:done:{stage_id}:{regeneration}:{attempt}", "1", ex=CANCEL_TTL_S)

    def is_done(self, stage_id: str, regeneration: int = 0, attempt: int = 1) -> bool:
        return bool(self.r.exists(f"{self.ns}:done:{stage_id}:{regeneration}:{attempt}"))

    def ping(self) -> None:
        self.r.ping()


_MEMORY = MemoryRuntime()


def make_runtime(settings: Settings) -> RuntimeState:
    """Redis when the broker is Redis, else the process-wide in-memory state."""
    if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        return RedisRuntime.from_url(settings.broker_url)
    return _MEMORY
