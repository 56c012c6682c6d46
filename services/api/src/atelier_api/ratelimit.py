"""Per-tenant admission of jobs: a jobs-per-minute rate limit and a GPU-seconds-per-day quota.

Both answer ``429 Too Many Requests`` (problem+json) with ``Retry-After``. Off by default in the embedded mode;
in services mode they default to 120 jobs a minute and 86,400 GPU-seconds a day (``atelier_runtime.settings``).
Submissions and retries of a failed job both go through admission.

* Jobs per minute is an exact sliding window (a log of admission times): at most N jobs are admitted in
  any 60 s. With a Redis broker the log is a sorted set per tenant, updated by one Lua script on Redis's
  own clock, so every API replica shares it; embedded mode keeps it in memory. When Redis cannot be reached
  the limit falls back to this process's own window (each replica then admits at most N a minute) rather than
  admitting everything. A request that does not end in a new job (invalid spec, idempotent replay, broker
  down) gives its slot back.
* GPU-seconds per day counts, for the tenant's jobs created in the last 24 h (the ``(tenant_id, created_at)``
  index), the GPU time finished jobs used and, for jobs not finished yet, the GPU work they are estimated to
  need (generated megapixels x denoising steps x ``quota_gpu_seconds_per_megapixel_step``, or what they used so
  far when that is more): the estimate is reserved at submission and released when the job ends, so a burst of
  submissions cannot pass the quota before any of them has run. New jobs are refused while that sum is at or
  over the quota. ``Retry-After`` is when enough finished usage leaves the window (a minute when the
  reservations of running jobs alone hold the quota).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol, TypeVar

import redis
from atelier_contracts.errors import AtelierError
from atelier_contracts.placements import SIZE_RE, parse_size
from atelier_control.db import end_read
from atelier_control.models import TERMINAL, Job
from atelier_runtime.settings import Settings
from fastapi import Depends, Request
from sqlalchemy import Select, and_, bindparam, case, func, select
from sqlalchemy.orm import Session

from .schemas import Problem

log = logging.getLogger(__name__)

JOBS_WINDOW_S = 60.0
GPU_WINDOW = timedelta(hours=24)
ASSUMED_STEPS = 30  # a job's denoising steps when the settings do not fix them (the API does not read models.yaml)
STORY_SCENE_SIZE = (1024, 768)  # KAHANI's scene canvas
RESERVED_RETRY_S = 60.0  # Retry-After while the reservations of unfinished jobs alone hold the quota
QUOTA_EXACT_WITHIN = 0.1  # within this fraction of the quota every admission sums exactly (settings.quota_reuse_s)
QUOTA_TENANTS_KEPT = 10_000  # tenants whose last sum is kept (all are forgotten past it)
_BUILD_LOCK = threading.Lock()


class RateLimited(AtelierError):
    """The tenant is over a limit or quota; retry after ``retry_after_s`` seconds (429)."""

    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: float, limit: str) -> None:
        super().__init__(detail)
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        self.limit = limit

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    @property
    def extra(self) -> dict[str, Any]:
        """problem+json extension members."""
        return {"limit": self.limit, "retry_after_s": self.retry_after_s}


@dataclass(frozen=True)
class Slot:
    """One admission recorded in a window; ``release`` it when no job came of it."""

    key: str
    member: str
    local: bool = False  # taken from this process's window while the shared one was unreachable


class Window(Protocol):
    def acquire(self, key: str, *, limit: int, window_s: float) -> Slot | float:
        """A slot, or the seconds until one frees up."""
        ...

    def release(self, slot: Slot) -> None: ...


class MemoryWindow:
    """Sliding-window log in this process (embedded mode: one process is the whole API)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._logs: dict[str, deque[tuple[float, str]]] = {}

    def acquire(self, key: str, *, limit: int, window_s: float) -> Slot | float:
        with self._lock:
            now = self._clock()
            log_ = self._logs.setdefault(key, deque())
            while log_ and log_[0][0] <= now - window_s:
                log_.popleft()
            if len(log_) >= limit:
                return log_[0][0] + window_s - now
            member = uuid.uuid4().hex
            log_.append((now, member))
            return Slot(key, member)

    def release(self, slot: Slot) -> None:
        with self._lock:
            log_ = self._logs.get(slot.key)
            if log_ is not None:
                for entry in log_:
                    if entry[1] == slot.member:
                        log_.remove(entry)
                        break


# KEYS[1] = the tenant's sorted set; ARGV = window (ms), limit, member. Redis's clock, so replicas agree.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window - now
"""


class RedisWindow:
    """Sliding-window log shared by every API replica: one sorted set per key, one script per admission."""

    def __init__(self, client: Any, *, namespace: str = "atelier:ratelimit") -> None:
        self._client = client
        self._namespace = namespace
        self._script = client.register_script(_ACQUIRE)

    @classmethod
    def from_url(cls, url: str) -> RedisWindow:
        return cls(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30))

    def _key(self, key: str) -> str:
        return f"{self._namespace}:{key}"

    def acquire(self, key: str, *, limit: int, window_s: float) -> Slot | float:
        member = uuid.uuid4().hex
        wait_ms = int(self._script(keys=[self._key(key)], args=[int(window_s * 1000), limit, member]))
        if wait_ms < 0:
            return Slot(key, member)
        return wait_ms / 1000.0

    def release(self, slot: Slot) -> None:
        self._client.zrem(self._key(slot.key), slot.member)


def generated_megapixels(kind: str, spec: dict[str, Any], *, max_side: int) -> float:
    """Megapixels a job's GPU stages generate: every background (sizes x variants) of a campaign, or the character
    sheets (at most three) and one scene per page of a story, each at its size scaled down to ``max_side``."""

    def mp(w: int, h: int) -> float:
        scale = min(1.0, max_side / max(w, h))
        return (w * scale) * (h * scale) / 1e6

    if kind == "campaign":
        if spec.get("backdrop") == "studio":
            return 0.0
        sizes = [parse_size(s) for s in spec.get("sizes") or [] if isinstance(s, str) and SIZE_RE.match(s)]
        return sum(mp(w, h) for w, h in sizes) * int(spec.get("variants") or 1)
    return 3 * mp(max_side, max_side) + int(spec.get("pages") or 4) * mp(*STORY_SCENE_SIZE)


def estimate_gpu_seconds(kind: str, spec: dict[str, Any], settings: Settings) -> float:
    """The GPU work a job is reserved against the quota until it ends."""
    steps = settings.gen_steps or ASSUMED_STEPS
    megapixels = generated_megapixels(kind, spec, max_side=settings.gen_max_side)
    return megapixels * steps * settings.quota_gpu_seconds_per_megapixel_step


def _committed_statements() -> tuple[Select[Any], Select[Any]]:
    """The quota's SQL sum, and the rows it cannot price (jobs from before revision 0007), built once."""
    used = func.coalesce(Job.gpu_seconds, 0.0)
    finished = Job.status.in_(TERMINAL)
    unknown = and_(~finished, Job.gpu_reserved_s.is_(None))
    charge = case((finished, used), (Job.gpu_reserved_s > used, Job.gpu_reserved_s), else_=used)
    in_window = (Job.tenant_id == bindparam("tenant_id"), Job.created_at > bindparam("since"))
    total = select(func.coalesce(func.sum(case((unknown, 0.0), else_=charge)), 0.0),
                   func.coalesce(func.sum(case((unknown, 1), else_=0)), 0)).where(*in_window)
    legacy = select(Job.kind, Job.spec, Job.status, Job.gpu_seconds).where(*in_window, unknown)
    return total, legacy


_COMMITTED, _UNPRICED = _committed_statements()


def gpu_seconds_committed(session: Session, *, tenant_id: str, now: datetime, settings: Settings) -> float:
    """GPU-seconds the tenant's jobs of the last 24 h used, or hold reserved while they are not finished.

    One SQL sum over the ``(tenant_id, created_at)`` index: a finished job counts what it used, an unfinished one
    the larger of what it used so far and ``gpu_reserved_s`` (its estimate, stored at submission). Only jobs made
    before that column existed (NULL) are estimated here from their spec."""
    window = {"tenant_id": tenant_id, "since": now - GPU_WINDOW}
    total, unpriced = session.execute(_COMMITTED, window).one()
    if unpriced:  # jobs submitted before revision 0007, still unfinished: estimated as they always were
        rows = session.execute(_UNPRICED, window)
        total += sum(_charged(kind, spec, status, seconds, None, settings) for kind, spec, status, seconds in rows)
    return float(total)


def _charged(kind: str, spec: Any, status: str, seconds: float | None, reserved: float | None,
             settings: Settings) -> float:
    used = float(seconds or 0.0)
    if status in TERMINAL:
        return used
    if reserved is None:
        reserved = estimate_gpu_seconds(kind, spec if isinstance(spec, dict) else {}, settings)
    return max(used, reserved)


def gpu_quota_frees_in(session: Session, *, tenant_id: str, quota: float, now: datetime, settings: Settings) -> float:
    """Seconds until the committed GPU time drops below ``quota`` as finished jobs age out of the window."""
    rows = session.execute(
        select(Job.created_at, Job.kind, Job.spec, Job.status, Job.gpu_seconds, Job.gpu_reserved_s)
        .where(Job.tenant_id == tenant_id, Job.created_at > now - GPU_WINDOW)
        .order_by(Job.created_at)
    ).all()
    charges = [(created, _charged(kind, spec, status, seconds, reserved, settings), status in TERMINAL)
               for created, kind, spec, status, seconds, reserved in rows]
    committed = sum(c for _, c, _ in charges)
    for created_at, charge, finished in charges:
        committed -= charge  # a job leaves the window at created + 24 h, finished or not
        if committed < quota:
            created = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
            return max((created + GPU_WINDOW - now).total_seconds(), 1.0 if finished else RESERVED_RETRY_S)
    return GPU_WINDOW.total_seconds()  # unreachable unless rows changed under us: a full window is safe


def _no_reservation(_kind: str, _spec: dict[str, Any]) -> float | None:
    return None


@dataclass
class Admission:
    """Set ``created`` once the job exists; otherwise the rate-limit slot is given back.

    ``reserve(kind, spec_json)``: what the new job holds against the tenant's GPU quota (``Job.gpu_reserved_s``,
    None without a quota) — pass it to ``submit_job``, so this process's later admissions count it at once."""

    created: bool = False
    reserve: Callable[[str, dict[str, Any]], float | None] = _no_reservation


@dataclass
class _Committed:
    """A tenant's committed GPU-seconds as last summed in SQL, and what this process reserved since."""

    total: float
    read_at: float  # time.monotonic()
    since: float = 0.0


class JobLimits:
    """What POST /v1/jobs asks before it creates a job (and what any other edge that creates jobs should ask)."""

    def __init__(self, settings: Settings, *, window: Window | None = None) -> None:
        self.settings = settings
        self.jobs_per_minute = settings.rate_limit_jobs_per_minute
        self.gpu_quota = settings.quota_gpu_seconds_per_day
        if window is None and self.jobs_per_minute:
            redis_broker = (settings.broker_url or "").startswith(("redis://", "rediss://"))
            window = RedisWindow.from_url(settings.broker_url or "") if redis_broker else MemoryWindow()
        self.window = window
        self.local = MemoryWindow()  # this process's own window, while the shared one cannot be reached
        self._committed: dict[str, _Committed] = {}
        self._committed_lock = threading.Lock()

    def reserve(self, tenant_id: str, kind: str, spec: dict[str, Any]) -> float | None:
        """What a new job of the tenant holds against the GPU quota until it ends; None without a quota."""
        if not self.gpu_quota:
            return None
        reserved = estimate_gpu_seconds(kind, spec, self.settings)
        with self._committed_lock:
            known = self._committed.get(tenant_id)
            if known is not None:
                known.since += reserved
        return reserved

    def committed(self, session: Session, *, tenant_id: str, now: datetime) -> float:
        """The tenant's committed GPU-seconds: summed in SQL, or — while a sum read less than
        ``settings.quota_reuse_s`` ago plus what this process reserved since stays below ``1 - QUOTA_EXACT_WITHIN``
        of the quota — that.

        Far from the quota an admission then costs no query (the sum scans the tenant's jobs of the last 24 h);
        near it every admission sums exactly, and a job that ended is seen at once. What another API process
        admitted within the reuse time is seen late: with the quota a day of GPU time, a second's admissions."""
        clock = time.monotonic()
        with self._committed_lock:
            known = self._committed.get(tenant_id)
            if known is not None and clock - known.read_at < self.settings.quota_reuse_s and \
                    known.total + known.since < self.gpu_quota * (1 - QUOTA_EXACT_WITHIN):
                return known.total + known.since
        total = gpu_seconds_committed(session, tenant_id=tenant_id, now=now, settings=self.settings)
        with self._committed_lock:
            if len(self._committed) >= QUOTA_TENANTS_KEPT:
                self._committed.clear()
            self._committed[tenant_id] = _Committed(total=total, read_at=clock)
        return total

    def check_gpu_quota(self, session: Session, *, tenant_id: str, now: datetime | None = None) -> None:
        if not self.gpu_quota:
            return
        now = now or datetime.now(UTC)
        used = self.committed(session, tenant_id=tenant_id, now=now)
        if used < self.gpu_quota:
            return
        wait = gpu_quota_frees_in(session, tenant_id=tenant_id, quota=self.gpu_quota, now=now, settings=self.settings)
        raise RateLimited(
            f"GPU quota reached: the jobs of the last 24 h used or hold reserved {used:.1f} of {self.gpu_quota:g} "
            "GPU-seconds", retry_after_s=wait, limit="gpu_seconds_per_day",
        )

    def acquire_rate_slot(self, *, tenant_id: str) -> Slot | None:
        if not self.jobs_per_minute or self.window is None:
            return None
        key = f"jobs:{tenant_id}"
        try:
            got = self.window.acquire(key, limit=self.jobs_per_minute, window_s=JOBS_WINDOW_S)
        except Exception as exc:  # noqa: BLE001 - fall back to this process's window, never to no limit at all
            log.warning("shared rate limiter unavailable, limiting with this process's own window: %s", exc)
            got = self.local.acquire(key, limit=self.jobs_per_minute, window_s=JOBS_WINDOW_S)
            if isinstance(got, Slot):
                got = Slot(key=got.key, member=got.member, local=True)
        if isinstance(got, Slot):
            return got
        raise RateLimited(f"rate limit: at most {self.jobs_per_minute} jobs per minute",
                          retry_after_s=got, limit="jobs_per_minute")

    def release(self, slot: Slot | None) -> None:
        if slot is None or self.window is None:
            return
        try:
            (self.local if slot.local else self.window).release(slot)
        except Exception as exc:  # noqa: BLE001 - the slot expires with the window anyway
            log.warning("could not give a rate-limit slot back: %s", exc)

    @contextmanager
    def admit(self, session: Session, *, tenant_id: str) -> Iterator[Admission]:
        """Refuse (429) or admit one job; a slot whose request made no job is given back."""
        self.check_gpu_quota(session, tenant_id=tenant_id)
        end_read(session)  # SQLite: end the read transaction before the submission writes (WAL snapshots)
        slot = self.acquire_rate_slot(tenant_id=tenant_id)
        admission = Admission(reserve=functools.partial(self.reserve, tenant_id))
        try:
            yield admission
        finally:
            if not admission.created:
                self.release(slot)


T = TypeVar("T")


def app_singleton(request: Request, attr: str, build: Callable[[Settings], T]) -> T:
    """One ``build(settings)`` per app, made on first use under a lock (two first requests share one); a test may
    put its own on ``app.state.<attr>``."""
    state = request.app.state
    found: T | None = getattr(state, attr, None)
    if found is None:
        with _BUILD_LOCK:
            found = getattr(state, attr, None)
            if found is None:
                found = build(state.settings)
                setattr(state, attr, found)
    return found


def limited_doc(description: str, retry_after: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entry of a 429 with ``Retry-After``."""
    return {429: {"model": Problem, "description": description,
                  "headers": {"Retry-After": {"description": retry_after,
                                              "schema": {"type": "integer", "minimum": 1}}}}}


def get_job_limits(request: Request) -> JobLimits:
    """One JobLimits per app, built on first use (tests may put their own on ``app.state.job_limits``)."""
    return app_singleton(request, "job_limits", JobLimits)


async def job_limits_dep(request: Request) -> JobLimits:
    """``get_job_limits`` as a dependency run on the event loop (no thread-pool hop; building it does no I/O)."""
    return get_job_limits(request)


JobLimitsDep = Annotated[JobLimits, Depends(job_limits_dep)]

# OpenAPI ``responses=`` entry of a route that admits jobs
RATE_LIMITED_DOC = limited_doc("Over the tenant's jobs-per-minute limit or GPU-seconds-per-day quota.",
                               "Seconds until a submission can succeed.")
