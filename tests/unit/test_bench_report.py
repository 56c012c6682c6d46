"""bench/report.py renders bench/REPORT.md and one PNG chart per figure from a results dict."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHARTS = ("stage_handoff.png", "overhead_ratio.png", "worker_busy.png", "scaleout.png", "api_submit.png",
          "batch_speedup.png", "svdquant.png", "watermark.png")


@pytest.fixture(scope="module")
def report() -> Any:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _cpu(wall: float, **used: float) -> dict[str, Any]:
    busy = sum(used.values()) + 10.0
    return {"wall_s": wall, "cpu_s": used, "machine_busy_cpu_s": busy, "machine_capacity_cpu_s": 2 * wall,
            "other_cpu_s": 10.0, "machine_utilisation": round(busy / (2 * wall), 3)}


def sample(*, overhead: float = 1.26, busy: float = 0.99, scaleout: float = 1.1, p99: float = 300.0,
           rps: float = 100.0) -> dict[str, Any]:
    attack = {"bit_accuracy": 0.9, "tpr_at_1pct_fpr": 1.0, "tpr_at_0.1pct_fpr": 0.95, "payload_recovered": 0.8}
    run = {"wall_s": 30.0, "images_per_s": 0.4, "rounds": [{"images_per_s": 0.4, "other_cpu_s": 10.0}], "diffusion_images_per_s": 0.5, "s_per_image_in_pipeline": 1.2,
           "images_per_worker": [24], "batch_sizes": [4],
           "cpu": _cpu(30.0, **{"gpu-diffusion-1": 20.0, "planner-render": 12.0, "gpu-watermark": 15.0, "api": 3.0,
                                "gpu-diffusion (all)": 20.0})}
    machine = {"cpus": 2, "cpu_model": "Test CPU", "device": "cpu", "torch": "2.13.0+cpu", "torch_threads_default": 2,
               "load_avg_1m": 0.5, "date": "2026-11-26T12:00:00+00:00"}
    wrk_run = {"connections": 16, "seconds": 20.0, "requests": 2000, "rps": 100.0, "p50_ms": 150.0, "p99_ms": p99,
               "mean_ms": 160.0, "non_2xx": 0, "socket_errors": {"connect": 0}, "server_cpu_ms_per_request": 7.0,
               "server_cpu_utilisation": 0.7, "machine_utilisation": 1.0, "rest_of_machine_cpu_s": 20.0,
               "postgres": {"backend_cpu_ms_per_request": 0.9, "backends_started": 40}}
    return {
        "stage_handoff_ms": {"p50": 20.0, "p95": 60.0, "n": 38},
        "overhead_ratio": overhead,
        "overhead_detail": {"images": 12, "wall_s": 25.0, "diffusion_s": 25.0 / overhead, "s_per_image": 1.6,
                            "s_per_image_alone": 0.9, "model": "sdxl-bench", "gen_max_side": 256,
                            "breakdown": {"before_first_image_s": 0.4, "diffusion_span_s": 21.0, "in_pipeline_s": 19.8,
                                          "diffusion_worker_outside_pipeline_s": 1.2, "after_last_image_s": 3.4,
                                          "client_s": 0.2},
                            "stage_seconds": {"render.ad": {"n": 12, "mean_s": 0.6, "sum_s": 7.2}},
                            "cpu": _cpu(25.0, api=2.0, **{"gpu-diffusion": 18.0})},
        "machine": machine, "measured_at": "2026-11-26T12:00:00+00:00",
        "worker_busy_fraction": busy,
        "worker_busy_detail": {"requests": 20, "wall_s": 40.0, "in_pipeline_s": 40.0 * busy, "batch_sizes": [4],
                               "max_batch": 4},
        "scaleout_ratio": scaleout,
        "scaleout_detail": {"workload": "2 x 12-image campaign", "cores": 2, "torch_threads_per_diffusion_worker": 1,
                            "thread_env": {"OMP_NUM_THREADS": "1"}, "diffusion_ratio": 1.3, "machine": machine,
                            "one_worker": run,
                            "two_workers": dict(run, images_per_s=0.4 * scaleout, images_per_worker=[12, 12],
                                                batch_sizes=[4]),
                            "diffusion_tier_alone": {"what": "24 queued backgrounds", "ratio": 1.7,
                                                     "one_worker": {"images_per_s": 0.8, "s_per_image_in_pipeline": 1.2},
                                                     "two_workers": {"images_per_s": 1.36,
                                                                     "s_per_image_in_pipeline": 1.4}}},
        "api_submit": {"rps": rps, "p50_ms": 150.0, "p99_ms": p99, "bare_rps": 1200.0, "non_2xx": 0},
        "api_submit_detail": {"api": wrk_run, "bare": dict(wrk_run, rps=1200.0, p50_ms=10.0, p99_ms=40.0,
                                                           server_cpu_ms_per_request=0.5),
                              "unloaded": {"api": {"rps": 30.0, "p50_ms": 30.0, "p99_ms": 90.0},
                                           "bare": {"rps": 900.0, "p50_ms": 0.8, "p99_ms": 9.0}},
                              "api_at_pool_size": {"connections": 10, "rps": 110.0, "p99_ms": 200.0,
                                                   "postgres": {"backends_started": 0}},
                              "service_cpu_ms_per_submission": {"key_lookup": 1.0, "validation": 0.2,
                                                                "submit_job": 3.8, "broker_message_alone": 1.1,
                                                                "total": 5.0},
                              "jobs_created": 2001, "start_messages_queued_in_redis": 2001, "machine": machine},
        "batch_speedup": 1.08, "batch_speedup_detail": {"images_per_s_batch1": 0.5, "images_per_s_batch4": 0.54,
                                                        "torch_threads": 1, "size": 256, "steps": 4},
        "svdquant_error_ratio": 0.15,
        "svdquant_error_detail": {"svdquant_vs_naive_w4a4": 0.15, "svdquant_vs_smoothquant_w4a4": 0.36,
                                  "weight_lowrank_vs_int4": 0.35, "seeds": 5},
        "svdquant_memory_ratio": 3.58,
        "svdquant_memory_detail": {"layer": "3072x12288", "rank": 32, "bf16_bytes": 75503616, "svdquant_bytes": 21067776},
        "watermark": {"method": "dwtDctSvd+rs", "images": 4, "unmarked_images": 6, "size": 512, "psnr_db": 41.8,
                      "attacks": {"none": dict(attack, tpr_at_1pct_fpr=1.0), "jpeg_50": attack,
                                  "brightness_1.6": dict(attack, tpr_at_1pct_fpr=0.5)}},
    }


def sections(markdown: str) -> dict[str, str]:
    parts = markdown.split("\n## ")[1:]
    return {p.splitlines()[0]: p for p in parts}


def test_every_chart_is_a_png_and_missed_goals_say_why(report: Any, tmp_path: Path) -> None:
    out, charts = tmp_path / "REPORT.md", tmp_path / "report"
    report.render(sample(), out, charts)
    for name in CHARTS:
        data = (charts / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 2000, name
    md = out.read_text()
    by_title = sections(md)
    for title in ("Overhead ratio (12-image campaign)", "Scale-out: 2 diffusion worker processes vs 1",
                  "API `POST /v1/jobs` at a fixed concurrency"):
        body = by_title[title]
        assert "(**missed**)" in body
        why = next(line for line in body.splitlines() if line.startswith("**Why the goal is missed.**"))
        assert len(why) > 200  # written from the measured detail, not a placeholder
        assert "**What would close it.**" in body
    assert "**Why the goal is missed.**" not in by_title["Diffusion worker busy fraction"]
    assert "(met)" in by_title["Diffusion worker busy fraction"]
    # the why is written from the figures: Little's law at 16 connections and 100 req/s gives 160 ms
    assert "16 / 100 req/s = 160 ms" in by_title["API `POST /v1/jobs` at a fixed concurrency"]
    assert "at least 40 new connections" in by_title["API `POST /v1/jobs` at a fixed concurrency"]
    assert "the other 2.00 ms of the API process's CPU" in by_title["API `POST /v1/jobs` at a fixed concurrency"]
    assert "scaled 1.70x" in by_title["Scale-out: 2 diffusion worker processes vs 1"]  # the diffusion tier alone
    for chart in CHARTS:  # linked relative to the report
        assert f"](report/{chart})" in md
    assert "Test CPU" in md and "2 cores" in md  # the machine it was measured on


def test_met_goals_have_no_why(report: Any, tmp_path: Path) -> None:
    out = tmp_path / "REPORT.md"
    result = report.render(sample(overhead=1.03, busy=0.98, scaleout=1.9, p99=40.0, rps=400.0), out, tmp_path / "c")
    assert [s.met for s in result if s.goal] == [True, True, True, True]
    assert "Why the goal is missed" not in out.read_text()
    # the submit goal is both: p99 under 50 ms and at least 0.3 of the bare route's rate (100 / 1200 is not)
    result = report.render(sample(overhead=1.03, busy=0.98, scaleout=1.9, p99=40.0), out, tmp_path / "c")
    assert [s.met for s in result if s.goal] == [True, True, True, False]


def test_missing_figures_are_reported_as_not_measured(report: Any, tmp_path: Path) -> None:
    out = tmp_path / "REPORT.md"
    result = report.render({"stage_handoff_ms": {"p50": 1.0, "p95": 2.0, "n": 3}}, out, tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["stage_handoff.png"]
    assert sum(1 for s in result if s.value == "not measured") == len(result) - 1
    assert "| not measured |" in out.read_text()
