"""When the clients try a request again, and after how long (shared by the sync and async clients).

* ``429`` and ``503`` are retried for every method: the API answers them before doing anything (a rate limit or
  quota, a stream cap, a broker that could not take the job; nothing was kept). ``Retry-After`` (seconds or an
  HTTP date) is waited for as given; without it, exponential backoff with jitter.
* Connection errors (connect, read, write, timeouts, a peer that hung up) are retried only for idempotent
  requests: GET, HEAD, DELETE, and ``POST /v1/jobs`` carrying an ``Idempotency-Key``.
* No other answer is retried (a 400, 401, 404, 409 or 422 would come back the same).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "DELETE"})
# what a dropped or unreachable connection raises; LocalProtocolError, UnsupportedProtocol, ProxyError would fail
# the same way again
CONNECTION_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a client tries: ``max_attempts`` tries in all (1 = never retry).

    The n-th retry waits ``min(max_backoff_s, backoff_s * 2**(n-1))``, half of it fixed and half random (so many
    clients refused at once do not come back at once), unless the answer says ``Retry-After``. A ``Retry-After``
    longer than ``max_retry_after_s`` is not waited for: the error is raised at once.
    """

    max_attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 300.0
    jitter: Callable[[], float] = field(default=random.random, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)  # for HTTP-date Retry-After

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff(self, retry: int) -> float:
        """Seconds before the ``retry``-th retry (1-based) when the answer does not say."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2.0 ** (retry - 1))
        return ceiling / 2 + self.jitter() * ceiling / 2

    def attempts(self, *, idempotent: bool) -> Attempts:
        return Attempts(self, idempotent=idempotent)


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (epoch seconds): delta-seconds or an HTTP date; None if absent or
    unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


class Attempts:
    """One request's tries: after each failure, the seconds to wait before the next one, or None to give up."""

    def __init__(self, policy: RetryPolicy, *, idempotent: bool) -> None:
        self.policy = policy
        self.idempotent = idempotent
        self.made = 0

    def reset(self) -> None:
        """The request made progress (an event stream delivered an event): its failures start over."""
        self.made = 0

    def after_response(self, response: httpx.Response) -> float | None:
        self.made += 1
        if response.status_code not in RETRY_STATUSES or self.made >= self.policy.max_attempts:
            return None
        after = retry_after_seconds(response.headers.get("Retry-After"), now=self.policy.clock())
        if after is None:
            return self.policy.backoff(self.made)
        return after if after <= self.policy.max_retry_after_s else None

    def after_error(self, exc: Exception) -> float | None:
        self.made += 1
        if not self.idempotent or not isinstance(exc, CONNECTION_ERRORS) or self.made >= self.policy.max_attempts:
            return None
        return self.policy.backoff(self.made)
