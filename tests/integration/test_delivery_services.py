"""Delivery in services mode: `atelier submit --wait --out` ends with the demo campaign's bundle on disk, its
manifest matches every file, a signed webhook reaches a loopback receiver, and a story bundles its storybook.

Real PostgreSQL, Redis, the nanio S3 endpoint and separate API / orchestrator / planner+renderer / GPU worker
processes (the machine's services; ATELIER_TEST_REDIS_DB picks the Redis database).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from atelier.demo import CAMPAIGN, product_png
from atelier_sdk import AtelierClient, verify_webhook
from standardwebhooks import Webhook as StandardWebhook

from tests.conftest import free_port, wait_port
from tests.procs import BIN, Proc, Receiver, api_key_from, cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(pg_url: str, redis_url: str, s3_endpoint: dict[str, str], tiny_models: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("delivery")
    port = free_port()
    env = dict(os.environ)
    env.update(s3_endpoint)
    env.update({
        "ATELIER_HOME": str(tmp / "home"), "ATELIER_DATABASE_URL": pg_url, "ATELIER_BROKER_URL": redis_url,
        "ATELIER_MODELS_FILE": str(tiny_models), "ATELIER_GEN_MAX_SIDE": "64", "ATELIER_SSE_POLL_S": "0.1",
        "ATELIER_HEARTBEAT_INTERVAL_S": "0.5", "ATELIER_RECONCILE_INTERVAL_S": "1", "ATELIER_RETRY_BACKOFF_S": "0.2",
        "ATELIER_SSRF_ALLOW": "127.0.0.1/32", "ATELIER_WEBHOOK_POLL_S": "0.2", "PYTHONUNBUFFERED": "1",
        "ATELIER_API_URL": f"http://127.0.0.1:{port}", "ATELIER_LOG_FORMAT": "json",
    })
    metrics = {"orchestrator": free_port(), "gpu": free_port()}  # each worker's Prometheus port

    def on(name: str) -> dict[str, str]:
        return dict(env, ATELIER_METRICS_PORT=str(metrics[name])) if name in metrics else env

    procs = [
        Proc("api", ["serve", "--port", str(port)], env, tmp).start(),
        Proc("orchestrator", ["worker", "--queues", "orchestrator", "--loglevel", "WARNING"], on("orchestrator"),
             tmp).start(),
        Proc("planner-render", ["worker", "--queues", "planning,render", "--loglevel", "INFO"], env, tmp).start(),
        Proc("gpu", ["worker", "--queues", "gpu.diffusion,gpu.identity,gpu.watermark", "--loglevel", "WARNING"],
             on("gpu"), tmp).start(),
    ]
    try:
        wait_port(port, timeout=90)
        key = api_key_from(cli(["tenants", "create", f"delivery-{time.time_ns()}"], env))
        env["ATELIER_API_KEY"] = key
        yield {"env": env, "port": port, "key": key, "tmp": tmp, "procs": procs, "metrics": metrics}
    finally:
        for p in procs:
            p.stop()


def _logs(stack: dict[str, Any]) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in stack["procs"])


def test_atelier_submit_waits_and_leaves_the_demo_bundle_on_disk(stack: dict[str, Any]) -> None:
    tmp: Path = stack["tmp"]
    receiver = Receiver()
    with AtelierClient(f"http://127.0.0.1:{stack['port']}", api_key=stack["key"]) as client:
        hook = client.create_webhook(receiver.url, events=["job.succeeded", "job.failed"])
    assert hook.secret and hook.secret.startswith("whsec_")
    (tmp / "bottle.png").write_bytes(product_png())
    spec = json.loads(json.dumps(CAMPAIGN))
    spec["product"]["image"] = "bottle.png"  # a local file: `atelier submit` uploads it first
    (tmp / "campaign.yaml").write_text(yaml.safe_dump({"kind": "campaign", "spec": spec}, allow_unicode=True))
    out = tmp / "out"
    run = subprocess.run([str(BIN / "atelier"), "submit", str(tmp / "campaign.yaml"), "--wait", "--out", str(out)],
                         env=stack["env"], capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr + _logs(stack)
    job_id = run.stdout.strip().splitlines()[0]
    assert "succeeded" in run.stderr and "bundle:" in run.stderr
    assert "render.ad" in run.stderr and "6/6" in run.stderr  # the per-stage progress bars

    bundle = out / f"{job_id}.zip"
    zf = zipfile.ZipFile(bundle)
    assert zf.testzip() is None
    manifest = json.loads(zf.read("manifest.json"))
    expected = sorted(f"{s}/ad_{s}_v{v}.png" for s in CAMPAIGN["sizes"] for v in range(CAMPAIGN["variants"]))
    assert sorted(r["file"] for r in manifest["files"]) == expected
    assert sorted(set(zf.namelist()) - {"manifest.json", "manifest.csv"}) == expected
    for row in manifest["files"]:
        data = zf.read(row["file"])
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and "stored_sha256" not in row
        assert (out / job_id / row["file"]).read_bytes() == data  # unpacked next to the zip
        assert row["taglines"] == CAMPAIGN["taglines"] and row["cta"] == CAMPAIGN["cta"]
        gates = {g["name"]: g for g in row["gates"]}
        assert gates["ocr.headline"]["score"] is not None and gates["ocr.headline"]["passed"], gates["ocr.headline"]
        assert gates["contrast.headline"]["passed"] and gates["safe_zone"]["passed"]
        assert row["c2pa"] in ("trusted", "untrusted") and row["watermark"]["readback_ok"] is True
    csv_text = zf.read("manifest.csv").decode()
    assert csv_text.splitlines()[0].startswith("file,kind,size,variant") and len(csv_text.splitlines()) == 7

    # the job.succeeded webhook arrived, signed with the endpoint's secret
    deadline = time.monotonic() + 30
    while not receiver.requests and time.monotonic() < deadline:
        time.sleep(0.2)
    assert receiver.requests, _logs(stack)
    headers, body = receiver.requests[0]
    payload = verify_webhook(hook.secret, headers, body)
    assert payload["type"] == "job.succeeded" and payload["data"]["job_id"] == job_id
    # it lists the delivered assets: each one's placement, format, size and checksum as the bundle has them
    assets = payload["data"]["assets"]
    by_sha = {row["sha256"]: row for row in manifest["files"]}
    assert len(assets) == len(expected) and {a["sha256"] for a in assets} == set(by_sha)
    for a in assets:
        assert a["size"] == a["item"].split("-v")[0] and a["format"] == "png" and a["bytes"] > 0
        assert "/v1/assets/" in a["url"] and a["url_expires_at"]
    # the Standard Webhooks reference library accepts the signature too
    assert StandardWebhook(hook.secret).verify(body, headers)["data"]["job_id"] == job_id
    # a receiver fetches an asset with its URL alone (no API key): the bytes the manifest names
    url = assets[0]["url"]
    got = httpx.get(url if url.startswith("http") else f"http://127.0.0.1:{stack['port']}{url}", timeout=30)
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == assets[0]["sha256"]
    tampered = url.replace("signature=", "signature=A")
    assert httpx.get(tampered if tampered.startswith("http") else f"http://127.0.0.1:{stack['port']}{tampered}",
                     timeout=30).status_code == 403
    time.sleep(1.0)
    assert len(receiver.requests) == 1  # once per event and endpoint
    receiver.server.shutdown()


def test_story_bundle_carries_the_storybook(stack: dict[str, Any]) -> None:
    with AtelierClient(f"http://127.0.0.1:{stack['port']}", api_key=stack["key"]) as client:
        job = client.submit({"premise": "दो दोस्त मेले में पतंग उड़ाते हैं।", "culture": "Gujarat, India",
                             "language": "hi", "pages": 1, "seed": 4}, kind="story")
        job = client.wait(job.id, timeout=300)
        assert job.status == "succeeded", _logs(stack)
        path = client.download_bundle(job.id, stack["tmp"] / "story")
    zf = zipfile.ZipFile(path)
    assert {"pages/page_01.png", "storybook.pdf", "storybook.html"} <= set(zf.namelist())
    pdf = zf.read("storybook.pdf")
    assert pdf.startswith(b"%PDF-") and b"/FontFile" in pdf  # fonts embedded
    files = {f["file"]: f for f in json.loads(zf.read("manifest.json"))["files"]}
    assert files["storybook.pdf"]["c2pa"] in ("trusted", "untrusted")
    assert hashlib.sha256(pdf).hexdigest() == files["storybook.pdf"]["sha256"]


def test_an_arabic_story_is_written_and_set_right_to_left(stack: dict[str, Any]) -> None:
    with AtelierClient(f"http://127.0.0.1:{stack['port']}", api_key=stack["key"]) as client:
        job = client.submit({"premise": "تريد فتاة أن تجد قطتها الضائعة قبل العيد.", "culture": "Cairo, Egypt",
                             "language": "ar", "pages": 1, "seed": 4}, kind="story",
                            external_id="dam-asset-42", metadata={"team": "books"})
        assert job.external_id == "dam-asset-42" and job.metadata == {"team": "books"}
        job = client.wait(job.id, timeout=300)
        assert job.status == "succeeded", _logs(stack)
        assert [j.id for j in client.jobs(external_id="dam-asset-42").items] == [job.id]
        path = client.download_bundle(job.id, stack["tmp"] / "story-ar")
    html = zipfile.ZipFile(path).read("storybook.html").decode()
    assert '<html lang="ar" dir="rtl">' in html and "أن تجد قطتها الضائعة قبل العيد" in html


def test_cli_jobs_ls_show_and_cancel(stack: dict[str, Any]) -> None:
    env = dict(stack["env"], COLUMNS="200")
    ls = subprocess.run([str(BIN / "atelier"), "jobs", "ls", "--limit", "5"], env=env, capture_output=True, text=True,
                        timeout=60)
    assert ls.returncode == 0, ls.stderr
    with AtelierClient(f"http://127.0.0.1:{stack['port']}", api_key=stack["key"]) as client:
        newest = client.jobs(limit=1).items[0]
        assert newest.id in ls.stdout
        show = subprocess.run([str(BIN / "atelier"), "jobs", "show", newest.id], env=env, capture_output=True,
                              text=True, timeout=60)
        assert show.returncode == 0 and "render.storybook" in show.stdout and "succeeded" in show.stdout
        job = client.submit({"premise": "A kite.", "culture": "Japan", "pages": 1}, kind="story")
    cancel = subprocess.run([str(BIN / "atelier"), "jobs", "cancel", job.id], env=env, capture_output=True, text=True,
                            timeout=60)
    assert cancel.returncode == 0 and cancel.stdout.strip() == f"{job.id} canceled", cancel.stderr
    bad = subprocess.run([str(BIN / "atelier"), "jobs", "show", "job_nope"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "404" in bad.stderr
    assert httpx.get(f"http://127.0.0.1:{stack['port']}/v1/jobs/{job.id}/bundle",
                     headers={"Authorization": f"Bearer {stack['key']}"}).status_code == 409


def test_workers_serve_metrics_and_log_json_with_the_job(stack: dict[str, Any]) -> None:
    """After the jobs above: the GPU worker counts its stage runs and GPU seconds, the orchestrator its jobs by
    state and the queue depths, both with the process collectors; the logs are JSON lines naming job and stage."""
    gpu = httpx.get(f"http://127.0.0.1:{stack['metrics']['gpu']}/metrics", timeout=10).text
    assert 'atelier_stage_runs_total{stage="gpu.background",status="succeeded"}' in gpu
    assert "atelier_gpu_seconds_total" in gpu and "process_cpu_seconds_total" in gpu
    orch = httpx.get(f"http://127.0.0.1:{stack['metrics']['orchestrator']}/metrics", timeout=10).text
    assert 'atelier_jobs{state="succeeded"}' in orch and 'atelier_queue_depth{queue="gpu.diffusion"}' in orch
    assert 'atelier_webhook_deliveries_total{outcome="succeeded"}' in orch
    lines = [json.loads(line) for p in stack["procs"] for line in p.tail(100_000).splitlines()
             if line.startswith("{")]
    staged = [r for r in lines if r.get("job_id") and r.get("stage")]
    assert staged, "no JSON log line named a job and a stage"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in lines)
