"""bench/report.py's fleet-scale section, rendered from a bench/scale.json-shaped dict (``make scale``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report() -> Any:
    spec = importlib.util.spec_from_file_location("bench_report_scale", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report_scale"] = module
    spec.loader.exec_module(module)
    return module


def size(gpus: int, busy: float, p50: float, p95: float) -> dict[str, Any]:
    return {"gpus": gpus, "jobs_per_hour": 300.0 * gpus * busy, "slot_busy_fraction": busy,
            "handoff_ms": {"p50": p50, "p95": p95, "p99": p95 * 2, "n": 40},
            "slot_gap_ms": {"p50": 20.0, "p95": 40.0, "p99": 50.0, "n": 30},
            "orchestrator_cpu_ms_per_stage": 20.0, "db_tx_per_stage": 8.0, "redis_ops_per_stage": 60.0,
            "cpu_cores": {"orchestrator": 0.2 * gpus ** 0.5, "api": 0.01, "outside the stack": 0.1},
            "machine_utilisation": 0.5, "gpu_queue_empty_fraction": 0.0}


def scale(busy128: float, p50: float, p95: float = 30.0) -> dict[str, Any]:
    fleet = [size(1, 0.97, p50, p95), size(8, 0.96, p50, p95), size(32, 0.95, p50, p95),
             size(128, busy128, p50, p95)]
    return {"fleet": fleet, "ceiling": {"gpus": 128, "slot_busy_fraction": busy128, "threshold": 0.9,
                                        "resource": "orchestrator (1.00 cores)"},
            "workload": {"simulated": "gpu.* stages", "window_s": 60, "warmup_s": 20, "time_scale": 1.0}}


def test_the_fleet_section_has_its_chart_table_ceiling_and_missed_goals(report: Any, tmp_path: Path) -> None:
    out, charts = tmp_path / "REPORT.md", tmp_path / "charts"
    sections = report.render({"scale": scale(0.5, 30.0)}, out, charts)
    fleet = next(s for s in sections if s.key == "scale")
    assert fleet.met is False and fleet.chart == "scale.png"
    assert (charts / "scale.png").read_bytes().startswith(b"\x89PNG")
    text = out.read_text()
    assert "| 128 | " in text and "**Ceiling:** 128 GPUs" in text and "orchestrator (1.00 cores)" in text
    assert "busy ≥ 0.9 at 128: missed." in text and "hand-off p50 ≤ 5 ms at 8: missed." in text


def test_the_fleet_section_meets_its_goals_or_says_not_measured(report: Any, tmp_path: Path) -> None:
    sections = report.render({"scale": scale(0.92, 3.0, 12.0) | {"ceiling": {"gpus": None, "resource": "none"}}},
                             tmp_path / "R.md", tmp_path / "c")
    assert next(s for s in sections if s.key == "scale").met is True
    sections = report.render({}, tmp_path / "R2.md", tmp_path / "c2")
    assert next(s for s in sections if s.key == "scale").value == "not measured"
