"""`atelier demo`: the main job on the embedded default, driven over HTTP like a real client."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from atelier_control.auth import create_tenant, issue_key
from atelier_control.db import engine_from_settings, session_factory, session_scope
from atelier_control.models import Tenant
from atelier_gpu.tiny import init_tiny
from atelier_runtime.images import png_bytes
from atelier_runtime.settings import Settings
from atelier_runtime.storage import LocalStore
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from .app import build_api

CAMPAIGN = {
    "brand": {"name": "Lumen Coffee", "palette": ["#3B2416", "#F5E6D3", "#C8102E"]},
    "product": {"name": "Cold Brew Bottle", "description": "A glass bottle of slow-steeped cold brew coffee."},
    "taglines": ["Slow steeped. Boldly smooth.", "Twelve hours of patience in every sip"],
    "cta": "Shop now",
    "locale": "en-US",
    "sizes": ["1080x1080", "1200x628", "1080x1920"],
    "variants": 2,
    "seed": 7,
}
STORY = {
    "premise": "A girl and her grandmother build a paper boat for the monsoon boat race.",
    "culture": "Kerala, India",
    "language": "en",
    "pages": 4,
    "audience": "children 5-8",
    "seed": 11,
}


def product_png() -> bytes:
    """A simple bottle on a transparent background, standing in for a product photo."""
    img = Image.new("RGBA", (240, 480), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((60, 140, 180, 460), radius=30, fill=(59, 36, 22, 255))
    d.rectangle((95, 40, 145, 150), fill=(59, 36, 22, 255))
    d.rectangle((90, 20, 150, 50), fill=(200, 16, 46, 255))
    d.rectangle((70, 250, 170, 350), fill=(245, 230, 211, 255))
    return png_bytes(img)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api_key(settings: Settings) -> str:
    factory = session_factory(engine_from_settings(settings))
    with session_scope(factory) as session:
        tenant = session.query(Tenant).filter_by(name="demo").one_or_none()
        if tenant is None:
            return create_tenant(session, "demo")[1]
        return issue_key(session, tenant.id, name="demo")


def _follow(client: httpx.Client, job_id: str, console: Console) -> None:
    """Read the job's Server-Sent Events until its terminal event."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
                if kind in ("stage.completed", "stage.failed", "job.succeeded", "job.failed", "job.canceled"):
                    console.print(f"  [dim]{job_id[:12]}[/dim] {kind}")


def run_demo(settings: Settings, out: Path, *, console: Console | None = None) -> bool:
    """Serve the API with its embedded worker, submit the two jobs, wait, write summary.json."""
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not settings.resolved_models_file().exists():
        init_tiny(settings.resolved_models_dir())  # the demo runs on tiny random-init models it writes itself
    api = build_api(settings)  # migrates SQLite
    key = _api_key(settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the demo API server did not start")
        time.sleep(0.05)
    summary: dict[str, Any] = {"jobs": []}
    store = LocalStore(settings.resolved_storage_root())
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as client:
            up = client.post("/v1/uploads", files={"file": ("bottle.png", product_png(), "image/png")})
            up.raise_for_status()
            campaign = json.loads(json.dumps(CAMPAIGN))
            campaign["product"]["image"] = up.json()["id"]
            ids = []
            for kind, spec in (("campaign", campaign), ("story", STORY)):
                r = client.post("/v1/jobs", json={"kind": kind, "spec": spec})
                r.raise_for_status()
                ids.append(r.json()["id"])
                console.print(f"submitted {kind} job {r.json()['id']}")
            for job_id in ids:
                _follow(client, job_id, console)
            for job_id in ids:
                job = client.get(f"/v1/jobs/{job_id}").json()
                arts = client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
                summary["jobs"].append({
                    "id": job_id, "kind": job["kind"], "status": job["status"],
                    "stages": [{"name": s["name"] + (f"[{s['item']}]" if s["item"] else ""), "status": s["status"],
                                "seconds": s["seconds"]} for s in job["stages"]],
                    "artifacts": [{"kind": a["kind"], "path": str(store.local_path(a["key"])),
                                   "width": a["width"], "height": a["height"]} for a in arts],
                })
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print(console, summary, out)
    return all(j["status"] == "succeeded" for j in summary["jobs"])


def _print(console: Console, summary: dict[str, Any], out: Path) -> None:
    table = Table(title="Atelier demo")
    for col in ("job", "kind", "status", "stages", "stage seconds", "assets"):
        table.add_column(col)
    for j in summary["jobs"]:
        secs = sum(s["seconds"] or 0 for s in j["stages"])
        assets = [a for a in j["artifacts"] if a["kind"] == "asset"]
        table.add_row(j["id"][:16], j["kind"], j["status"], str(len(j["stages"])), f"{secs:.2f}", str(len(assets)))
    console.print(table)
    console.print(f"summary: {out / 'summary.json'}  (total {summary['seconds']} s)")
