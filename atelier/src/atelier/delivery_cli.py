"""Client commands of the ``atelier`` CLI: ``submit`` and ``jobs ls|show|cancel``.

They talk HTTP to ``ATELIER_API_URL`` with ``ATELIER_API_KEY`` through the typed SDK client
(``atelier_sdk.client``), so they work against any Atelier deployment, embedded or services.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from atelier_runtime.settings import Settings
from atelier_sdk import ApiError, AtelierClient, Event, Job
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

jobs_app = typer.Typer(help="List, inspect and cancel jobs (over the HTTP API).", no_args_is_help=True)

ApiUrl = Annotated[str | None, typer.Option("--api-url", help="API base URL (default ATELIER_API_URL).")]
ApiKey = Annotated[str | None, typer.Option("--api-key", help="Tenant API key (default ATELIER_API_KEY).")]
STATUS_STYLE = {"succeeded": "green", "failed": "red", "canceled": "yellow", "running": "cyan", "queued": "dim"}


def _client(api_url: str | None, api_key: str | None) -> AtelierClient:
    settings = Settings()
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key:
        typer.echo("error: set ATELIER_API_KEY (or pass --api-key); `atelier tenants create NAME` prints one", err=True)
        raise typer.Exit(2)
    return AtelierClient(api_url or settings.api_url, api_key=key)


def _fail(exc: ApiError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    for e in exc.errors:
        typer.echo(f"  {e.get('field')}: {e.get('message')}", err=True)
    return typer.Exit(2)


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
    api_url: ApiUrl = None, api_key: ApiKey = None,
) -> None:
    """Submit SPEC_FILE as a job; with --wait show live progress per stage; with --out save the bundle."""
    console = Console(stderr=True)
    job_kind, spec = load_spec(spec_file, kind)
    with _client(api_url, api_key) as client:
        try:
            for path in upload_local_files(client, spec, spec_file.parent):
                console.print(f"uploaded {path}")
            job = client.submit(spec, kind=job_kind, idempotency_key=idempotency_key)
        except ApiError as exc:
            raise _fail(exc) from exc
        typer.echo(job.id)
        console.print(f"submitted {job.kind} job [bold]{job.id}[/bold]")
        if not wait:
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            bars = StageBars(progress)
            last = 0.0

            def on_event(ev: Event) -> None:
                nonlocal last
                if ev.type.startswith(("stage.", "job.")) and (time.monotonic() - last > 0.25 or ev.type.startswith("job.")):
                    last = time.monotonic()
                    bars.update(client.job(job.id))

            job = client.wait(job.id, on_event=on_event)
            bars.update(job)
        style = STATUS_STYLE.get(job.status, "white")
        console.print(f"job {job.id} [{style}]{job.status}[/{style}]" + (f": {job.error}" if job.error else ""))
        if job.status != "succeeded":
            raise typer.Exit(1)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            zpath = client.download_bundle(job.id, out / f"{job.id}.zip")
            folder = out / job.id
            with zipfile.ZipFile(zpath) as zf:
                zf.extractall(folder)
                n = len(zf.namelist())
            console.print(f"bundle: {zpath} ({n} files, unpacked in {folder})")


@jobs_app.command("ls")
def jobs_ls(
    status: Annotated[str | None, typer.Option(help="queued|running|succeeded|failed|canceled")] = None,
    kind: Annotated[str | None, typer.Option(help="campaign|story")] = None,
    limit: Annotated[int, typer.Option(help="How many (newest first).")] = 20,
    api_url: ApiUrl = None, api_key: ApiKey = None,
) -> None:
    """List your jobs, newest first."""
    with _client(api_url, api_key) as client:
        try:
            page = client.jobs(status=status, kind=kind, limit=limit)
        except ApiError as exc:
            raise _fail(exc) from exc
    table = Table("id", "kind", "status", "progress", "created", "error")
    for j in page.items:
        style = STATUS_STYLE.get(j.status, "white")
        table.add_row(j.id, j.kind, f"[{style}]{j.status}[/{style}]", f"{j.progress:.0%}",
                      j.created_at.strftime("%Y-%m-%d %H:%M:%S"), (j.error or "")[:60])
    Console(width=int(os.environ.get("COLUMNS", "160"))).print(table)


@jobs_app.command("show")
def jobs_show(job_id: str, api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """A job's status and its stages with timings."""
    with _client(api_url, api_key) as client:
        try:
            job = client.job(job_id)
        except ApiError as exc:
            raise _fail(exc) from exc
    console = Console(width=int(os.environ.get("COLUMNS", "160")))
    style = STATUS_STYLE.get(job.status, "white")
    console.print(f"{job.id}  {job.kind}  [{style}]{job.status}[/{style}]  {job.progress:.0%}"
                  + (f"\nerror: {job.error}" if job.error else ""))
    table = Table("stage", "item", "status", "attempts", "seconds", "error")
    for s in job.stages:
        table.add_row(s.name, s.item, s.status, str(s.attempts), "" if s.seconds is None else f"{s.seconds:.2f}",
                      (s.error or "")[:60])
    console.print(table)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """Cancel a job: no further stage starts; running GPU work stops at its next step."""
    with _client(api_url, api_key) as client:
        try:
            job = client.cancel(job_id)
        except ApiError as exc:
            raise _fail(exc) from exc
    typer.echo(f"{job.id} {job.status}")


def register(app: typer.Typer) -> None:
    """Add ``submit`` and ``jobs`` to the ``atelier`` command."""
    app.command("submit")(submit)
    app.add_typer(jobs_app, name="jobs")
