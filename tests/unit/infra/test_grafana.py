"""The Grafana dashboard in infra/grafana: valid JSON Grafana can import, and every metric it queries is one the
code defines (a renamed metric breaks this test, not the dashboard at 3 a.m.)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "infra" / "grafana" / "atelier-dashboard.json"
SOURCES = [ROOT / "runtime/src/atelier_runtime/observability.py", ROOT / "orchestrator/src/atelier_orchestrator/metrics.py",
           ROOT / "services/api/src/atelier_api/metrics.py"]
# what prometheus_client appends to a metric's name in the exposition format
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _defined() -> set[str]:
    text = "\n".join(p.read_text() for p in SOURCES)
    return set(re.findall(r'(?:Counter|Gauge|Histogram|GaugeMetricFamily)\(\s*"([a-z_]+)"', text))


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_the_dashboard_is_importable_and_queries_only_defined_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    defined = _defined()
    assert {"atelier_stage_runs", "atelier_jobs", "atelier_queue_depth", "atelier_webhook_deliveries",
            "atelier_gpu_seconds", "atelier_api_requests"} <= defined
    queried: set[str] = set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b(atelier_[a-z_]+|process_[a-z_]+)\b", target["expr"]))
    atelier = {_base(m) for m in queried if m.startswith("atelier_")}
    assert atelier <= defined, atelier - defined
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= queried  # the default collectors
    # everything the code defines is on the dashboard
    assert defined - atelier <= {"atelier_api_jobs_submitted", "atelier_api_uploads", "atelier_api_sse_streams"}, \
        defined - atelier


def test_compose_scrapes_every_worker_and_provisions_the_dashboard() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["x-atelier-env"]
    assert env["ATELIER_LOG_FORMAT"] == "json" and env["ATELIER_METRICS_PORT"] == "9100"
    workers = {name for name, svc in compose["services"].items()
               if "worker" in " ".join(map(str, svc.get("command") or []))}
    assert {"orchestrator", "planner", "renderer", "gpu-worker"} <= workers
    prom = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for cfg in job["static_configs"] for t in cfg["targets"]}
    assert {f"{w}:9100" for w in workers} <= targets and "api:8000" in targets
    grafana = compose["services"]["grafana"]
    assert grafana["profiles"] == ["monitoring"] and ":" in grafana["image"] and not grafana["image"].endswith(":latest")
    mounts = {v.split(":")[0] for v in grafana["volumes"]}
    assert {"./infra/grafana/provisioning", "./infra/grafana/atelier-dashboard.json"} <= mounts
    provider = yaml.safe_load((ROOT / "infra/grafana/provisioning/dashboards/atelier.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert any(v.endswith(f"{dashboards_dir}/atelier-dashboard.json:ro") for v in grafana["volumes"])
