"""Settings for every Atelier process, read from ``ATELIER_*`` environment variables and secret files.

Build them in a factory (``Settings()``) and pass them down; nothing reads them at import time.

A setting may also come from a file in the secrets folder (pydantic-settings' ``secrets_dir``): the file is named
like the environment variable in lower case (``atelier_session_secret``, ``atelier_s3_secret_key``,
``atelier_database_url``) and holds the value (surrounding whitespace stripped). The folder is
``ATELIER_SECRETS_DIR``, else ``/run/secrets`` when it exists (where Docker and Kubernetes put secret files). The
environment wins over a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

# secrets services mode refuses to start with: the placeholders of our own templates and MinIO's default
PLACEHOLDER_SECRETS = frozenset({"minioadmin", "change-me", "change-me-too", "atelier-change-me", "changeme",
                                 "password", "secret", "atelier"})
MIN_SECRET_CHARS = 12
MIN_SESSION_SECRET_CHARS = 32


def _placeholder(value: str) -> bool:
    return value.lower() in PLACEHOLDER_SECRETS or "change-me" in value.lower()


def _pem_file(path: Path) -> bool:
    """True when ``path`` reads as PEM (a ``-----BEGIN`` block) and holds no placeholder text (base64 has no '-',
    so a real PEM body never reads as ``change-me``)."""
    try:
        head = path.read_text(errors="replace")[:65536]
    except OSError:
        return False
    return "-----BEGIN " in head and not _placeholder(head)


# where secret files are read from when ATELIER_SECRETS_DIR is not set (Docker's and Kubernetes' convention)
DEFAULT_SECRETS_DIR = Path("/run/secrets")


def default_secrets_dir() -> Path | None:
    """``/run/secrets`` when that folder exists, else None (no secret files)."""
    return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None


def _secrets_folder(init: PydanticBaseSettingsSource, env: PydanticBaseSettingsSource) -> Path | None:
    """The secrets folder a Settings() call reads: its ``secrets_dir`` argument, else ATELIER_SECRETS_DIR (empty:
    none), else the default."""
    if isinstance(init, InitSettingsSource) and "secrets_dir" in init.init_kwargs:
        value = init.init_kwargs["secrets_dir"]
    elif isinstance(env, EnvSettingsSource) and (key := _env_key(env, "secrets_dir")) in env.env_vars:
        value = env.env_vars[key]
    else:
        return default_secrets_dir()
    return Path(value) if value not in (None, "") else None


def _env_key(env: EnvSettingsSource, field: str) -> str:
    name = f"{env.env_prefix}{field}"
    return name if env.case_sensitive else name.lower()


# services mode (a broker is set): defaults of the settings the environment leaves unset
SERVICES_DEFAULTS: dict[str, float | int] = {"rate_limit_jobs_per_minute": 120, "quota_gpu_seconds_per_day": 86400.0}


class Settings(BaseSettings):
    """Every knob of the system; defaults give the embedded laptop mode."""

    model_config = SettingsConfigDict(env_prefix="ATELIER_", extra="ignore")

    # where things live
    home: Path = Field(default=Path("var"), description="Folder for the embedded database, artifacts and models.")
    secrets_dir: Path | None = Field(default_factory=default_secrets_dir, description=(
        "Folder of secret files, one per setting, named like its environment variable in lower case (e.g. "
        "atelier_session_secret, atelier_s3_secret_key, atelier_database_url); the environment wins over a file. "
        "Unset = /run/secrets when it exists; empty = none."))
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite file in home.")
    broker_url: str | None = Field(default=None, description="Celery broker (redis://...); unset = embedded in-process worker.")
    storage: Literal["local", "s3"] = "local"
    storage_root: Path | None = Field(default=None, description="Local artifact folder; default home/artifacts.")
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: str = "minioadmin"
    s3_bucket: str = "atelier"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_public_endpoint: str | None = Field(default=None, description=(
        "host[:port] (or http(s)://host[:port]) at which integrators reach the S3 store; set with storage=s3, asset "
        "URLs are S3 presigned GET URLs signed for it (a bare host uses s3_secure's scheme); unset = asset URLs "
        "point at the API's /v1/assets."))

    # models
    models_dir: Path | None = Field(default=None, description="Folder of local model folders; default home/models.")
    models_file: Path | None = Field(default=None, description="models.yaml; default models_dir/models.yaml.")
    default_model: str = "sdxl-tiny"
    gen_max_side: int = Field(default=1024, ge=32, le=4096, description="Longest side generated; renderer scales up to the target.")
    gen_steps: int | None = Field(default=None, ge=1, le=200, description="Override the model preset's step count.")
    model_cache_size: int = Field(default=2, ge=1, description="Warm pipelines kept resident per worker.")
    # GPU diffusion worker
    model_memory_gb: float | None = Field(default=None, gt=0, description="Memory budget of a GPU worker's warm "
                                          "pipelines and ControlNets; least recently used evicted beyond it.")
    gpu_max_batch: int = Field(default=4, ge=1, le=64, description="Compatible diffusion requests (same model, "
                               "recipe, size, steps, conditioning) run in one pipeline call, up to this many.")
    gpu_drain: bool = Field(default=True, description="A diffusion worker takes up to gpu_max_batch-1 more queued "
                            "diffusion tasks from the broker to batch with the one it runs.")

    # orchestration
    stage_max_attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff_s: float = Field(default=2.0, ge=0)
    visibility_timeout_s: int = Field(default=3600, ge=1)
    unacked_restore_interval_s: float = Field(default=60.0, gt=0)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    started_notice_after_s: float = Field(default=1.0, ge=0, description=(
        "A worker tells the orchestrator a stage started once it has run this long; a stage that ends sooner sends "
        "no separate notice (its result records the start and the `stage.started` event, in the same transaction): "
        "one orchestrator transaction on the job's row less for every short stage. Progress reports start at the "
        "same age, so a stage that ends sooner sends its result alone. 0: always at once."))
    stall_after_s: float = Field(default=60.0, gt=0, description="A running stage with no heartbeat for this long is re-driven.")
    worker_loop_stall_s: float = Field(default=120.0, ge=0, description=(
        "A worker whose Celery event loop has not turned for this long while it runs no task exits, so `atelier "
        "worker`'s supervisor restarts it (kombu 5.7 can block the loop on a Redis pub/sub read after a Redis "
        "restart); 0 turns the watchdog off."))
    worker_heartbeat_file: Path | None = Field(default=None, description=(
        "A file the worker touches every second while its event loop turns or a task runs; `atelier healthcheck` "
        "reads its age (the container's healthcheck / liveness probe, with `atelier worker --no-supervise`)."))
    queued_stall_s: float = Field(default=900.0, gt=0, description="A queued stage no worker has touched for this long is re-sent.")
    start_stall_s: float = Field(default=30.0, gt=0, description="A job still queued this long after submission is started again.")
    reconcile_interval_s: float = Field(default=10.0, gt=0)
    worker_name: str | None = None
    log_format: Literal["text", "json"] = Field(default="text", description=(
        "`json`: one JSON object per log line (time, level, logger, message, and the job_id / stage / item / "
        "stage_id / tenant_id it is about) for a log shipper; `text`: for a terminal."))
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description=(
        "`atelier worker` serves Prometheus metrics (its stages, and for the orchestrator jobs, stages, queue "
        "depths and webhook deliveries, with the process collectors) on this port; unset or 0: none. The API "
        "serves its own on /metrics."))

    # api
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    forwarded_allow_ips: str | None = Field(default=None, description=(
        "Proxies whose X-Forwarded-Proto/For the API trusts (comma-separated addresses or '*'); unset = uvicorn's "
        "default (127.0.0.1). `atelier serve --forwarded-allow-ips` overrides it."))
    allow_placeholder_secrets: bool = Field(default=False, description=(
        "Let services mode start with a placeholder or short secret (the trial docker-compose defaults); never in "
        "production."))
    upload_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    upload_max_pixels: int = Field(default=40_000_000, ge=1)
    sse_poll_s: float = Field(default=0.25, gt=0)
    public_base_url: str | None = Field(default=None, description=(
        "Where integrators reach the API, e.g. https://atelier.example.com (http/https, no query or fragment; a "
        "trailing slash is dropped): asset URLs are made absolute with it; unset = relative /v1/assets/... URLs."))
    asset_url_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, le=7 * 24 * 3600, description=(
        "Lifetime of an asset URL (artifact download_url, webhooks), rounded up to the next whole hour so URLs "
        "made within the same hour are the same; at most 7 days (S3's presigned-URL limit)."))
    asset_max_streams_per_client: int = Field(default=8, ge=0, description=(
        "Downloads one client address may run at once from the public /v1/assets route per API process; 0 = no "
        "cap."))

    # dashboard sessions
    session_secret: SecretStr | None = Field(
        default=None, description="Signs dashboard session cookies; unset = generated once and kept in "
                                  "home/session_secret (set it when several API processes serve the dashboard).")
    session_max_age_s: int = Field(default=7 * 24 * 3600, ge=60, description="Dashboard sign-in lifetime.")
    cookie_secure: bool | None = Field(
        default=None, description="Always set Secure on the dashboard cookie (true: behind a TLS-terminating "
                                  "proxy); unset = only when the request itself came over https.")

    # planner backends: which backend plans, the OpenAI-compatible LLM/VLM server, local model folders
    planner_backend: Literal["rules", "openai", "transformers", "vllm"] = Field(
        default="rules", description="rules (offline, deterministic) | openai (any OpenAI-compatible server: vLLM, "
                                     "llama.cpp, Ollama) | transformers (local folder, in-process) | vllm (in-process).")
    planner_fallback: bool = Field(default=True, description="A failed LLM plan falls back to the rules backend "
                                                             "(and records it); false fails the stage instead.")
    planner_allow_occlude: bool = Field(default=False, description="PAID allow_occlude default: graphics may cover "
                                                                   "part of the product.")
    llm_base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint, e.g. http://vllm:8000/v1.")
    llm_model: str | None = Field(default=None, description="Model name the server serves (vLLM --served-model-name).")
    llm_api_key: SecretStr | None = Field(default=None, description="Bearer key of the LLM server, if it wants one.")
    llm_timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout of one chat completion.")
    llm_max_retries: int = Field(default=2, ge=0, le=10, description="Retries after timeouts, 429 and 5xx answers.")
    llm_retry_backoff_s: float = Field(default=0.5, ge=0, description="First retry delay; doubles, with jitter.")
    llm_temperature: float = Field(default=0.2, ge=0, le=2)
    llm_max_tokens: int = Field(default=2048, ge=16, le=131072)
    llm_structured_output: Literal["auto", "response_format", "vllm", "vllm_legacy", "json_object"] = Field(
        default="auto", description="auto: response_format json_schema, plus vLLM's structured_outputs (or "
                                    "guided_json before 0.11) when the server is vLLM.")
    vlm_model: str | None = Field(default=None, description="Vision-language model for PAID prompts and the critic; "
                                                            "unset = no VLM (the critic reports itself absent).")
    vlm_base_url: str | None = Field(default=None, description="Endpoint of the VLM; default llm_base_url.")
    vlm_max_image_side: int = Field(default=768, ge=64, le=4096, description="Images sent to the VLM are scaled to fit.")
    transformers_model_dir: Path | None = Field(default=None, description="Local causal-LM folder for the "
                                                                          "transformers backend (no downloads).")
    transformers_device: str = Field(default="cpu", description="torch device of the transformers backend.")
    transformers_max_new_tokens: int = Field(default=1024, ge=16, le=32768)
    vllm_model_dir: Path | None = Field(default=None, description="Local model folder for the in-process vllm backend.")
    vllm_gpu_memory_utilization: float = Field(default=0.45, gt=0, le=1)
    plan_preview_timeout_s: float = Field(default=120.0, gt=0, description="POST /v1/plans:preview waits this long "
                                                                            "for a planner worker.")

    # rendering and delivery: ad checks, webhooks and their SSRF guard, the CLI/SDK's API
    render_ocr: bool = Field(default=True, description="OCR every rendered text box (Tesseract) as a gate score.")
    render_ocr_max_cer: float = Field(default=0.05, ge=0, le=1, description="Character error rate an OCR gate passes at.")
    webhook_poll_s: float = Field(default=1.0, gt=0, description="How often the webhook dispatcher looks for work.")
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of each network operation of a webhook "
                                     "delivery (connect, one read, one write), within webhook_send_deadline_s.")
    webhook_backoff_s: float = Field(default=5.0, gt=0, description="First retry delay; doubles per attempt, jittered.")
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0, description="Longest delay between two attempts.")
    webhook_retry_for_s: float = Field(default=24 * 3600.0, gt=0, description="A delivery is retried this long, "
                                                                             "then marked failed.")
    webhook_concurrency: int = Field(default=4, ge=1, le=64, description="Deliveries sent at once per dispatcher.")
    webhook_send_deadline_s: float = Field(default=10.0, gt=0, le=300, description="Total time one delivery may "
                                           "take (connect, send, read the answer); a receiver still answering then "
                                           "is cut off and the attempt counts as failed.")
    webhook_max_in_flight: int = Field(default=2, ge=1, le=64, description="Deliveries of one tenant in flight at "
                                                                           "once per dispatcher (fair share).")
    webhook_allowed_ports: str = Field(default="", pattern=r"^\s*(\d{1,5}\s*(,\s*\d{1,5}\s*)*)?$",
                                       description="Comma-separated ports webhook URLs may use (e.g. 443,8443); "
                                                   "empty: any port.")
    ssrf_allow: str = Field(default="", description="Comma-separated hosts or CIDRs that webhook URLs may target even "
                                                    "though they are loopback/private/link-local (e.g. 127.0.0.1/32).")
    api_url: str = Field(default="http://127.0.0.1:8000", description="Where `atelier submit`/`jobs` and the SDK "
                                                                      "find the API.")
    api_key: SecretStr | None = Field(default=None, description="API key the CLI client sends (ATELIER_API_KEY).")

    # identity, watermark and provenance
    identity_face_model_dir: Path | None = Field(default=None, description="InstantID face analysis folder (antelopev2-"
                                                 "style: detector + ArcFace ONNX); unset = no InstantID.")
    identity_controlnet_dir: Path | None = Field(default=None, description="InstantID IdentityNet ControlNet "
                                                 "(diffusers folder).")
    identity_ip_adapter_path: Path | None = Field(default=None, description="InstantID image-projection weights "
                                                  "(ip-adapter.bin/.safetensors: Resampler + to_k_ip/to_v_ip).")
    identity_reference_adapter_dir: Path | None = Field(
        default=None, description="IP-Adapter folder (weights + image_encoder/) for the fallback: the character "
                                  "sheet as a reference image when InstantID is not configured.")
    identity_embedder_path: Path | None = Field(default=None, description="Face embedder for the identity score: an "
                                                "ArcFace-style ONNX (OpenCV dnn) or TorchScript (.pt) model.")
    identity_cascade_path: Path | None = Field(default=None, description="Haar cascade XML for face detection; default "
                                               "OpenCV's frontal-face cascade (Debian opencv-data).")
    identity_threshold: float = Field(default=0.5, ge=-1, le=1, description="Cosine an identity gate passes at.")
    identity_gate_strict: bool = Field(default=False, description="Fail the job when a scene ends without passing "
                                                                  "its identity gate (no face found included).")
    gate_max_regenerations: int = Field(default=4, ge=0, le=100, description="Regenerations all gates of one job "
                                                                             "may ask for together (best-of-N budget).")
    gate_max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts per gated item (N of best-of-N).")
    watermark_backend: Literal["dwtdctsvd", "vine"] = "dwtdctsvd"
    watermark_vine_dir: Path | None = Field(default=None, description="TorchScript encoder.pt/decoder.pt of VINE.")
    watermark_fpr: float = Field(default=1e-3, gt=0, lt=1, description="False-positive rate detection decides at.")
    c2pa_cert_path: Path | None = Field(default=None, description="Production signing chain (PEM, leaf first); unset ="
                                        " a development CA + certificate made on first use under home/c2pa.")
    c2pa_key_path: Path | None = Field(default=None, description="Private key (PEM) of c2pa_cert_path.")
    c2pa_trust_anchors_path: Path | None = Field(default=None, description="PEM roots whose signatures read as "
                                                 "trusted (default: the development CA when it is in use).")
    c2pa_tsa_url: str | None = Field(default=None, description="RFC 3161 time-stamp authority for signatures.")

    # rate limits and quotas per tenant: 429 with Retry-After; 0 = off. Off by default in the embedded mode; in
    # services mode (a broker is set) what the environment leaves unset takes SERVICES_DEFAULTS
    rate_limit_jobs_per_minute: int = Field(default=0, ge=0, description="Jobs a tenant may submit (or retry) in any "
                                            "60 s (sliding window; Redis-shared); 0 = no limit. Services mode: 120.")
    quota_gpu_seconds_per_day: float = Field(default=0.0, ge=0, description="GPU-seconds a tenant's jobs of the last "
                                             "24 h may use or hold reserved before new submissions are refused; "
                                             "0 = no quota. Services mode: 86400 (one GPU-day).")
    quota_gpu_seconds_per_megapixel_step: float = Field(default=0.15, ge=0, description=(
        "How a submission's GPU work is estimated and reserved against the quota until its job ends: generated "
        "megapixels x denoising steps x this (0.15: SDXL on a data-centre GPU)."))
    quota_reuse_s: float = Field(default=1.0, ge=0, description=(
        "An API process reuses a tenant's committed GPU-seconds summed this recently (plus what it reserved since) "
        "while they are more than 10% below the quota, instead of summing the tenant's last 24 h of jobs again at "
        "every submission; near the quota every admission sums exactly. Usage recorded meanwhile (by running jobs, "
        "or admissions in other API processes) is seen this much later. 0: sum at every submission."))
    tenant_max_streams: int = Field(default=20, ge=0, description="Server-Sent Event streams a tenant may hold open "
                                                                  "at once per API process; 0 = no cap.")
    tenant_max_previews: int = Field(default=2, ge=0, description="Plan previews a tenant may run at once per API "
                                                                  "process; 0 = no cap.")
    tenant_max_verifies: int = Field(default=2, ge=0, description="Verifications a tenant may run at once per API "
                                                                  "process; 0 = no cap.")
    tenant_max_uploads: int = Field(default=8, ge=0, description="Uploads a tenant may send at once per API process; "
                                                                 "0 = no cap.")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings' own sources in its own order (arguments, environment, secret files), the secret files
        read from ``secrets_dir`` unless the caller passed ``_secrets_dir``."""
        if isinstance(file_secret_settings, SecretsSettingsSource) and file_secret_settings.secrets_dir is None:
            file_secret_settings = SecretsSettingsSource(settings_cls,
                                                         secrets_dir=_secrets_folder(init_settings, env_settings))
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @field_validator("secrets_dir", mode="before")
    @classmethod
    def _no_secrets_dir(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. https://atelier.example.com")
        if parts.query or parts.fragment or "?" in value or "#" in value:
            raise ValueError("must have no query or fragment")
        return value.strip().rstrip("/")

    @field_validator("s3_public_endpoint")
    @classmethod
    def _public_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        text = value.strip().rstrip("/")
        parts = urlsplit(text if "://" in text else f"//{text}")
        if parts.scheme not in ("", "http", "https") or not parts.hostname or parts.path or parts.query \
                or parts.fragment or parts.username or parts.password:
            raise ValueError("must be host[:port] or http(s)://host[:port], nothing else")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from exc
        return text

    @field_validator("webhook_allowed_ports")
    @classmethod
    def _ports_in_range(cls, value: str) -> str:
        bad = [p for p in (x.strip() for x in value.split(",")) if p and not 1 <= int(p) <= 65535]
        if bad:
            raise ValueError(f"ports must be 1..65535, got {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _services_defaults(self) -> Settings:
        """Limits a multi-tenant deployment should not run without, unless the environment says otherwise."""
        if self.broker_url:
            for name, value in SERVICES_DEFAULTS.items():
                if name not in self.model_fields_set:
                    setattr(self, name, value)
        return self

    def home_dir(self) -> Path:
        """``home``, created private (0700) when it does not exist yet: it holds the SQLite file (webhook secrets
        in it), the session secret and the development CA's key."""
        if not self.home.exists():
            try:
                self.home.mkdir(parents=True, mode=0o700)
            except FileExistsError:  # another process (or thread) made it first: theirs is made the same way
                return self.home
            os.chmod(self.home, 0o700)  # mkdir's mode passes through the umask
        return self.home

    def insecure_secrets(self) -> list[str]:
        """The settings that hold a known placeholder or a too-short secret (what services mode refuses to start
        with), each with the reason."""
        problems = []
        if self.storage == "s3":
            secret = self.s3_secret_key
            if _placeholder(secret) or len(secret) < MIN_SECRET_CHARS:
                problems.append(f"ATELIER_S3_SECRET_KEY is a placeholder or shorter than {MIN_SECRET_CHARS} characters")
        if self.session_secret is not None:
            value = self.session_secret.get_secret_value()
            if _placeholder(value) or len(value) < MIN_SESSION_SECRET_CHARS:
                problems.append(f"ATELIER_SESSION_SECRET is a placeholder or shorter than {MIN_SESSION_SECRET_CHARS} "
                                "characters")
        password = urlsplit(self.database_url or "").password
        if password is not None and (_placeholder(password) or len(password) < MIN_SECRET_CHARS):
            problems.append(f"the password in ATELIER_DATABASE_URL is a placeholder or shorter than "
                            f"{MIN_SECRET_CHARS} characters")
        for var, path in (("ATELIER_C2PA_CERT_PATH", self.c2pa_cert_path), ("ATELIER_C2PA_KEY_PATH", self.c2pa_key_path),
                          ("ATELIER_C2PA_TRUST_ANCHORS_PATH", self.c2pa_trust_anchors_path)):
            # a role that neither signs nor verifies has no such file mounted: only a file that is there is judged
            if path is not None and path.is_file() and not _pem_file(path):
                problems.append(f"{var} ({path}) is a placeholder or not a PEM file")
        return problems

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: one process runs API, orchestrator and workers."""
        return not self.broker_url

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'atelier.db').resolve()}"

    def resolved_storage_root(self) -> Path:
        return (self.storage_root or self.home / "artifacts").resolve()

    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.home / "models").resolve()

    def resolved_models_file(self) -> Path:
        return (self.models_file or self.resolved_models_dir() / "models.yaml").resolve()
