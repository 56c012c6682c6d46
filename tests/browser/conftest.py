"""Browser tests: Playwright drives the system's Chromium (Debian ``chromium``) against a real app.

The app runs in this process as ``atelier serve`` runs it on a laptop (embedded mode): uvicorn in a
thread, the in-process Celery worker on the in-memory broker and the reconciler, SQLite, the local
artifact folder and the tiny random-init diffusion models, so submitted jobs really run (the worker's
queues are split in two thread pools: see ``atelier.embedded.embedded_worker``). Never ``playwright install``: the browser
comes from the OS packages (``make test`` installs it through infra/dev/apt-packages.txt).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
SLOW_MODEL = "sdxl-slow"  # the tiny SDXL with many steps: a job that is still running when the test acts on it
SLOW_STEPS = 200  # the recipe allows 1..200


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives the system Chromium through Playwright (tests/browser)")


def chromium_missing() -> str | None:
    if CHROMIUM.exists():
        return None
    return f"{CHROMIUM} is absent: install Debian's chromium (bash infra/dev/system-deps.sh, run by make test)"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch arguments, pointed at the OS browser (no downloaded browsers)."""
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": CHROMIUM_FLAGS, "headless": True}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": {"width": 1280, "height": 860}, "device_scale_factor": 1,
            "locale": "en-US", "timezone_id": "UTC"}


@dataclass
class Tenant:
    id: str
    name: str
    key: str


@dataclass
class Server:
    url: str
    home: Path
    acme: Tenant
    globex: Tenant

    def api(self, tenant: Tenant) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {tenant.key}"}, timeout=30)


def _models_file(tiny_models: Path, dest: Path) -> Path:
    """The tiny models plus ``sdxl-slow`` (same weights, many steps), with absolute paths."""
    doc = yaml.safe_load(tiny_models.read_text())
    for entry in doc["models"].values():
        entry["path"] = str((tiny_models.parent / entry["path"]).resolve())
    doc["models"][SLOW_MODEL] = {**doc["models"]["sdxl-tiny"], "steps": SLOW_STEPS}
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "models.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Server]:
    """The API with its embedded worker on a free port, and two tenants with an API key each."""
    if chromium_missing():
        pytest.skip(chromium_missing() or "")
    import uvicorn
    from atelier.embedded import embedded_worker
    from atelier_api import create_app
    from atelier_control.auth import create_tenant
    from atelier_control.db import engine_from_settings, session_factory, session_scope
    from atelier_migrations import upgrade
    from atelier_runtime.settings import Settings

    from tests.conftest import free_port

    home = tmp_path_factory.mktemp("dashboard-home")
    settings = Settings(home=home, broker_url=None, database_url=None, storage="local",
                        models_file=_models_file(tiny_models, home / "models"), gen_max_side=64,
                        sse_poll_s=0.1, retry_backoff_s=0.2, session_secret=None)
    upgrade(settings.resolved_database_url())

    @asynccontextmanager
    async def worker(_app: Any) -> AsyncIterator[None]:
        with embedded_worker(settings):
            yield

    app = create_app(settings, extra_lifespan=worker)
    engine = engine_from_settings(settings)
    tenants = {}
    with session_scope(session_factory(engine)) as s:
        for name in ("acme", "globex"):
            tenant, key = create_tenant(s, name)
            tenants[name] = Tenant(tenant.id, name, key)
    engine.dispose()
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True, name="dashboard-test-server")
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard test server did not start")
        time.sleep(0.05)
    try:
        yield Server(url=f"http://127.0.0.1:{port}", home=home, acme=tenants["acme"], globex=tenants["globex"])
    finally:
        srv.should_exit = True
        thread.join(timeout=60)


def wait_for_job(client: httpx.Client, job_id: str, *, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def finished_campaign(server: Server) -> dict[str, Any]:
    """A campaign submitted over the JSON API at the start (it runs while other tests do)."""
    from tests.browser.helpers import png_bytes

    with server.api(server.acme) as api:
        up = api.post("/v1/uploads", files={"file": ("bottle.png", png_bytes(), "image/png")})
        up.raise_for_status()
        spec = {"brand": {"name": "Lumen Coffee", "palette": ["#3B2416", "#F5E6D3", "#C8102E"]},
                "product": {"name": "Cold Brew", "description": "A glass bottle of cold brew coffee.",
                            "image": up.json()["id"]},
                "taglines": ["Slow steeped. Boldly smooth.", "Twelve hours in every sip"], "cta": "Shop now",
                "sizes": ["320x320", "480x252", "288x512"], "variants": 2, "seed": 7}
        r = api.post("/v1/jobs", json={"kind": "campaign", "spec": spec})
        r.raise_for_status()
        job_id = r.json()["id"]
    return {"id": job_id}


@pytest.fixture
def shots(output_path: str) -> Path:
    """Where this test's screenshots go (pytest-playwright's per-test output folder)."""
    path = Path(output_path)
    path.mkdir(parents=True, exist_ok=True)
    return path

