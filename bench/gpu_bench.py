"""GPU benchmarks: the diffusion worker and SVDQuant.

Two modes:

* ``cpu`` (``make bench``) merges into bench/results.json:
  - ``batch_speedup``: images/s of the bench SDXL at batch 4 over batch 1 (one pipeline call each);
  - ``svdquant_error_ratio``: W4A4 output error of SVDQuant / naive W4A4 on a linear layer with outlier
    channels (worst of several seeds; details also against SmoothQuant-style W4A4 and weight-only INT4);
  - ``svdquant_memory_ratio``: bf16 bytes / SVDQuant bytes (packed INT4 + scales + smoothing + rank-32
    branch) of a FLUX-sized 3072x12288 linear layer;
  - ``worker_busy_fraction``: a real ``atelier worker --queues gpu.diffusion`` process on Redis drains a
    queue of 20 background requests; the share of its wall time (first task start → last task end)
    spent inside pipeline calls (the GPU-seconds its results report);
  - ``quant_denoiser_ratio`` and ``quant_memory``: each registry quantisation option (bf16, torchao float8 /
    int8 weight-only / int8 dynamic, SVDQuant packed / fake) on the bench SDXL in bfloat16, each in a fresh
    process: the denoiser's stored bytes, the process's RSS after loading and its peak RSS over one 256 px
    generation (float8 is recorded as skipped: it needs a GPU of compute capability 8.9+).
* ``gpu`` (``bench/gpu_check.sh`` on a lent GPU) writes bench/gpu_results.json: real-size SDXL UNet and
  FLUX.1 transformer configs with random weights at 1024x1024, seconds per denoiser step and peak memory for
  bf16, torchao float8 (dynamic activations), int8 weight-only, int8 dynamic, SVDQuant packed and fake-quant,
  each without and with ``torch.compile``, plus one real-size layer's SVDQuant decomposition. The file is
  rewritten after every variant, so a run cut short keeps what it measured. ``--dry-run`` runs the same code
  on tiny configs on the CPU (the unit tests do; compile there captures graphs with the ``eager`` backend), so
  the script is known to work before a GPU is lent.

Benchmarks are not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for sub in ("", "gpu-workers/src", "contracts/src", "runtime/src", "provenance/src"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

import torch  # noqa: E402
from atelier_gpu.quant import svdquant as sq  # noqa: E402

RESULTS = ROOT / "bench" / "results.json"
GPU_RESULTS = ROOT / "bench" / "gpu_results.json"
WORK = ROOT / "bench" / ".work"

SDXL_UNET = {  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
    "sample_size": 128, "in_channels": 4, "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280), "layers_per_block": 2, "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
}
SDXL_TINY = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "block_out_channels": (64, 128), "layers_per_block": 1,
    "transformer_layers_per_block": (1, 1), "attention_head_dim": (2, 2), "cross_attention_dim": 128,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 64, "norm_num_groups": 32,
}
FLUX_DEV = {  # black-forest-labs/FLUX.1-dev transformer/config.json
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
FLUX_TINY = {
    "patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 64, "num_attention_heads": 2,
    "joint_attention_dim": 128, "pooled_projection_dim": 64, "guidance_embeds": True, "axes_dims_rope": (16, 24, 24),
}


def merge_results(path: Path, update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into the JSON at ``path`` (other keys kept); return the whole document."""
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.update(update)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


# ---------------------------------------------------------------- SVDQuant figures (CPU)

def outlier_layer(seed: int, out_f: int = 512, in_f: int = 256, rows: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight with 4 outlier output rows (x20) and activations with 4 outlier channels (x40) (METHODS.md)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g, dtype=torch.float64) * 0.02
    w[torch.randperm(out_f, generator=g)[:4]] *= 20
    x = torch.randn(rows, in_f, generator=g, dtype=torch.float64)
    x[:, torch.randperm(in_f, generator=g)[:4]] *= 40
    return w, x


def svdquant_errors(seeds: int = 5, alpha: float = 0.5) -> dict[str, Any]:
    worst: dict[str, float] = {}
    for seed in range(seeds):
        w, x = outlier_layer(seed)
        ref = x @ w.T
        smooth = sq.smoothing_factors(x.abs().amax(0), w, alpha)

        def err(y: torch.Tensor, ref: torch.Tensor = ref) -> float:
            return float(torch.linalg.norm(y - ref))

        ratios = {
            "svdquant_vs_naive_w4a4": err(sq.w4a4_output(x, w, smooth=smooth, rank=32))
            / err(sq.w4a4_output(x, w, rank=0)),
            "svdquant_vs_smoothquant_w4a4": err(sq.w4a4_output(x, w, smooth=smooth, rank=32))
            / err(sq.w4a4_output(x, w, smooth=smooth, rank=0)),
            "weight_lowrank_vs_int4": float(torch.linalg.norm(w - sq.decompose(w, rank=32).weight())
                                            / torch.linalg.norm(w - sq.fake_quant(w))),
        }
        for k, v in ratios.items():
            worst[k] = max(worst.get(k, 0.0), v)
    return {"value": round(worst["svdquant_vs_naive_w4a4"], 4),
            "detail": {k: round(v, 4) for k, v in worst.items()} | {"seeds": seeds, "alpha": alpha,
                                                                    "layer": "512x256, 4 outlier rows x20, "
                                                                             "4 activation channels x40"}}


def svdquant_memory(out_f: int = 3072, in_f: int = 12288, rank: int = 32) -> dict[str, Any]:
    layer = sq.SVDQuantLinear(in_f, out_f, rank=rank, dtype=torch.bfloat16)
    packed = layer.storage_bytes()
    bf16 = sq.bf16_bytes(out_f, in_f, bias=True)
    return {"value": round(bf16 / packed, 3),
            "detail": {"layer": f"{out_f}x{in_f}", "rank": rank, "group_size": sq.DEFAULT_GROUP,
                       "bf16_bytes": bf16, "svdquant_bytes": packed,
                       "parts": {k: b.numel() * b.element_size() for k, b in layer.named_buffers()}}}


# ---------------------------------------------------------------- batch speedup (CPU)

def batch_speedup(models_file: Path, model: str = "sdxl-bench", size: int = 256, rounds: int = 3) -> dict[str, Any]:
    from atelier_gpu.recipes import text_to_image as t2i
    from atelier_gpu.registry import ModelRegistry

    reg = ModelRegistry(models_file, device="cpu")
    spec = reg.spec(model)
    pipe = reg.load(model)
    kw = {"family": spec.family, "prompt": "a studio backdrop, soft light", "width": size, "height": size, "steps": spec.steps,
              "guidance": spec.guidance}
    # one torch thread, interleaved rounds: on a shared 2-core machine two contended threads slow small batches
    # far more than big ones, which would flatter batching; this measures per-image efficiency alone
    spent = {1: 0.0, 4: 0.0}
    with sq._threads(1):
        t2i.run_batch(pipe, seeds=[0], **kw)  # warm-up
        for r in range(rounds):
            for batch in (1, 4):
                t0 = time.perf_counter()
                t2i.run_batch(pipe, seeds=list(range(r * batch, r * batch + batch)), **kw)
                spent[batch] += time.perf_counter() - t0
    rates = {b: rounds * b / spent[b] for b in spent}
    return {"value": round(rates[4] / rates[1], 3),
            "detail": {"model": model, "size": size, "steps": spec.steps, "images_per_s_batch1": round(rates[1], 3),
                       "images_per_s_batch4": round(rates[4], 3), "device": "cpu", "torch_threads": 1}}


# ---------------------------------------------------------------- worker busy fraction (services, CPU)

def background_payload(job: str, variant: int, model: str = "sdxl-bench") -> dict[str, Any]:
    """A ``gpu.background`` stage task for a 1080x1080 ad (generated at ATELIER_GEN_MAX_SIDE), as the orchestrator sends it."""
    from atelier_contracts.keys import job_prefix
    from atelier_contracts.tasks import StageTask

    planner = {"backend": "rules", "model": "rules", "prompt_version": "1"}
    layout = {"plan_id": "l", "seed": 1, "width": 1080, "height": 1080, "planner": planner,
              "global_caption": "a studio backdrop", "boxes": [{"bbox": [0.1, 0.5, 0.4, 0.95], "caption": "a vase",
                                                                "role": "entity"}]}
    plan = {"plan_id": "ad", "seed": 7, "width": 1080, "height": 1080, "planner": planner, "product": {},
            "taglines": [{"text": "Hi", "level": "headline"}],
            "prompts": {"foreground": "a bottle", "background": "a studio backdrop"},
            "variants": [{"target": {"w": 1080, "h": 1080, "name": "1080x1080"}, "layout": layout}]}
    return StageTask(job_id=job, tenant_id="bench", stage_id=f"{job}:{variant}", stage="gpu.background",
                     item=f"1080x1080-v{variant}", kind="campaign", spec={"model": model},
                     upstream={"plan.ad_layout": {"plan": plan}}, key_prefix=job_prefix("bench", job)
                     ).model_dump(mode="json")


def stage_results(redis_url: str, n: int, timeout: float) -> list[dict[str, Any]]:
    """The next ``n`` stage results the workers send to the orchestrator queue (nobody else consumes it)."""
    from atelier_contracts.tasks import Q_ORCHESTRATOR, T_STAGE_DONE
    from kombu import Connection

    got: list[dict[str, Any]] = []
    with Connection(redis_url) as conn:
        channel = conn.default_channel
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            msg = channel.basic_get(Q_ORCHESTRATOR, no_ack=True)
            if msg is None:
                time.sleep(0.05)
                continue
            if msg.headers.get("task") == T_STAGE_DONE:
                got.append(msg.decode()[0][0])
    if len(got) < n:
        raise TimeoutError(f"only {len(got)} of {n} stage results came back")
    return got


def drain_backgrounds(models_file: Path, requests: int, *, workers: int = 1, model: str = "sdxl-bench",
                      redis_db: int = 13, name: str = "busy", worker_env: dict[str, str] | None = None,
                      rounds: int = 1, on_round: Callable[[list[int]], Any] | None = None
                      ) -> list[list[dict[str, Any]]]:
    """``workers`` real diffusion worker processes on Redis drain ``requests`` queued background tasks.

    Every worker is warmed up first (model loaded, connections open: 4 tasks per worker until each has
    served one); then ``rounds`` times ``requests`` tasks are queued and drained. Returns each round's
    stage results. ``on_round(pids)`` is entered as a context manager around each round (CPU accounting).
    """
    import redis
    from atelier_contracts.tasks import stage_task_name
    from atelier_runtime.celeryapp import make_celery
    from atelier_runtime.settings import Settings

    from tests.procs import Proc, wait_until

    redis_url = f"redis://127.0.0.1:6379/{redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    home = WORK / f"{name}-home"
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", ATELIER_HOME=str(home), ATELIER_BROKER_URL=redis_url,
               ATELIER_STORAGE="local", ATELIER_MODELS_FILE=str(models_file), ATELIER_GEN_MAX_SIDE="256",
               ATELIER_GPU_MAX_BATCH="4", ATELIER_DEFAULT_MODEL=model, **(worker_env or {}))
    app = make_celery(Settings(broker_url=redis_url, home=home))
    procs = [Proc(f"gpu-{name}-{i + 1}", ["worker", "--queues", "gpu.diffusion", "--loglevel", "WARNING"], env, logs)
             .start() for i in range(workers)]
    try:
        warmed: set[str] = set()
        for attempt in range(4):
            for v in range(4 * workers):
                app.send_task(stage_task_name("gpu.background"), args=[background_payload(f"warm{attempt}", v, model)])
            warmed |= {r["worker"] for r in stage_results(redis_url, 4 * workers, 600)}
            if len(warmed) >= workers:
                break
        out = []
        for k in range(rounds):
            with on_round([w.pid for w in procs]) if on_round else contextlib.nullcontext():
                for i in range(requests):
                    app.send_task(stage_task_name("gpu.background"),
                                  args=[background_payload(f"r{k}job{i // 4}", i % 4, model)])
                out.append(stage_results(redis_url, requests, 1800))
    finally:
        for w in procs:
            w.stop()
        for w in procs:
            with contextlib.suppress(Exception):
                wait_until(lambda w=w: w.p is not None and w.p.poll() is not None, 30, what="worker exit")
        redis.Redis.from_url(redis_url).flushdb()
    bad = [r for done in out for r in done if r["status"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} background(s) failed: {bad[0].get('error')}")
    return out


def worker_busy_fraction(models_file: Path, requests: int = 20, model: str = "sdxl-bench") -> dict[str, Any]:
    """Drain ``requests`` background tasks through a real diffusion worker process on Redis."""
    done = drain_backgrounds(models_file, requests, model=model)[0]
    starts = [datetime.fromisoformat(r["started_at"]).timestamp() for r in done]
    ends = [datetime.fromisoformat(r["finished_at"]).timestamp() for r in done]
    wall = max(ends) - min(starts)
    busy = sum(r["gpu_seconds"] for r in done)
    batches = sorted({r["output"].get("batch_size", 1) for r in done})
    return {"value": round(busy / wall, 4),
            "detail": {"requests": requests, "wall_s": round(wall, 3), "in_pipeline_s": round(busy, 3),
                       "batch_sizes": batches, "model": model, "gen_max_side": 256, "max_batch": 4}}


# ---------------------------------------------------------------- quantisation options: CPU memory

QUANT_OPTIONS = ("none", "torchao-float8dq", "torchao-int8wo", "torchao-int8dq", "svdquant-packed", "svdquant-fake")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def quant_memory_one(models_file: Path, model: str, option: str, dtype: str = "bfloat16", size: int = 256) -> dict[str, Any]:
    """One registry quantisation option in this (fresh) process: denoiser bytes, RSS after load, peak RSS."""
    from atelier_contracts.errors import StageError
    from atelier_gpu.recipes import text_to_image as t2i
    from atelier_gpu.registry import load_pipeline, read_models_file, resident_bytes

    spec = read_models_file(models_file)[model]
    quantization = option if not option.startswith("svdquant") else "none"
    spec = dataclasses.replace(spec, dtype=dtype, quantization=quantization)
    try:
        pipe = load_pipeline(spec, device="cpu")
    except StageError as exc:
        return {"skipped": str(exc).split(": ", 1)[-1]}
    denoiser = getattr(pipe, spec.denoiser)
    detail: dict[str, Any] = {}
    if option.startswith("svdquant"):
        # random INT4 contents: the bytes are those of a real checkpoint; the image is noise either way here
        detail["layers"] = to_svdquant_shells(denoiser, mode=option.removeprefix("svdquant-"))
    gc.collect()
    detail["denoiser_bytes"] = (sq.storage_bytes(denoiser) if option.startswith("svdquant")
                                else resident_bytes(denoiser))
    detail["rss_after_load_bytes"] = _rss_bytes()
    t0 = time.perf_counter()
    with torch.no_grad():
        image = t2i.run(pipe, family=spec.family, prompt="a studio backdrop, soft light", width=size, height=size,
                        steps=spec.steps, guidance=spec.guidance, seed=0)
    detail["s_per_step_cpu"] = round((time.perf_counter() - t0) / spec.steps, 3)
    if option == "svdquant-fake":  # the dequantised weights it caches on the first call are part of its memory
        detail["denoiser_bytes_after_first_call"] = resident_bytes(denoiser) + sum(
            m._dequantized.numel() * m._dequantized.element_size() for m in sq.svdquant_layers(denoiser).values()
            if getattr(m, "_dequantized", None) is not None)
    detail["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    detail["image"] = list(image.size)
    return detail


def quant_memory(models_file: Path, model: str = "sdxl-bench", dtype: str = "bfloat16") -> dict[str, Any]:
    """Every option of :data:`QUANT_OPTIONS` in its own process (peak RSS is per process)."""
    out: dict[str, Any] = {}
    for option in QUANT_OPTIONS:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "quant-memory-one", "--models-file",
                               str(models_file), "--model", model, "--option", option, "--dtype", dtype],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            out[option] = {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else "failed"}
            continue
        out[option] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = out["none"].get("denoiser_bytes")
    ratios = {k: round(base / v["denoiser_bytes"], 3) for k, v in out.items()
              if base and v.get("denoiser_bytes") and k != "none"}
    return {"value": ratios, "detail": {"model": model, "dtype": dtype, "device": "cpu", "options": out,
                                        "note": "denoiser bytes: stored tensors (torchao's inner int8 data and "
                                                "scales, SVDQuant's packed INT4 + scales + branch); ratio = "
                                                "bf16 denoiser bytes / the option's (the bench UNet's convolutions and norms, 42% of its "
                                                "weights, stay bf16: torchao quantises linear layers only); peak RSS is the load's "
                                                "(16-bit weights are read before quantising); s_per_step_cpu is noisy "
                                                "on a shared 2-core machine; float8 needs an sm_89+ GPU"}}


def quant_real_size_bytes() -> dict[str, Any]:
    """Stored bytes of the real-size SDXL UNet and FLUX.1 transformer under each option, counted on the meta device.

    torchao's ``quantize_`` builds its own quantised tensors there (int8 / float8 data and their scales) and the
    SVDQuant shells their packed buffers; no kernel runs, so float8's sm_89 check is bypassed for this count.
    """
    from unittest import mock

    from atelier_gpu.registry import resident_bytes, torchao_config
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel
    from torchao.quantization import quant_api, quantize_

    out: dict[str, Any] = {}
    for name, cls, cfg in (("sdxl_unet", UNet2DConditionModel, SDXL_UNET), ("flux_transformer", FluxTransformer2DModel,
                                                                            FLUX_DEV)):
        row: dict[str, Any] = {}
        for option in ("bf16", "torchao-float8dq", "torchao-int8wo", "torchao-int8dq", "svdquant-packed"):
            before = torch.get_default_dtype()
            torch.set_default_dtype(torch.bfloat16)
            try:
                with torch.device("meta"):
                    model = cls(**cfg)
            finally:
                torch.set_default_dtype(before)
            if option.startswith("torchao"):
                with mock.patch.object(quant_api, "_check_hardware_support", lambda *a, **k: None):
                    quantize_(model, torchao_config(option, "bfloat16"), device="meta")
                row[option] = resident_bytes(model)
            elif option.startswith("svdquant"):
                to_svdquant_shells(model, mode="packed")
                row[option] = sq.storage_bytes(model)
            else:
                row["params"] = sum(p.numel() for p in model.parameters())
                row["linear_params"] = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
                row[option] = resident_bytes(model)
            del model
        out[name] = row
    return out


def run_cpu(args: argparse.Namespace) -> int:
    from atelier_gpu.tiny import init_tiny

    models = WORK / "models"
    models_file = models / "models.yaml"
    if not models_file.exists() or "sdxl-bench" not in models_file.read_text():
        init_tiny(models, bench=True)
    else:
        init_tiny(models, bench=True)  # reuses folders of the same version, refreshes models.yaml
    figures: dict[str, Any] = {}
    only = set(args.only or ("svdquant", "batch", "quant", "worker"))
    if "svdquant" in only:
        err = svdquant_errors()
        mem = svdquant_memory()
        figures["svdquant_error_ratio"], figures["svdquant_error_detail"] = err["value"], err["detail"]
        figures["svdquant_memory_ratio"], figures["svdquant_memory_detail"] = mem["value"], mem["detail"]
    if "batch" in only:
        bs = batch_speedup(models_file)
        figures["batch_speedup"], figures["batch_speedup_detail"] = bs["value"], bs["detail"]
    if "quant" in only:
        qm = quant_memory(models_file)
        figures["quant_denoiser_ratio"], figures["quant_memory_detail"] = qm["value"], qm["detail"]
        real = quant_real_size_bytes()
        figures["quant_real_size_gib"] = {name: {k: round(v / 2**30, 2) for k, v in row.items() if "params" not in k}
                                          for name, row in real.items()}
        figures["quant_real_size_detail"] = real | {
            "note": "stored bytes of the real-size configs in bf16 and under each option, counted on the meta device "
                    "(torchao builds its own quantised tensors; no kernel runs)"}
    if "worker" in only and not args.skip_worker:
        busy = worker_busy_fraction(models_file)
        figures["worker_busy_fraction"], figures["worker_busy_detail"] = busy["value"], busy["detail"]
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if args.only:  # a partial run dates only what it measured
        figures.update({f"{group}_measured_at": now for group in args.only})
    else:
        figures["gpu_bench_measured_at"] = now
    merge_results(Path(args.out) if args.out else RESULTS, figures)
    print(json.dumps({k: v for k, v in figures.items() if not k.endswith("_detail")}, indent=2))
    return 0


# ---------------------------------------------------------------- GPU: real-size denoisers

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_it(fn: Callable[[], Any], device: str, iters: int, warmup: int = 1) -> tuple[float, float]:
    """(seconds per call over ``iters`` calls, seconds of the first warm-up call: a compile happens there)."""
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        _sync(device)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(device)
    return (time.perf_counter() - t0) / iters, first


def build_sdxl(cfg: dict[str, Any], device: str, dtype: torch.dtype, size: int, batch: int = 2
               ) -> tuple[Any, Callable[[], Any]]:
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**cfg).to(dtype).eval()
    lat = size // 8
    g = torch.Generator(device="cpu").manual_seed(0)
    sample = torch.randn(batch, 4, lat, lat, generator=g).to(device, dtype)
    ctx_dim = cfg["cross_attention_dim"]
    text = torch.randn(batch, 77, ctx_dim, generator=g).to(device, dtype)
    pooled_dim = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
    added = {"text_embeds": torch.randn(batch, pooled_dim, generator=g).to(device, dtype),
             "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch, device=device, dtype=dtype)}
    t = torch.tensor([500] * batch, device=device)
    return unet, lambda: unet(sample, t, encoder_hidden_states=text, added_cond_kwargs=added).sample


def build_flux(cfg: dict[str, Any], device: str, dtype: torch.dtype, size: int, text_tokens: int = 512
               ) -> tuple[Any, Callable[[], Any]]:
    from diffusers import FluxTransformer2DModel

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build the 12B parameters directly in 16 bits
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = FluxTransformer2DModel(**cfg).eval()
    finally:
        torch.set_default_dtype(before)
    side = size // 16
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(1, side * side, cfg["in_channels"], generator=g).to(device, dtype)
    enc = torch.randn(1, text_tokens, cfg["joint_attention_dim"], generator=g).to(device, dtype)
    pooled = torch.randn(1, cfg["pooled_projection_dim"], generator=g).to(device, dtype)
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    img_ids = img_ids.reshape(-1, 3).to(device, dtype)
    txt_ids = torch.zeros(text_tokens, 3, device=device, dtype=dtype)
    t = torch.tensor([0.5], device=device, dtype=dtype)
    guidance = torch.tensor([3.5], device=device, dtype=dtype)
    return model, lambda: model(hidden_states=hidden, encoder_hidden_states=enc, pooled_projections=pooled,
                                timestep=t, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance).sample


def to_svdquant_shells(model: Any, *, mode: str, rank: int = sq.DEFAULT_RANK) -> int:
    """Swap every quantisable linear for an SVDQuant layer with random INT4 contents (speed does not depend on
    the values; the decomposition of one real-size layer is timed separately)."""
    n = 0
    torch.manual_seed(1)  # random contents made on the device itself (GBs of them for FLUX)
    for name, lin in sq.quantizable_linears(model, rank=rank):
        dtype, device = lin.weight.dtype, lin.weight.device
        layer = sq.SVDQuantLinear(lin.in_features, lin.out_features, rank=rank, bias=lin.bias is not None,
                                  dtype=dtype, mode=mode).to(device)
        layer.qweight = torch.randint(0, 256, layer.qweight.shape, dtype=torch.uint8, device=device)
        layer.wscale = torch.full(layer.wscale.shape, 0.002, dtype=dtype, device=device)
        layer.lora_down = torch.randn(layer.lora_down.shape, dtype=dtype, device=device) * 0.01
        layer.lora_up = torch.randn(layer.lora_up.shape, dtype=dtype, device=device) * 0.01
        if lin.bias is not None:
            layer.bias = lin.bias.detach().clone()
        sq._set_module(model, name, layer)
        n += 1
    return n


def _peak(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def _reset_peak(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# every variant of a denoiser, each measured without and then with torch.compile (suffix ``_compiled``)
GPU_VARIANTS = ("bf16", "torchao_float8dq", "torchao_int8dq", "torchao_int8wo", "svdquant_packed", "svdquant_fake")


def prepare_variant(model: Any, variant: str, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Turn a freshly built 16-bit denoiser into ``variant`` in place, as the registry option of that name does."""
    if variant == "bf16":
        return {}
    if variant.startswith("torchao_"):
        from atelier_gpu.registry import float8_support, torchao_config
        from torchao.quantization import quantize_

        option = "torchao-" + variant.removeprefix("torchao_")
        if option == "torchao-float8dq":
            ok, why = float8_support(device)
            if not ok:
                raise _Skip(why)
        quantize_(model, torchao_config(option, str(dtype).removeprefix("torch.")))
        return {}
    if variant.startswith("svdquant_"):
        return {"layers": to_svdquant_shells(model, mode=variant.removeprefix("svdquant_"))}
    raise ValueError(variant)


class _Skip(Exception):
    """A variant this machine cannot run (recorded as skipped, with the reason)."""


def bench_denoiser(build: Callable[[], tuple[Any, Callable[[], Any]]], device: str, dtype: torch.dtype, iters: int,
                   budget_s: float, compile_opts: dict[str, Any], on_result: Callable[[dict[str, Any]], Any] | None = None
                   ) -> dict[str, Any]:
    """Seconds per step and peak memory of one denoiser in every variant of :data:`GPU_VARIANTS`, eager and
    compiled; rebuilt from random weights for each variant (each needs the 16-bit weights)."""
    from atelier_gpu.registry import CompileSpec, compile_denoiser, resident_bytes

    out: dict[str, Any] = {}
    started = time.perf_counter()

    def left() -> bool:
        return time.perf_counter() - started < budget_s

    def measure(step: Callable[[], Any]) -> dict[str, Any]:
        s_step, first = _time_it(step, device, iters)
        return {"s_step": round(s_step, 4), "it_s": round(1 / s_step, 3), "first_call_s": round(first, 2),
                "peak_gib": _peak(device)}

    for variant in GPU_VARIANTS:
        compiled = f"{variant}_compiled"
        if not left():
            out[variant] = out[compiled] = {"skipped": "time budget"}
            continue
        model = step = None
        _reset_peak(device)
        try:
            model, step = build()
            out.setdefault("params_m", round(sum(p.numel() for p in model.parameters()) / 1e6, 1))
            extra = prepare_variant(model, variant, device, dtype)
            weights = sq.storage_bytes(model) if variant.startswith("svdquant") else resident_bytes(model)
            out[variant] = measure(step) | {"weights_gib": round(weights / 2**30, 3)} | extra
            if on_result:
                on_result(out)
            if not left():
                out[compiled] = {"skipped": "time budget"}
                continue
            torch._dynamo.reset()  # each variant compiles afresh (no recompile limit carried over)
            _reset_peak(device)
            compile_denoiser(model, CompileSpec(**compile_opts))
            out[compiled] = measure(step)
            out[compiled]["compile_s"] = round(out[compiled].pop("first_call_s") - out[variant]["s_step"], 2)
        except _Skip as why:
            out[variant] = out[compiled] = {"skipped": str(why)}
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run here is a result too
            key = compiled if variant in out else variant
            out[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            out.setdefault(compiled, {"skipped": f"{variant} failed"})
        finally:
            del model, step
            _reset_peak(device)
        if on_result:
            on_result(out)
    return out


def one_layer_decomposition(device: str, out_f: int, in_f: int, x_rows: int = 256) -> dict[str, Any]:
    g = torch.Generator(device="cpu").manual_seed(2)
    w = (torch.randn(out_f, in_f, generator=g) * 0.02).to(device)
    x = torch.randn(x_rows, in_f, generator=g).to(device)
    x[:, :8] *= 30
    lin = torch.nn.Linear(in_f, out_f, bias=False).to(device)
    lin.weight.data.copy_(w)
    t0 = time.perf_counter()
    layer, alpha = sq.SVDQuantLinear.from_linear(lin, calib_x=x, alphas=(0.3, 0.5, 0.7), refit_iters=2,
                                                 dtype=torch.bfloat16)
    _sync(device)
    secs = time.perf_counter() - t0
    with torch.no_grad():
        ref = x @ w.T
        err = float(torch.linalg.norm(layer(x.to(torch.bfloat16)).float() - ref) / torch.linalg.norm(ref))
    return {"layer": f"{out_f}x{in_f}", "seconds": round(secs, 2), "alpha": alpha, "relative_output_error": round(err, 4),
            "bytes_ratio_vs_bf16": round(sq.bf16_bytes(out_f, in_f) / layer.storage_bytes(), 3)}


def run_gpu(args: argparse.Namespace) -> int:
    dry = args.dry_run
    device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    if not dry and device != "cuda":
        print("no CUDA device: run with --dry-run for the CPU smoke version", file=sys.stderr)
        return 2
    from atelier_gpu.registry import float8_support

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    size = 1024 if not dry else 64
    iters = args.iters or (5 if not dry else 1)
    # inductor's CPU compile of even the tiny UNet takes minutes on a small machine: the dry run captures graphs only
    backend = args.compile_backend or ("inductor" if not dry else "eager")
    # the registry's compile option as a models.yaml would set it (regional: the repeated blocks, as by default)
    compile_opts: dict[str, Any] = {"backend": backend, "dynamic": False, "regional": not args.compile_whole,
                                    "mode": args.compile_mode if backend == "inductor" else "default"}
    result: dict[str, Any] = {
        "mode": "dry-run (tiny configs, CPU)" if dry else "real-size configs, random weights",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."), "size": f"{size}x{size}",
        "compile": compile_opts,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with contextlib.suppress(ImportError):
        import torchao

        result["torchao"] = torchao.__version__
    if device == "cuda":
        cap = torch.cuda.get_device_capability()
        result["compute_capability"] = f"{cap[0]}.{cap[1]}"
    result["float8_supported"], why = float8_support(device)
    if why:
        result["float8_why_not"] = why
    out = Path(args.out) if args.out else GPU_RESULTS

    def write() -> None:
        out.write_text(json.dumps(result, indent=2) + "\n")

    for name, cfg, build, budget in (("sdxl_unet", SDXL_TINY if dry else SDXL_UNET, build_sdxl, args.budget_s),
                                     ("flux_transformer", FLUX_TINY if dry else FLUX_DEV, build_flux,
                                      args.budget_s * 1.25)):
        t0 = time.perf_counter()
        note = ("one step = one UNet forward at batch 2 (CFG)" if name == "sdxl_unet"
                else "one step = one transformer forward, 4096 image + 512 text tokens (guidance-distilled: no CFG)"
                if not dry else "one step = one forward")
        try:
            result[name] = bench_denoiser(lambda cfg=cfg, build=build: build(cfg, device, dtype, size), device, dtype,
                                          iters, budget_s=budget, compile_opts=compile_opts,
                                          on_result=lambda partial, name=name: (result.__setitem__(name, partial),
                                                                                write()))
            result[name]["note"] = note
        except Exception as exc:  # noqa: BLE001 - keep what was measured
            result[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        result[name]["seconds"] = round(time.perf_counter() - t0, 1)
        _reset_peak(device)
        write()
    try:
        with sq._threads(1 if device == "cpu" else None):
            result["svdquant_one_layer"] = one_layer_decomposition(device, *((3072, 12288) if not dry else (128, 256)))
    except Exception as exc:  # noqa: BLE001
        result["svdquant_one_layer"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write()
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("cpu", "gpu", "quant-memory-one"),
                        help="quant-memory-one: one option of the cpu mode's quant_memory, run in its own process")
    parser.add_argument("--dry-run", action="store_true", help="gpu mode on tiny configs, on the CPU")
    parser.add_argument("--out", default=None, help="where the JSON goes (default bench/results.json or "
                                                    "bench/gpu_results.json)")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=160.0,
                        help="time budget of the SDXL UNet (gpu mode; FLUX gets 1.25x); variants past it are skipped")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of the gpu mode's compiled runs")
    parser.add_argument("--compile-backend", default=None, help="inductor (GPU default) or eager (dry-run default)")
    parser.add_argument("--compile-whole", action="store_true",
                        help="compile the whole denoiser, not only its repeated blocks (the registry's default)")
    parser.add_argument("--skip-worker", action="store_true", help="cpu mode without worker_busy_fraction")
    parser.add_argument("--only", nargs="+", choices=("svdquant", "batch", "quant", "worker"),
                        help="cpu mode: only these figures (default all)")
    parser.add_argument("--models-file", type=Path, help="quant-memory-one: the models.yaml")
    parser.add_argument("--model", default="sdxl-bench", help="quant-memory-one: the model id")
    parser.add_argument("--option", choices=QUANT_OPTIONS, help="quant-memory-one: the option")
    parser.add_argument("--dtype", default="bfloat16", help="quant-memory-one: the dtype")
    args = parser.parse_args(argv)
    if args.mode == "quant-memory-one":
        print(json.dumps(quant_memory_one(args.models_file, args.model, args.option, args.dtype)))
        return 0
    return run_cpu(args) if args.mode == "cpu" else run_gpu(args)


if __name__ == "__main__":
    raise SystemExit(main())
