"""`--json` on every `atelier` command that prints data: stdout is one JSON document (the API's field names), an
error is `{"error": {...}}` on stdout with the exit code the command has without `--json`.

The client commands run against a live API (uvicorn in a thread: SQLite file, local store, memory broker; no
worker, so a job stays queued until it is canceled); the database commands on the same embedded SQLite file."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import uvicorn
import yaml
from atelier.app import migrate
from atelier.cli import app
from atelier_api import create_app
from atelier_control.auth import authenticate, create_tenant
from atelier_control.db import make_engine, session_factory, session_scope
from atelier_runtime.celeryapp import make_celery
from atelier_runtime.settings import Settings
from atelier_runtime.state import MemoryRuntime
from atelier_runtime.storage import LocalStore
from atelier_sdk import AtelierClient, Job, RetryPolicy
from typer.testing import CliRunner, Result

from atelier import delivery_cli
from tests.conftest import free_port

# Commands that print no data of their own, so they have no --json (a new command must be added here or get --json):
NO_DATA = {
    "serve": "runs the API until stopped; uvicorn's own logs",
    "worker": "runs a Celery worker until stopped; the worker's logs",
    "migrate": "brings the schema to head; one status line",
    "demo": "runs the demo end to end; its result is summary.json on disk",
}
ERROR_KEYS = {"status", "message", "field", "errors"}
STORY = {"premise": "A kite that wants to see the sea.", "culture": "Japan", "pages": 1}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def data(*args: str, code: int = 0) -> Any:
    """ATELIER ARGS --json: the one JSON document on stdout (nothing else there)."""
    result = invoke(*args, "--json")
    assert result.exit_code == code, (args, result.output, result.exception)
    return json.loads(result.stdout)


def error(*args: str, code: int) -> dict[str, Any]:
    """ATELIER ARGS fails with CODE with and without --json; with it, stdout is the error object alone."""
    plain = invoke(*args)
    assert plain.exit_code == code, (args, plain.output, plain.exception)
    result = invoke(*args, "--json")
    assert result.exit_code == code, (args, result.output, result.exception)
    doc = json.loads(result.stdout)
    assert set(doc) == {"error"} and set(doc["error"]) == ERROR_KEYS, doc
    assert doc["error"]["message"]
    return doc["error"]


def commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Every command under GROUP (typer's click command tree), sub-apps walked, as ("keys create", command)."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a sub-app (typer's own click, vendored since 0.2x: no isinstance)
            yield from commands(command, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), command


def test_every_command_that_prints_data_has_json() -> None:
    found = dict(commands(typer.main.get_command(app)))
    assert set(NO_DATA) <= set(found), "the allow-list names a command that is gone"
    missing = [name for name, command in found.items()
               if name not in NO_DATA and not any("--json" in p.opts for p in command.params)]
    assert not missing, f"commands that print data without --json: {missing}"
    assert {"tenants create", "keys create", "keys ls", "keys list", "keys revoke", "submit", "jobs ls", "jobs show",
            "jobs cancel", "verify", "healthcheck", "secrets init", "models init-tiny"} <= set(found)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("ATELIER_BROKER_URL", "ATELIER_DATABASE_URL", "ATELIER_API_KEY", "ATELIER_API_URL",
                 "ATELIER_WORKER_HEARTBEAT_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ATELIER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# ---------------------------------------------------------------- on the database: tenants, keys


def test_tenants_create(home: Path) -> None:
    made = data("tenants", "create", "acme")
    assert set(made) == {"id", "name", "key"} and made["name"] == "acme" and made["key"].startswith("atl_")
    engine = make_engine(Settings(home=home).resolved_database_url())
    try:
        with session_factory(engine)() as s:
            assert authenticate(s, made["key"]).id == made["id"]  # the key printed is the tenant's
    finally:
        engine.dispose()
    taken = error("tenants", "create", "acme", code=1)
    assert taken["status"] == 409 and taken["field"] == "name" and "already exists" in taken["message"]


def test_keys_create_ls_revoke(home: Path) -> None:
    data("tenants", "create", "acme")
    made = data("keys", "create", "ci", "--tenant", "acme")
    assert set(made) == {"id", "name", "role", "prefix", "created_at", "revoked_at", "key"}  # POST /v1/keys's answer
    assert made["name"] == "ci" and made["role"] == "member" and made["key"].startswith(f"atl_{made['prefix']}_") and made["revoked_at"] is None
    listed = data("keys", "ls", "--tenant", "acme")
    assert [k["name"] for k in listed] == ["default", "ci"] and listed[1]["id"] == made["id"]
    assert all(set(k) == {"id", "name", "role", "prefix", "created_at", "revoked_at"} for k in listed)  # never the key
    assert [k["role"] for k in listed] == ["admin", "member"]
    assert listed[1]["created_at"] == made["created_at"]  # the same instant, written the same way
    assert data("keys", "list", "--tenant", "acme") == listed
    revoked = data("keys", "revoke", made["id"], "--tenant", "acme")
    assert revoked["id"] == made["id"] and revoked["revoked_at"] is not None and "key" not in revoked

    unknown = error("keys", "create", "ci", "--tenant", "nobody", code=1)
    assert unknown["status"] == 404 and unknown["field"] == "tenant"
    assert error("keys", "ls", "--tenant", "nobody", code=1)["status"] == 404
    assert error("keys", "revoke", "key_nope", "--tenant", "acme", code=1)["status"] == 404
    assert error("keys", "create", "   ", "--tenant", "acme", code=1)["field"] == "name"
    assert error("keys", "create", "ops", "--role", "owner", "--tenant", "acme", code=1)["field"] == "role"
    # the tenant's only admin key stays; with a second admin key it may go
    first = listed[0]["id"]
    last = error("keys", "revoke", first, "--tenant", "acme", code=1)
    assert last["status"] == 409 and "last active admin key" in last["message"]
    assert data("keys", "create", "ops", "--role", "admin", "--tenant", "acme")["role"] == "admin"
    assert data("keys", "revoke", first, "--tenant", "acme")["revoked_at"] is not None


# ---------------------------------------------------------------- this machine: healthcheck, secrets, tiny models


def test_healthcheck(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "not set" in error("healthcheck", code=1)["message"]
    beat = tmp_path / "heartbeat"
    monkeypatch.setenv("ATELIER_WORKER_HEARTBEAT_FILE", str(beat))
    assert "no heartbeat" in error("healthcheck", code=1)["message"]
    beat.touch()
    healthy = data("healthcheck")
    assert healthy["healthy"] is True and healthy["heartbeat_file"] == str(beat) and healthy["max_age_s"] == 30.0
    assert 0 <= healthy["age_s"] < 30
    os.utime(beat, (time.time() - 120, time.time() - 120))
    stale = error("healthcheck", code=1)
    assert "last heartbeat 120 s ago" in stale["message"] and stale["status"] is None


def test_secrets_init(tmp_path: Path) -> None:
    pytest.importorskip("atelier_provenance.manifests", reason="atelier-provenance is not installed")
    folder = tmp_path / "secrets"
    result = invoke("secrets", "init", str(folder), "--json")
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert set(made) == {"dest", "files", "written", "kept"} and made["dest"] == str(folder)
    assert {f["name"] for f in made["files"]} == {p.name for p in folder.iterdir()}
    assert {f["action"] for f in made["files"]} == {"generated"} and made["written"] == len(made["files"])
    assert all(set(f) == {"name", "action", "mode", "note"} for f in made["files"])
    assert {f["name"]: f["mode"] for f in made["files"]}["atelier_session_secret"] == "0600"
    for path in folder.iterdir():  # names, never values
        assert path.read_text().strip().splitlines()[0] not in result.stdout
    again = data("secrets", "init", str(folder))
    assert {f["action"] for f in again["files"]} == {"kept"} and again["written"] == 0

    bad = error("secrets", "init", str(tmp_path / "other"), "--database-url", "postgresql://u:pw@db/atelier", code=1)
    assert "without a password" in bad["message"] and bad["status"] is None
    assert "UID" in error("secrets", "init", str(tmp_path / "other"), "--owner", "nobody", code=2)["message"]


def test_models_init_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = pytest.importorskip("atelier_gpu.tiny", reason="atelier-gpu is not installed")
    written: list[Path] = []

    def init_tiny(dest: Path, *, bench: bool, force: bool) -> Path:  # the real one takes seconds (tested elsewhere)
        print("diffusers chatting")  # a library's print goes to stderr: stdout holds the document alone
        written.append(dest)
        return dest / "models.yaml"

    monkeypatch.setattr(tiny, "init_tiny", init_tiny)
    monkeypatch.setattr(tiny, "init_tiny_instantid",
                        lambda dest, sdxl, *, force: {"ATELIER_IDENTITY_FACE_MODEL": dest / "face.onnx"})
    result = invoke("models", "init-tiny", str(tmp_path / "m"), "--identity", "--json")
    assert result.exit_code == 0 and written == [tmp_path / "m"]
    assert "diffusers chatting" in result.stderr
    doc = json.loads(result.stdout)
    assert doc == {"models_file": str(tmp_path / "m" / "models.yaml"),
                   "identity": {"ATELIER_IDENTITY_FACE_MODEL": str(tmp_path / "m" / "identity" / "face.onnx")}}
    assert data("models", "init-tiny", str(tmp_path / "n"))["identity"] is None

    monkeypatch.undo()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    assert "FileExistsError" in error("models", "init-tiny", str(a_file), code=1)["message"]


# ---------------------------------------------------------------- over the HTTP API: submit, jobs, verify


@pytest.fixture
def api(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A live API on a free port, ATELIER_API_URL / ATELIER_API_KEY pointing at it with a tenant's key."""
    settings = Settings(home=home, sse_poll_s=0.05)
    migrate(settings)
    engine = make_engine(settings.resolved_database_url())
    celery = make_celery(settings)
    with session_scope(session_factory(engine)) as s:
        key = create_tenant(s, "acme")[1]
    server = uvicorn.Server(uvicorn.Config(
        create_app(settings, engine=engine, store=LocalStore(home / "artifacts"), celery=celery,
                   runtime=MemoryRuntime()), host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.config.port}"
    monkeypatch.setenv("ATELIER_API_URL", url)
    monkeypatch.setenv("ATELIER_API_KEY", key)
    try:
        yield {"url": url, "key": key}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        celery.close()
        engine.dispose()


def spec_file(tmp_path: Path, spec: dict[str, Any]) -> str:
    path = tmp_path / "story.yaml"
    path.write_text(yaml.safe_dump({"kind": "story", "spec": spec}))
    return str(path)


def test_submit_and_jobs(api: dict[str, Any], tmp_path: Path) -> None:
    job = data("submit", spec_file(tmp_path, STORY))
    assert set(Job.model_fields) <= set(job) and job["kind"] == "story" and job["status"] == "queued"
    assert job["spec"]["premise"] == STORY["premise"]

    page = data("jobs", "ls")
    assert set(page) == {"items", "next_cursor"} and [j["id"] for j in page["items"]] == [job["id"]]
    assert data("jobs", "ls", "--status", "succeeded")["items"] == []
    shown = data("jobs", "show", job["id"])
    assert shown["id"] == job["id"] and isinstance(shown["stages"], list) and "failures" in shown
    canceled = data("jobs", "cancel", job["id"])
    assert canceled["id"] == job["id"] and canceled["status"] == "canceled"

    gone = error("jobs", "show", "job_nope", code=2)
    assert gone["status"] == 404 and gone["field"] is None
    assert error("jobs", "cancel", "job_nope", code=2)["status"] == 404
    refused = error("submit", spec_file(tmp_path, {**STORY, "language": "de"}), code=2)  # the rules planner's 422
    assert refused["status"] == 422 and refused["field"] == "spec.language"
    assert refused["errors"][0]["field"] == "spec.language" and "cannot write" in refused["errors"][0]["message"]
    bare = tmp_path / "bare.yaml"
    bare.write_text("just: words\n")
    assert "kind" in error("submit", str(bare), code=2)["message"]  # a usage error found by the command


def test_submit_wait_prints_the_ended_job_once(api: dict[str, Any], tmp_path: Path) -> None:
    def cancel_when_submitted() -> None:
        with AtelierClient(api["url"], api_key=api["key"]) as client:
            for _ in range(500):
                items = client.jobs().items
                if items:
                    client.cancel(items[0].id)
                    return
                time.sleep(0.02)

    canceler = threading.Thread(target=cancel_when_submitted)
    canceler.start()
    result = invoke("submit", spec_file(tmp_path, STORY), "--wait", "--json")
    canceler.join()
    assert result.exit_code == 1, result.output  # a job that did not succeed, as without --json
    job = json.loads(result.stdout)
    assert job["status"] == "canceled" and job["kind"] == "story" and "bundle" not in job
    assert "submitted story job" in result.stderr  # progress on stderr


def test_client_errors_without_an_api(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_key = error("jobs", "ls", code=2)
    assert no_key["field"] == "api_key" and "ATELIER_API_KEY" in no_key["message"]
    monkeypatch.setenv("ATELIER_API_KEY", "atl_x_y")
    monkeypatch.setenv("ATELIER_API_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setattr(delivery_cli, "AtelierClient",  # no retries with backoff: refused at once
                        functools.partial(AtelierClient, retry=RetryPolicy(max_attempts=1)))
    down = error("jobs", "show", "job_1", code=1)  # without --json: the traceback's exit code
    assert down["status"] is None and "ConnectError" in down["message"]


def test_verify(api: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    image = tmp_path / "plain.png"
    Image.new("RGB", (64, 48), (200, 80, 40)).save(image)
    monkeypatch.delenv("ATELIER_API_KEY")
    no_key = error("verify", str(image), "--api-url", api["url"], code=2)
    assert no_key["field"] == "api_key" and no_key["status"] is None
    refused = error("verify", str(image), "--api-url", api["url"], "--api-key", "atl_bad_key", code=2)
    assert refused["status"] == 401
    pytest.importorskip("atelier_provenance.verify", reason="atelier-provenance is not installed")
    report = data("verify", str(image), "--api-url", api["url"], "--api-key", api["key"], code=1)  # not ours
    assert {"verdict", "watermark", "c2pa"} <= set(report) and report["watermark"]["detected"] is False
    local = data("verify", str(image), code=1)
    assert local["verdict"] == report["verdict"] and local["c2pa"]["valid"] is False
