"""A small client for OpenAI-compatible chat completions (vLLM, llama.cpp server, Ollama, OpenAI).

* Structured output: ``response_format: {"type": "json_schema", ...}`` always (unless configured to
  ``json_object``); on a vLLM server also vLLM's own field — ``structured_outputs: {"json": schema}``
  from 0.11, ``guided_json`` before (removed in 0.12). ``auto`` finds out once, from ``GET /models``
  (vLLM answers ``owned_by: "vllm"``) and ``GET /version``.
* Timeouts per request; retries with exponential backoff and jitter after timeouts, connection
  errors, 429 and 5xx (``Retry-After`` honoured, capped), and after malformed replies (no JSON body,
  no ``choices``). Other 4xx answers are not retried.
* The HTTP client is injectable (``transport=`` or ``client=``), so tests can pass their own.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from .errors import EngineError

log = logging.getLogger(__name__)

StructuredMode = Literal["auto", "response_format", "vllm", "vllm_legacy", "json_object"]
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0
VLLM_STRUCTURED_OUTPUTS = (0, 11, 0)  # first vLLM release that reads `structured_outputs`


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    model: str
    attempts: int
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerInfo:
    kind: Literal["vllm", "other"]
    version: tuple[int, ...] | None = None


def _version(text: str) -> tuple[int, ...] | None:
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    return tuple(int(g or 0) for g in m.groups()) if m else None


class ChatClient:
    """Chat completions against one OpenAI-compatible endpoint (``base_url`` ends in ``/v1``)."""

    def __init__(self, base_url: str, *, model: str, api_key: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 2, backoff_s: float = 0.5, structured: StructuredMode = "auto",
                 temperature: float = 0.2, max_tokens: int = 2048, transport: httpx.BaseTransport | None = None,
                 client: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.structured = structured
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._sleep = sleep
        self._rng = rng or random.Random()
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._owns = client is None
        self.http = client or httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers,
                                           transport=transport)
        self._server: ServerInfo | None = None

    def close(self) -> None:
        if self._owns:
            self.http.close()

    # ------------------------------------------------------------ server discovery

    def server(self) -> ServerInfo:
        """What serves this endpoint (probed once; a failed probe means 'other': plain response_format)."""
        if self._server is None:
            self._server = self._probe()
        return self._server

    def _probe(self) -> ServerInfo:
        try:
            r = self.http.get(f"{self.base_url}/models", timeout=min(10.0, self.http.timeout.read or 10.0))
            data = r.json().get("data", []) if r.status_code == 200 else []
            if not any(isinstance(m, dict) and m.get("owned_by") == "vllm" for m in data):
                return ServerInfo("other")
            root = re.sub(r"/v1$", "", self.base_url)
            v = self.http.get(f"{root}/version", timeout=min(10.0, self.http.timeout.read or 10.0))
            version = _version(str(v.json().get("version", ""))) if v.status_code == 200 else None
            return ServerInfo("vllm", version)
        except (httpx.HTTPError, ValueError, AttributeError):
            log.info("could not probe %s; using plain response_format", self.base_url, exc_info=True)
            return ServerInfo("other")

    def structured_fields(self, schema: dict[str, Any], name: str) -> dict[str, Any]:
        """The request fields that constrain the answer to ``schema`` on this server."""
        mode = self.structured
        if mode == "json_object":
            return {"response_format": {"type": "json_object"}}
        body: dict[str, Any] = {"response_format": {"type": "json_schema",
                                                    "json_schema": {"name": name, "schema": schema, "strict": True}}}
        if mode == "auto":
            info = self.server()
            if info.kind == "vllm":
                mode = "vllm" if info.version is None or info.version >= VLLM_STRUCTURED_OUTPUTS else "vllm_legacy"
        if mode == "vllm":
            body["structured_outputs"] = {"json": schema}
        elif mode == "vllm_legacy":
            body["guided_json"] = schema
        return body

    # ------------------------------------------------------------ completions

    def complete(self, messages: list[dict[str, Any]], *, schema: dict[str, Any] | None = None, name: str = "answer",
                 max_tokens: int | None = None, temperature: float | None = None,
                 model: str | None = None) -> Completion:
        """One chat completion; retried as described in the module docstring. Raises EngineError."""
        body: dict[str, Any] = {"model": model or self.model, "messages": messages,
                                "temperature": self.temperature if temperature is None else temperature,
                                "max_tokens": max_tokens or self.max_tokens, "stream": False}
        if schema is not None:
            body.update(self.structured_fields(schema, name))
        last = "no attempt made"
        for attempt in range(1, self.max_retries + 2):
            delay: float | None = None
            try:
                r = self.http.post(f"{self.base_url}/chat/completions", json=body)
            except httpx.TimeoutException as exc:
                last = f"timed out ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                if r.status_code == 200:
                    try:
                        return self._parse(r, attempt, body["model"])
                    except ValueError as exc:
                        last = f"malformed reply: {exc}"
                elif r.status_code in RETRY_STATUSES:
                    last = f"HTTP {r.status_code}: {r.text[:200]}"
                    delay = _retry_after(r)
                else:
                    raise EngineError(f"{self.base_url} answered HTTP {r.status_code}: {r.text[:300]}",
                                      attempts=attempt)
            if attempt > self.max_retries:
                break
            if delay is None:
                delay = self.backoff_s * 2 ** (attempt - 1) * (0.5 + self._rng.random())
            log.warning("LLM request attempt %d failed (%s); retrying in %.2fs", attempt, last, delay)
            self._sleep(min(delay, MAX_RETRY_AFTER_S))
        raise EngineError(f"{self.base_url}: {last} after {self.max_retries + 1} attempts",
                          attempts=self.max_retries + 1)

    @staticmethod
    def _parse(r: httpx.Response, attempt: int, model: str) -> Completion:
        try:
            data = r.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"the body is not JSON ({exc})") from exc
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ValueError("no choices in the reply")
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise ValueError("the first choice has no message content")
        return Completion(text=content, finish_reason=choices[0].get("finish_reason"),
                          model=str(data.get("model") or model), attempts=attempt,
                          usage=data.get("usage") if isinstance(data.get("usage"), dict) else {})


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
