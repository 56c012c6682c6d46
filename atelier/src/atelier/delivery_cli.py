"""Client commands of the ``atelier`` CLI: ``submit`` and ``jobs ls|show|cancel``.

They talk HTTP to ``ATELIER_API_URL`` with ``ATELIER_API_KEY`` through the typed SDK client
(``atelier_sdk.client``), so they work against any Atelier deployment, embedded or services. With ``--json`` each
prints the API's own answer (the SDK's models, ``model_dump(mode="json")``); see :mod:`atelier.output`.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from atelier_runtime.settings import Settings
from atelier_sdk import ApiError, AtelierClient, Event, Job
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .output import JsonFlag, emit, fail, fail_api, json_errors

jobs_app = typer.Typer(help="List, inspect and cancel jobs (over the HTTP API).", no_args_is_help=True)

ApiUrl = Annotated[str | None, typer.Option("--api-url", help="API base URL (default ATELIER_API_URL).")]
ApiKey = Annotated[str | None, typer.Option("--api-key", help="Tenant API key (default ATELIER_API_KEY).")]
STATUS_STYLE = {"succeeded": "green", "failed": "red", "canceled": "yellow", "running": "cyan", "queued": "dim"}


def _client(api_url: str | None, api_key: str | None, json_mode: bool) -> AtelierClient:
    settings = Settings()
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key:
        raise fail("set ATELIER_API_KEY (or pass --api-key); `atelier tenants create NAME` prints one", json_mode,
                   code=2, field="api_key")
    return AtelierClient(api_url or settings.api_url, api_key=key)


def load_spec(path: Path, kind: str | None) -> tuple[str, dict[str, Any]]:
    """Read SPEC.yaml: either ``{kind, spec}`` (the POST body) or a bare spec whose kind is given or inferred."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise typer.BadParameter(f"{path} must hold a mapping")
    if "spec" in doc and isinstance(doc["spec"], dict):
        kind = kind or doc.get("kind")
        doc = doc["spec"]
    kind = kind or ("story" if "premise" in doc else "campaign" if "taglines" in doc else None)
    if kind not in ("campaign", "story"):
        raise typer.BadParameter("cannot tell the job kind: add `kind: campaign|story` or pass --kind")
    return kind, doc


def upload_local_files(client: AtelierClient, spec: dict[str, Any], base: Path) -> list[str]:
    """Replace ``product.image``, ``brand.logo`` and ``control[].image`` values that name local files with
    their upload ids."""
    done = []
    holders = [(spec.get(section), field) for section, field in (("product", "image"), ("brand", "logo"))]
    holders += [(item, "image") for item in spec.get("control") or []]
    for holder, field in holders:
        value = holder.get(field) if isinstance(holder, dict) else None
        if isinstance(value, str) and ("/" in value or "." in value):
            path = (base / value).expanduser()
            if path.is_file():
                holder[field] = client.upload(path).id
                done.append(str(path))
    return done


class StageBars:
    """One rich progress bar per stage: items succeeded out of items known."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def update(self, job: Job) -> None:
        by_stage: dict[str, list[str]] = {}
        for s in job.stages:
            by_stage.setdefault(s.name, []).append(s.status)
        for name, statuses in by_stage.items():
            done = sum(st == "succeeded" for st in statuses)
            bad = [st for st in statuses if st in ("failed", "canceled")]
            running = sum(st == "running" for st in statuses)
            label = f"{name:<22}" + (f" [red]{bad[0]}[/red]" if bad else f" [cyan]{running} running[/cyan]" if running else "")
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(label, total=len(statuses))
            self.progress.update(self.tasks[name], description=label, total=len(statuses), completed=done)


def submit(
    spec_file: Annotated[Path, typer.Argument(help="YAML (or JSON) job spec; `kind: campaign|story` + `spec:`, "
                                                   "or a bare spec.", exists=True, dir_okay=False)],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job live until it ends.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="With --wait: download the bundle here (zip + files).")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="campaign or story, when the file does not say.")] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key", help="Same key + spec = same job.")] = None,
    api_url: ApiUrl = None, api_key: ApiKey = None, as_json: JsonFlag = False,
) -> None:
    """Submit SPEC_FILE as a job; with --wait show live progress per stage; with --out save the bundle.

    Prints the job's id (progress goes to stderr). --json: the job as the API answers it, once: when submitted, or
    with --wait when it has ended (a job that did not succeed still exits 1), plus with --out
    "bundle": {"zip", "folder", "files"}.
    """
    console = Console(stderr=True)
    with json_errors(as_json, httpx.TransportError, OSError, zipfile.BadZipFile):
        job_kind, spec = load_spec(spec_file, kind)
        with _client(api_url, api_key, as_json) as client:
            try:
                for path in upload_local_files(client, spec, spec_file.parent):
                    console.print(f"uploaded {path}")
                job = client.submit(spec, kind=job_kind, idempotency_key=idempotency_key)
                if not as_json:
                    typer.echo(job.id)
                console.print(f"submitted {job.kind} job [bold]{job.id}[/bold]")
                if not wait:
                    emit(job, as_json)
                    return
                job = _follow(client, job, console)
                style = STATUS_STYLE.get(job.status, "white")
                console.print(f"job {job.id} [{style}]{job.status}[/{style}]" + (f": {job.error}" if job.error else ""))
                if job.status != "succeeded":
                    emit(job, as_json)
                    raise typer.Exit(1)
                bundle = None if out is None else _unpack_bundle(client, job.id, out)
            except ApiError as exc:
                raise fail_api(exc, as_json) from exc
    if bundle is not None:
        console.print(f"bundle: {bundle['zip']} ({bundle['files']} files, unpacked in {bundle['folder']})")
    emit(job if bundle is None else {**job.model_dump(mode="json"), "bundle": bundle}, as_json)


def _follow(client: AtelierClient, job: Job, console: Console) -> Job:
    """Follow the job until it ends, with one progress bar per stage on CONSOLE (stderr)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bars = StageBars(progress)
        last = 0.0

        def on_event(ev: Event) -> None:
            nonlocal last
            if ev.type.startswith(("stage.", "job.")) and (time.monotonic() - last > 0.25 or ev.type.startswith("job.")):
                last = time.monotonic()
                bars.update(client.job(job.id))

        ended = client.wait(job.id, on_event=on_event)
        bars.update(ended)
    return ended


def _unpack_bundle(client: AtelierClient, job_id: str, out: Path) -> dict[str, Any]:
    """Download the job's bundle to OUT/<job>.zip and unpack it in OUT/<job>/."""
    out.mkdir(parents=True, exist_ok=True)
    zpath = client.download_bundle(job_id, out / f"{job_id}.zip")
    folder = out / job_id
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(folder)
        n = len(zf.namelist())
    return {"zip": str(zpath), "folder": str(folder), "files": n}


@jobs_app.command("ls")
def jobs_ls(
    status: Annotated[str | None, typer.Option(help="queued|running|succeeded|failed|canceled")] = None,
    kind: Annotated[str | None, typer.Option(help="campaign|story")] = None,
    limit: Annotated[int, typer.Option(help="How many (newest first).")] = 20,
    api_url: ApiUrl = None, api_key: ApiKey = None, as_json: JsonFlag = False,
) -> None:
    """List your jobs, newest first.

    --json: the page as GET /v1/jobs answers it: {"items": [job, ...], "next_cursor"}."""
    with json_errors(as_json, httpx.TransportError), _client(api_url, api_key, as_json) as client:
        try:
            page = client.jobs(status=status, kind=kind, limit=limit)
        except ApiError as exc:
            raise fail_api(exc, as_json) from exc

    def table() -> None:
        rows = Table("id", "kind", "status", "progress", "created", "error")
        for j in page.items:
            style = STATUS_STYLE.get(j.status, "white")
            rows.add_row(j.id, j.kind, f"[{style}]{j.status}[/{style}]", f"{j.progress:.0%}",
                         j.created_at.strftime("%Y-%m-%d %H:%M:%S"), (j.error or "")[:60])
        Console(width=int(os.environ.get("COLUMNS", "160"))).print(rows)

    emit(page, as_json, table)


@jobs_app.command("show")
def jobs_show(job_id: str, api_url: ApiUrl = None, api_key: ApiKey = None, as_json: JsonFlag = False) -> None:
    """A job's status and its stages with timings.

    --json: the job as GET /v1/jobs/{id} answers it (stages, failures, spec included)."""
    with json_errors(as_json, httpx.TransportError), _client(api_url, api_key, as_json) as client:
        try:
            job = client.job(job_id)
        except ApiError as exc:
            raise fail_api(exc, as_json) from exc

    def tables() -> None:
        console = Console(width=int(os.environ.get("COLUMNS", "160")))
        style = STATUS_STYLE.get(job.status, "white")
        console.print(f"{job.id}  {job.kind}  [{style}]{job.status}[/{style}]  {job.progress:.0%}"
                      + (f"\nerror: {job.error}" if job.error else ""))
        table = Table("stage", "item", "status", "attempts", "seconds", "error")
        for s in job.stages:
            table.add_row(s.name, s.item, s.status, str(s.attempts), "" if s.seconds is None else f"{s.seconds:.2f}",
                          (s.error or "")[:60])
        console.print(table)

    emit(job, as_json, tables)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, api_url: ApiUrl = None, api_key: ApiKey = None, as_json: JsonFlag = False) -> None:
    """Cancel a job: no further stage starts; running GPU work stops at its next step.

    --json: the job as POST /v1/jobs/{id}/cancel answers it."""
    with json_errors(as_json, httpx.TransportError), _client(api_url, api_key, as_json) as client:
        try:
            job = client.cancel(job_id)
        except ApiError as exc:
            raise fail_api(exc, as_json) from exc
    emit(job, as_json, f"{job.id} {job.status}")


def register(app: typer.Typer) -> None:
    """Add ``submit`` and ``jobs`` to the ``atelier`` command."""
    app.command("submit")(submit)
    app.add_typer(jobs_app, name="jobs")
