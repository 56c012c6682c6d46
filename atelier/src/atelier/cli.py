"""The ``atelier`` command: serve, worker, migrate, tenants, models, secrets, demo, verify, and the client commands."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from atelier_contracts.errors import AtelierError, Conflict
from atelier_contracts.tasks import ALL_QUEUES, GPU_QUEUES, Q_ORCHESTRATOR
from atelier_runtime.observability import configure_logging, start_metrics_server
from atelier_runtime.settings import Settings
from atelier_sdk import ApiError, ApiKeyInfo
from celery.signals import setup_logging, worker_ready, worker_shutdown

from .app import build_api
from .app import migrate as migrate_database
from .delivery_cli import register as register_delivery_commands
from .output import JsonFlag, emit, fail, fail_api, fail_atelier, json_errors, stdout_to_stderr
from .secrets_init import register as register_secrets_commands
from .supervise import supervise as run_supervised
from .watchdog import watchdog_step
from .workers import role_modules, worker_app

app = typer.Typer(help="Atelier: campaign and story content pipeline.", no_args_is_help=True, add_completion=False)
tenants_app = typer.Typer(help="Manage tenants and API keys.", no_args_is_help=True)
models_app = typer.Typer(help="Manage the local model folder.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(models_app, name="models")


def _settings() -> Settings:
    return Settings()


def refuse_insecure_secrets(settings: Settings) -> None:
    """Services mode does not start with a placeholder or short secret (unless ATELIER_ALLOW_PLACEHOLDER_SECRETS)."""
    problems = settings.insecure_secrets()
    if settings.embedded or not problems or settings.allow_placeholder_secrets:
        return
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    typer.echo("set real secrets (or ATELIER_ALLOW_PLACEHOLDER_SECRETS=true for a local trial)", err=True)
    raise typer.Exit(2)


@app.command()
def migrate() -> None:
    """Bring the database schema to the latest migration."""
    migrate_database(_settings())
    typer.echo("database is at head")


@tenants_app.command("create")
def tenants_create(name: str, as_json: JsonFlag = False) -> None:
    """Create a tenant and print its API key (shown once; only its hash is stored).

    --json: {"id", "name", "key"}, ``key`` being the API key (shown this once)."""
    # the control plane is an optional extra (atelier[api] / atelier[orchestrator]): a GPU host has no database
    from atelier_control.auth import create_tenant
    from atelier_control.db import engine_from_settings, session_factory, session_scope

    settings = _settings()
    if settings.embedded:
        migrate_database(settings)
    factory = session_factory(engine_from_settings(settings))
    try:
        with session_scope(factory) as session:
            tenant, key = create_tenant(session, name)
            tenant_id = tenant.id
    except Conflict as exc:
        raise fail_atelier(exc, as_json) from exc
    emit({"id": tenant_id, "name": name, "key": key}, as_json,
         f"tenant {tenant_id} ({name})\napi key (store it now, it is not shown again): {key}")


# ---------------------------------------------------------------- keys: on the database, like `tenants create`

keys_app = typer.Typer(help="Issue, list and revoke a tenant's API keys (on the database directly).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")
TenantOption = Annotated[str, typer.Option("--tenant", help="The tenant's id or name.")]


@contextmanager
def _control_session(json_mode: bool) -> Iterator[Any]:
    """A session on ATELIER_DATABASE_URL (the embedded SQLite file is migrated first), committed at the end;
    an Atelier error (unknown tenant or key, bad name) is printed and exits 1."""
    # the control plane is an optional extra (atelier[api] / atelier[orchestrator]): a GPU host has no database
    from atelier_control.db import engine_from_settings, session_factory, session_scope

    settings = _settings()
    if settings.embedded:
        migrate_database(settings)
    engine = engine_from_settings(settings)
    try:
        with session_scope(session_factory(engine)) as session:
            yield session
    except AtelierError as exc:
        raise fail_atelier(exc, json_mode) from exc
    finally:
        engine.dispose()


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they are UTC (as the API shows them)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _key_view(row: Any, key: str | None = None) -> dict[str, Any]:
    """A key as the API shows it (GET /v1/keys); with KEY, the secret, as POST /v1/keys answers it that once."""
    info = ApiKeyInfo(id=row.id, name=row.name, role=row.role, prefix=row.prefix, created_at=_utc(row.created_at),
                      revoked_at=_utc(row.revoked_at), key=key)
    return info.model_dump(mode="json", exclude=None if key else {"key"})


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Argument(help="What the key is for (e.g. ci).")],
                tenant: TenantOption,
                role: Annotated[str, typer.Option(help="member: every API route but /v1/keys; admin: also issues, "
                                                       "lists and revokes the tenant's keys.")] = "member",
                as_json: JsonFlag = False) -> None:
    """Issue a new API key and print it (shown once; only its hash is stored).

    --json: the key as POST /v1/keys answers it: {"id", "name", "role", "prefix", "created_at", "revoked_at", "key"}."""
    # the control plane is an optional extra (atelier[api] / atelier[orchestrator]): a GPU host has no database
    from atelier_control.auth import create_key, find_tenant

    with _control_session(as_json) as session:
        owner = find_tenant(session, tenant)
        row, key = create_key(session, owner.id, name, role=role)
        view, owner_name = _key_view(row, key), owner.name
    emit(view, as_json, f"{view['role']} key {view['id']} ({view['name']}) of tenant {owner_name}\n"
                        f"api key (store it now, it is not shown again): {key}")


@keys_app.command("list")
@keys_app.command("ls")
def keys_ls(tenant: TenantOption, as_json: JsonFlag = False) -> None:
    """List the tenant's keys, revoked ones included (never a secret).

    --json: a list of {"id", "name", "role", "prefix", "created_at", "revoked_at"} (GET /v1/keys's items)."""
    # the control plane is an optional extra (atelier[api] / atelier[orchestrator]): a GPU host has no database
    from atelier_control.auth import find_tenant, list_keys

    with _control_session(as_json) as session:
        rows = [_key_view(r) for r in list_keys(session, find_tenant(session, tenant).id)]

    def table() -> None:
        typer.echo(f"{'id':<38}  {'prefix':<8}  {'role':<6}  {'created':<19}  {'status':<26}  name")
        for r in rows:
            status = f"revoked {r['revoked_at'][:19]}" if r["revoked_at"] else "active"
            typer.echo(f"{r['id']:<38}  {r['prefix']:<8}  {r['role']:<6}  {r['created_at'][:19]:<19}  {status:<26}  "
                       f"{r['name']}")

    emit(rows, as_json, table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_...), from `atelier keys ls`.")],
                tenant: TenantOption, as_json: JsonFlag = False) -> None:
    """Revoke a key: refused from the next request on; the dashboard sessions signed in with it end. The tenant's
    last active admin key stays (409): issue another admin key first.

    --json: the revoked key, {"id", "name", "role", "prefix", "created_at", "revoked_at"}."""
    # the control plane is an optional extra (atelier[api] / atelier[orchestrator]): a GPU host has no database
    from atelier_control.auth import find_tenant, revoke_key

    with _control_session(as_json) as session:
        view = _key_view(revoke_key(session, find_tenant(session, tenant).id, key_id))
    emit(view, as_json, f"revoked key {key_id} ({view['name']}); its dashboard sessions are signed out")


@models_app.command("init-tiny")
def models_init_tiny(
    dest: Annotated[Path, typer.Argument(help="Folder to write the tiny model folders and models.yaml into.")],
    bench: Annotated[bool, typer.Option(help="Also write the bench-sized random SDXL.")] = False,
    identity: Annotated[bool, typer.Option(help="Also write tiny random InstantID weights (face model, IdentityNet, "
                                                "ip-adapter.bin) for sdxl-tiny under DEST/identity and print the "
                                                "ATELIER_IDENTITY_* settings that use them.")] = False,
    force: Annotated[bool, typer.Option(help="Rebuild folders that already exist.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Write tiny random-init SDXL and FLUX pipelines (save_pretrained) and a models.yaml, for tests and demos.

    --json: {"models_file": path, "identity": {ATELIER_IDENTITY_*: path} or null}."""
    with json_errors(as_json, OSError, ImportError), stdout_to_stderr(as_json):
        from atelier_gpu import tiny  # a development facility of the GPU package (torch, diffusers): atelier[gpu]

        path = tiny.init_tiny(dest, bench=bench, force=force)
        settings = tiny.init_tiny_instantid(dest / "identity", dest / "sdxl-tiny", force=force) if identity else None
    resolved = None if settings is None else {name: str(Path(value).resolve()) for name, value in settings.items()}

    def lines() -> None:
        typer.echo(f"wrote {path}")
        if resolved is not None:
            typer.echo("tiny InstantID weights (random: they exercise the path, they do not keep a face); use them "
                       "with:")
            for name, value in resolved.items():
                typer.echo(f"{name}={value}")

    emit({"models_file": str(path), "identity": resolved}, as_json, lines)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default ATELIER_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default ATELIER_API_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="API processes (services mode only: the embedded mode runs its "
                                                     "workers inside its one process).")] = 1,
    forwarded_allow_ips: Annotated[str | None, typer.Option(
        help="Proxies whose X-Forwarded-Proto/For headers are trusted (comma-separated IPs or '*'; default "
             "ATELIER_FORWARDED_ALLOW_IPS, else uvicorn's: $FORWARDED_ALLOW_IPS or 127.0.0.1).")] = None,
) -> None:
    """Run the API (and dashboard). Without ATELIER_BROKER_URL, jobs run in this same process."""
    import uvicorn  # comes with atelier[api]

    settings = _settings()
    refuse_insecure_secrets(settings)
    options: dict[str, Any] = {"host": host or settings.api_host, "port": port or settings.api_port,
                               "log_level": "info", "timeout_graceful_shutdown": 30, "proxy_headers": True,
                               "forwarded_allow_ips": forwarded_allow_ips or settings.forwarded_allow_ips}
    configure_logging("INFO", settings.log_format)
    if settings.log_format == "json":
        options["log_config"] = None  # uvicorn's own loggers go through the root's JSON handler
    if settings.embedded:
        if workers > 1:
            typer.echo("error: --workers needs a broker (ATELIER_BROKER_URL): in the embedded mode jobs run inside "
                       "the one API process", err=True)
            raise typer.Exit(2)
        uvicorn.run(build_api(settings), **options)
    elif workers > 1:  # each process builds its own app from the environment
        uvicorn.run("atelier_api.app:app_from_env", factory=True, workers=workers, **options)
    else:
        uvicorn.run(build_api(settings), **options)


@app.command()
def healthcheck(
    max_age: Annotated[float, typer.Option(help="Seconds since the worker's last heartbeat that still count as alive.")] = 30.0,
    as_json: JsonFlag = False,
) -> None:
    """Exit 0 when this container's worker is alive (its heartbeat file, ATELIER_WORKER_HEARTBEAT_FILE, was touched
    within MAX_AGE seconds: its event loop turns or a task runs), 1 otherwise — a compose healthcheck or a
    Kubernetes liveness probe, with `atelier worker --no-supervise` so the platform restarts and counts failures.

    --json: {"healthy": true, "heartbeat_file", "age_s", "max_age_s"}; unhealthy is the error object (exit 1)."""

    def unhealthy(reason: str) -> typer.Exit:
        return fail(f"unhealthy: {reason}", as_json, human=f"unhealthy: {reason}")

    path = _settings().worker_heartbeat_file
    if path is None:
        raise unhealthy("ATELIER_WORKER_HEARTBEAT_FILE is not set")
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        raise unhealthy(f"no heartbeat at {path} (the worker has not started consuming)") from None
    if age > max_age:
        raise unhealthy(f"last heartbeat {age:.0f} s ago (> {max_age:g} s)")
    emit({"healthy": True, "heartbeat_file": str(path), "age_s": round(age, 3), "max_age_s": max_age}, as_json,
         f"healthy: last heartbeat {age:.1f} s ago")


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help=f"Comma-separated queues: {','.join(ALL_QUEUES)}")] = ",".join(ALL_QUEUES),
    pool: Annotated[str | None, typer.Option(help="Celery pool: solo (default with a GPU queue), threads, prefork.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Tasks at once (GPU queues: 1).")] = None,
    name: Annotated[str | None, typer.Option(help="Worker node name.")] = None,
    loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO",
    supervise: Annotated[bool, typer.Option(help="Run the Celery worker as a child process and restart it if it "
                                                 "dies (not on a shutdown signal or a clean exit).")] = True,
) -> None:
    """Run a Celery worker for one or more roles (queues) against the configured broker.

    ``kill -USR2 <pid>`` (or to the process group) writes every thread's stack to the log (faulthandler:
    works even while a thread is stuck in C code); Celery's own SIGUSR1 dump needs the main thread free.
    """
    faulthandler.register(signal.SIGUSR2, file=sys.__stderr__, all_threads=True)

    settings = _settings()
    qs = [q.strip() for q in queues.split(",") if q.strip()]
    refuse_insecure_secrets(settings)
    if settings.embedded:
        typer.echo("error: set ATELIER_BROKER_URL (e.g. redis://127.0.0.1:6379/0); without a broker, "
                   "`atelier serve` runs the workers in-process", err=True)
        raise typer.Exit(2)
    try:
        if not qs:
            raise ValueError(f"no queue given; known: {sorted(ALL_QUEUES)}")
        role_modules(qs)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if supervise:
        logging.basicConfig(level=logging.WARNING)
        child = [sys.executable, "-m", "atelier.cli", "worker", "--queues", ",".join(qs),
                 "--loglevel", loglevel, "--no-supervise"]
        for flag, value in (("--pool", pool), ("--concurrency", concurrency), ("--name", name)):
            if value is not None:
                child += [flag, str(value)]
        raise typer.Exit(run_supervised(child))


    # this process's logs (Celery's too: a setup_logging receiver keeps Celery from configuring its own) carry the
    # job and stage of the task they are about; ATELIER_LOG_FORMAT=json for a log shipper
    setup_logging.connect(lambda **_: configure_logging(loglevel, settings.log_format), weak=False)
    try:
        celery_app = worker_app(settings, qs)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if start_metrics_server(settings.metrics_port):  # Prometheus: this worker's stages (+ the process collectors)
        logging.getLogger(__name__).info("metrics on :%d/metrics", settings.metrics_port)
    if settings.worker_loop_stall_s > 0 or settings.worker_heartbeat_file is not None:
        celery_app.steps["consumer"].add(watchdog_step(settings.worker_loop_stall_s, settings.worker_heartbeat_file))
    gpu = any(q in GPU_QUEUES for q in qs)
    pool = pool or ("solo" if gpu else "threads")
    concurrency = concurrency or (1 if gpu or pool == "solo" else 4)
    if Q_ORCHESTRATOR in qs:
        # the reconciler and the webhook dispatcher run beside the orchestrator's tasks (installed with them)
        from atelier_orchestrator.background import start_background

        worker_ready.connect(lambda **_: start_background(celery_app), weak=False)
    argv = ["worker", "-Q", ",".join(qs), "-P", pool, "-c", str(concurrency), "-l", loglevel,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", name or f"{'+'.join(qs)}@{os.uname().nodename}-{os.getpid()}"]
    # Exit with the worker's own code: Celery's worker_main/start drop it (click's non-standalone mode returns it
    # instead of raising), so an "Unrecoverable error" exited 0 and the supervisor took it for a clean shutdown.
    codes: list[int] = []
    worker_shutdown.connect(lambda sender=None, **_: codes.append(getattr(sender, "exitcode", None) or 0), weak=False)
    celery_app.worker_main(argv)
    raise typer.Exit(codes[-1] if codes else 0)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where summary.json goes.")] = Path("out/demo"),
    home: Annotated[Path, typer.Option(help="Embedded database, artifacts and tiny models.")] = Path("var/demo"),
) -> None:
    """Run one campaign (3 sizes x 2 variants) and one story (4 pages) end to end in this process."""
    from .demo import run_demo  # every role in this process and the tiny models: atelier[all]

    logging.basicConfig(level=logging.WARNING)
    env = {k: v for k, v in os.environ.items() if k.startswith("ATELIER_")}
    settings = Settings(**{"home": home, "broker_url": None, "storage": "local", "database_url": None,
                           "gen_max_side": int(env.get("ATELIER_GEN_MAX_SIDE", "128"))})
    ok = run_demo(settings, out)
    raise typer.Exit(0 if ok else 1)


@app.command()
def verify(
    image: Annotated[Path, typer.Argument(help="The file to check (PNG, JPEG, WebP).", exists=True, dir_okay=False)],
    api_url: Annotated[str | None, typer.Option(help="Ask this Atelier API instead (POST /v1/verify); with "
                                                     "--api-key it also names the job, within your tenant.")] = None,
    api_key: Annotated[str | None, typer.Option(help="Tenant API key for --api-url (default ATELIER_API_KEY).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON (POST /v1/verify's answer); "
                                                        'an error as {"error": {...}}, same exit code.')] = False,
) -> None:
    """Is IMAGE ours? Invisible watermark (decision at the stated false-positive rate) + C2PA manifest.

    Exits 0 when the watermark is found and the content credentials verify, 1 otherwise (the report is printed
    either way), 2 when it cannot be checked.
    """
    settings = _settings()
    data = image.read_bytes()
    if api_url:
        key = api_key or os.environ.get("ATELIER_API_KEY")
        if not key:
            raise fail("--api-url needs --api-key (or ATELIER_API_KEY)", as_json, code=2, field="api_key")
        with json_errors(as_json, httpx.TransportError):
            resp = httpx.post(api_url.rstrip("/") + "/v1/verify", files={"file": (image.name, data)},
                              headers={"Authorization": f"Bearer {key}"}, timeout=120)
        if resp.status_code != 200:
            raise fail_api(ApiError.from_response(resp), as_json, human=f"error: {resp.status_code} {resp.text}")
        report = resp.json()
    else:
        try:
            # the provenance package comes with the api, renderer and gpu extras; --api-url needs none of it
            from atelier_provenance.verify import verify_image
        except ModuleNotFoundError as exc:
            raise fail("verifying here needs the provenance package (pip install 'atelier[api]'), or ask a server "
                       "with --api-url", as_json, code=2) from exc
        try:
            with stdout_to_stderr(as_json):
                report = verify_image(data, settings=settings)
        except AtelierError as exc:
            raise fail_atelier(exc, as_json, code=2) from exc
    mark, c2pa = report["watermark"], report["c2pa"]

    def lines() -> None:
        typer.echo(f"{image}: {report['verdict']}")
        typer.echo(f"  watermark  {'found' if mark['detected'] else 'not found'} ({mark['method']}): "
                   f"{mark['matched_bits']}/{mark['bits_read']} bits, need {mark['threshold_bits']} at FPR "
                   f"{mark['fpr']:g}; job ref {mark['job_ref']}; {mark['geometry']}")
        typer.echo(f"  c2pa       {c2pa['state']}; job {c2pa['job_id']}, model {c2pa['model']}, "
                   f"seed {c2pa['seed']}, signed {c2pa['created_at']}")
        if report.get("job"):
            typer.echo(f"  job        {report['job']['id']} ({report['job']['kind']}, {report['job']['status']})")

    emit(report, as_json, lines)
    raise typer.Exit(0 if mark["detected"] and c2pa["valid"] else 1)


# client commands over the HTTP API (`atelier submit`, `atelier jobs ls|show|cancel`)
register_delivery_commands(app)
# `atelier secrets init DIR`: a deployment's shared secrets and C2PA signing identity
register_secrets_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
