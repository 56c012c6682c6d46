"""Bench-only: a **simulated GPU fleet** worker — many simulated GPUs in one Celery worker process.

Used by ``make scale`` (bench/scale.py) to measure Atelier's control plane at fleet sizes this machine has no
GPUs for. Never part of a deployment: it lives in ``bench/`` (no installed package imports it), and it refuses to
start unless ``ATELIER_BENCH_SIMULATED_GPU=1`` is set in its environment.

What is simulated, and what is not:

* Each **slot** is one Celery thread of a ``-P threads -c N`` worker and stands for one GPU: it runs one stage task
  at a time, like a production GPU worker (concurrency 1, prefetch 1, late acks).
* A simulated stage's handler is registered with the production :func:`atelier_runtime.stage_runner.stage_task`
  under the catalogue's task name, so the whole stage protocol is production code: the claim (done mark and lease
  in Redis), ``stage_started``, heartbeats, the handler's typed inputs (``ctx.inputs`` parses the upstream
  outputs), artifacts written through the configured storage (S3) with ``ctx.put``, the typed output checked
  against the catalogue, ``stage_done`` to the orchestrator, the lease released.
* Only the work inside the handler is replaced: instead of the denoising loop (or the renderer's drawing) the
  slot sleeps a **device time** drawn from the stage's distribution (:data:`PROFILES`, seconds on a real card,
  multiplied by ``--time-scale``), in ``steps`` equal parts with the production per-step callback
  (``ctx.progress``: heartbeat, cancel check, progress event), then writes a small real PNG (or JSON) artifact
  and returns the stage's real output model. ``gpu_seconds`` is the device time slept.
* Not modelled: cross-task batching (``atelier_gpu.serving`` drains up to ``gpu_max_batch`` compatible queued
  tasks into one pipeline call); every simulated task is its own call, which is the conservative case for the
  control plane (one hand-off per image).

The CPU stages on the ``render`` queue (``render.ad``, ``render.storybook``, ``deliver``) may be simulated the
same way (``--stages``), with the time a CPU host takes: on a 2-core machine their real drawing, OCR and PDF
signing would saturate the machine long before the control plane (they scale on their own hosts in production).

Run it as ``ATELIER_BENCH_SIMULATED_GPU=1 python bench/simfleet.py --queues gpu.diffusion,gpu.identity,gpu.watermark
--slots 32`` with the usual ``ATELIER_*`` settings (broker, storage) in the environment.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

ENV_FLAG = "ATELIER_BENCH_SIMULATED_GPU"
ENV_TIME_SCALE = "ATELIER_BENCH_SIMULATED_TIME_SCALE"
ENV_STAGES = "ATELIER_BENCH_SIMULATED_STAGES"
ENV_GATE_PASS_RATE = "ATELIER_BENCH_SIMULATED_GATE_PASS_RATE"


@dataclass(frozen=True)
class Profile:
    """How long one task of a stage takes on its device: uniform in [low_s, high_s] (real-card seconds)."""

    low_s: float
    high_s: float
    steps: int
    what: str


# seconds per task on the hardware each stage runs on (per image: no cross-task batching in the simulation)
PROFILES: dict[str, Profile] = {
    "gpu.background": Profile(0.5, 1.0, 4, "SDXL 1024² 4-step (Lightning/Hyper-SD), one image"),
    "gpu.character_sheet": Profile(2.0, 4.0, 4, "FLUX 1024² few-step, one image"),
    "gpu.scene": Profile(2.0, 4.0, 4, "FLUX 1024² few-step with identity conditioning, one image"),
    "gate.identity": Profile(0.05, 0.15, 1, "face detection + identity embeddings of one scene"),
    "gpu.watermark": Profile(0.1, 0.3, 1, "VINE embed + read back + C2PA signing, one image"),
    "render.ad": Profile(0.2, 0.5, 1, "CPU host: taglines, logo, CTA drawn; OCR checks"),
    "render.storybook": Profile(0.2, 0.5, 1, "CPU host: one storybook page"),
    "deliver": Profile(0.05, 0.2, 1, "CPU host: manifest (and a story's PDF/HTML)"),
}
GPU_STAGES = ("gpu.background", "gpu.character_sheet", "gpu.scene", "gate.identity", "gpu.watermark")
RENDER_STAGES = ("render.ad", "render.storybook", "deliver")
SIDE = 64  # long side of the simulated images (pixels): real PNG bytes through storage, cheap to write


def enabled(env: dict[str, str] | None = None) -> bool:
    """Whether the bench-only simulated fleet was asked for explicitly (``ATELIER_BENCH_SIMULATED_GPU=1``)."""
    return (os.environ if env is None else env).get(ENV_FLAG) == "1"


def require_enabled(env: dict[str, str] | None = None) -> None:
    if not enabled(env):
        raise RuntimeError(f"the simulated GPU fleet is bench-only: set {ENV_FLAG}=1 to run it "
                           "(its GPU stages sleep instead of generating images)")


def device_seconds(profile: Profile, stage_id: str, regeneration: int, attempt: int, scale: float) -> float:
    """The device time of one task: drawn from its profile, the same for a redelivered copy of the task."""
    seed = int.from_bytes(hashlib.sha256(f"{stage_id}:{regeneration}:{attempt}".encode()).digest()[:8], "big")
    return random.Random(seed).uniform(profile.low_s, profile.high_s) * scale


def png(width: int, height: int, tag: str) -> bytes:
    """A small real PNG, its colour derived from ``tag`` (so different items write different bytes)."""
    from PIL import Image

    colour = tuple(hashlib.sha256(tag.encode()).digest()[:3])
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")  # type: ignore[arg-type]
    return buf.getvalue()


def dims(size: str | None) -> tuple[int, int]:
    """A ``WxH`` target size scaled to a :data:`SIDE`-pixel long side (square without one)."""
    if not size:
        return SIDE, SIDE
    w, h = (int(v) for v in size.split("x"))
    k = SIDE / max(w, h)
    return max(1, round(w * k)), max(1, round(h * k))


# ---------------------------------------------------------------- the simulated handlers

def _simulate(ctx: Any, profile: Profile, scale: float) -> tuple[float, float]:
    """Sleep the task's device time in ``steps`` parts with the production per-step callback; return when it
    started (epoch seconds) and how long it took."""
    task = ctx.task
    total = device_seconds(profile, task.stage_id, task.regeneration, task.attempt, scale)
    began = time.time()
    t0 = time.perf_counter()
    for step in range(1, profile.steps + 1):
        remaining = t0 + total * step / profile.steps - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        ctx.progress(step, profile.steps)  # heartbeat + cancel check + progress event, as the real step callback
    return began, time.perf_counter() - t0


def _image(ctx: Any, size: str | None, kind: str, meta: dict[str, Any]) -> Any:
    """A small PNG under the stage's key for this item (a gate's regeneration under its attempt name, as the real
    stages store them)."""
    from atelier_contracts import items

    w, h = dims(size)
    return ctx.put(name=items.attempt_name(ctx.task.item, ctx.task.regeneration), data=png(w, h, f"{ctx.task.stage_id}:{ctx.task.regeneration}"), ext="png",
                   content_type="image/png", kind=kind, width=w, height=h, meta={"simulated": True, **meta})


def _sim_record(profile: Profile, began: float, seconds: float) -> dict[str, Any]:
    return {"device_start": round(began, 4), "device_s": round(seconds, 4), "profile": profile.what,
            "slot": threading.current_thread().name}


def handler_for(stage: str, *, scale: float, gate_pass_rate: float) -> Callable[[Any], Any]:
    """The simulated handler of ``stage``: typed inputs → device time → artifact → typed output."""
    from atelier_contracts import items
    from atelier_contracts import stage_io as io_
    from atelier_contracts.catalogue import stage as stage_decl

    decl = stage_decl(stage)
    profile = PROFILES[stage]
    gpu = stage in GPU_STAGES

    def handler(ctx: Any) -> Any:
        inputs = ctx.inputs(decl.inputs)  # the production parse of the upstream outputs
        began, seconds = _simulate(ctx, profile, scale)
        if gpu:
            ctx.gpu_seconds = seconds
        sim = _sim_record(profile, began, seconds)
        item = ctx.task.item
        seed = int(hashlib.sha256(ctx.task.stage_id.encode()).hexdigest()[:8], 16)
        if stage == "gpu.background":
            size, variant = ctx.parsed_item(items.parse_size_variant)
            rec = _image(ctx, size, "background", {"variant": variant})
            return io_.BackgroundOutput(background_key=rec.key, width=rec.width, height=rec.height, seed=seed,
                                        model="sim-sdxl", steps=profile.steps, recipe="simulated", batch_size=1,
                                        simulated=sim)
        if stage == "gpu.character_sheet":
            rec = _image(ctx, None, "sheet", {"character": item})
            return io_.SheetOutput(sheet_key=rec.key, width=rec.width, height=rec.height, seed=seed, model="sim-flux",
                                   steps=profile.steps, recipe="simulated", batch_size=1, simulated=sim)
        if stage == "gpu.scene":
            rec = _image(ctx, None, "scene", {"scene": item})
            return io_.SceneOutput(scene_key=rec.key, width=rec.width, height=rec.height, seed=seed, model="sim-flux",
                                   steps=profile.steps, recipe="simulated", batch_size=1, simulated=sim)
        if stage == "gate.identity":
            passed = random.Random(seed).random() < gate_pass_rate
            score = 0.8 if passed else 0.3
            return io_.GateOutput(gates=[io_.GateScore(name="identity", score=score, passed=passed,
                                                       detail="simulated")],
                                  passed=passed, score=score, regenerate=not passed, detail="simulated",
                                  simulated=sim)
        if stage == "gpu.watermark":
            rendered = inputs.render_ad or inputs.render_page
            size = rendered.size if isinstance(rendered, io_.RenderAdOutput) else None
            rec = _image(ctx, size, "asset", {"watermark": "simulated"})
            return io_.WatermarkOutput(asset_key=rec.key, width=rec.width, height=rec.height,
                                       watermark={"simulated": True, "embedded": True, "verified": True},
                                       simulated=sim)
        if stage == "render.ad":
            size, variant = ctx.parsed_item(items.parse_size_variant)
            rec = _image(ctx, size, "render", {"variant": variant})
            return io_.RenderAdOutput(render_key=rec.key, width=rec.width, height=rec.height, size=size,
                                      variant=variant, gates_passed=True, simulated=sim)
        if stage == "render.storybook":
            page = ctx.parsed_item(items.parse_scene) + 1
            rec = _image(ctx, None, "page", {"page": page})
            return io_.RenderPageOutput(render_key=rec.key, width=rec.width, height=rec.height, page=page,
                                        simulated=sim)
        if stage == "deliver":
            marks = inputs.watermark
            assets = [marks[k].asset_key for k in sorted(marks)]
            failed = [f.model_dump() for f in ctx.task.failures]
            manifest = {"job_id": ctx.task.job_id, "kind": ctx.task.kind, "count": len(assets), "assets": assets,
                        "failed": failed, "simulated": True}
            rec = ctx.put(name="manifest", data=json.dumps(manifest, sort_keys=True).encode(), ext="json",
                          content_type="application/json", kind="manifest", meta={"count": len(assets)})
            return io_.DeliverOutput(manifest_key=rec.key, assets=assets, count=len(assets), failed=failed,
                                     simulated=sim)
        raise AssertionError(f"no simulated handler for {stage}")

    handler.__name__ = f"simulated_{stage.replace('.', '_')}"
    return handler


# ---------------------------------------------------------------- the worker

def simulated_app(settings: Any, queues: Sequence[str], *, stages: Sequence[str], slots: int, scale: float = 1.0,
                  gate_pass_rate: float = 1.0, env: dict[str, str] | None = None) -> Any:
    """The Celery app of a simulated-fleet worker: ``stages`` simulated, the queues' other stages real.

    Raises RuntimeError unless the bench-only flag is set (``env`` or the process environment).
    """
    require_enabled(env)
    from atelier.workers import role_modules
    from atelier_contracts.catalogue import STAGES
    from atelier_runtime.celeryapp import make_celery
    from atelier_runtime.stage_runner import stage_task

    unknown = [s for s in stages if s not in PROFILES]
    if unknown:
        raise ValueError(f"no simulation profile for {unknown}; simulated stages: {sorted(PROFILES)}")
    simulated = [s for s in stages if STAGES[s].queue in queues]
    skip = {STAGES[s].handler for s in simulated}
    real = [m for m in role_modules(queues) if m not in skip]
    app = make_celery(settings, include=real, name="atelier-bench-simulated")
    # every slot stands for its own GPU worker process, which has its own broker connection: without this the
    # slots would queue for Celery's default pool of 10 producer connections, a limit no real fleet has
    app.conf.broker_pool_limit = slots + 8
    for module in real:
        importlib.import_module(module)
    for s in simulated:
        stage_task(s)(handler_for(s, scale=scale, gate_pass_rate=gate_pass_rate))
    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Bench-only simulated GPU fleet worker (needs "
                                             f"{ENV_FLAG}=1): N slots, each one simulated GPU.")
    ap.add_argument("--queues", default="gpu.diffusion,gpu.identity,gpu.watermark")
    ap.add_argument("--slots", type=int, default=1, help="simulated GPUs (worker threads, one task each)")
    ap.add_argument("--stages", default=os.environ.get(ENV_STAGES, ",".join(GPU_STAGES)),
                    help="comma-separated stages to simulate (default: every GPU stage)")
    ap.add_argument("--time-scale", type=float, default=float(os.environ.get(ENV_TIME_SCALE, "1.0")),
                    help="multiplies every device time (1.0: the real cards' times)")
    ap.add_argument("--gate-pass-rate", type=float, default=float(os.environ.get(ENV_GATE_PASS_RATE, "1.0")),
                    help="share of simulated identity gates that pass (the others ask for a regeneration)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--loglevel", default="WARNING")
    args = ap.parse_args(argv)
    try:
        require_enabled()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from atelier_runtime.settings import Settings

    settings = Settings()
    if settings.embedded:
        print("error: the simulated fleet needs a broker (ATELIER_BROKER_URL)", file=sys.stderr)
        return 2
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    app = simulated_app(settings, queues, stages=stages, slots=args.slots, scale=args.time_scale,
                        gate_pass_rate=args.gate_pass_rate)
    name = args.name or f"bench-simulated-{args.slots}@{os.uname().nodename}-{os.getpid()}"
    app.worker_main(["worker", "-Q", ",".join(queues), "-P", "threads", "-c", str(args.slots), "-l", args.loglevel,
                     "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", name])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
