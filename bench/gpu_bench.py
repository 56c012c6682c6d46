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
    spent inside pipeline calls (the GPU-seconds its results report).
* ``gpu`` (``bench/gpu_check.sh`` on a lent GPU) writes bench/gpu_results.json: real-size SDXL UNet and
  FLUX.1 transformer configs with random weights at 1024x1024, denoiser iterations per second for
  bf16, torchao int8 (weight-only and dynamic W8A8), SVDQuant fake-quant and SVDQuant packed, plus peak
  memory and one real-size layer's SVDQuant decomposition. ``--dry-run`` runs the same code on tiny
  configs on the CPU (the unit tests do), so the script is known to work before a GPU is lent.

Benchmarks are not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
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


def run_cpu(args: argparse.Namespace) -> int:
    from atelier_gpu.tiny import init_tiny

    models = WORK / "models"
    models_file = models / "models.yaml"
    if not models_file.exists() or "sdxl-bench" not in models_file.read_text():
        init_tiny(models, bench=True)
    else:
        init_tiny(models, bench=True)  # reuses folders of the same version, refreshes models.yaml
    figures: dict[str, Any] = {}
    err = svdquant_errors()
    mem = svdquant_memory()
    figures["svdquant_error_ratio"], figures["svdquant_error_detail"] = err["value"], err["detail"]
    figures["svdquant_memory_ratio"], figures["svdquant_memory_detail"] = mem["value"], mem["detail"]
    bs = batch_speedup(models_file)
    figures["batch_speedup"], figures["batch_speedup_detail"] = bs["value"], bs["detail"]
    if not args.skip_worker:
        busy = worker_busy_fraction(models_file)
        figures["worker_busy_fraction"], figures["worker_busy_detail"] = busy["value"], busy["detail"]
    figures["gpu_bench_measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    merge_results(Path(args.out) if args.out else RESULTS, figures)
    print(json.dumps({k: v for k, v in figures.items() if not k.endswith("_detail")}, indent=2))
    return 0


# ---------------------------------------------------------------- GPU: real-size denoisers

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_it(fn: Callable[[], Any], device: str, iters: int, warmup: int = 1) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(device)
    return iters / (time.perf_counter() - t0)


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


def bench_denoiser(name: str, build: Callable[[], tuple[Any, Callable[[], Any]]], device: str, iters: int,
                   budget_s: float) -> dict[str, Any]:
    """it/s of one denoiser in every variant, rebuilding it from random weights where a variant needs bf16 back."""
    out: dict[str, Any] = {}
    started = time.perf_counter()

    def left() -> bool:
        return time.perf_counter() - started < budget_s

    # bf16, then SVDQuant fake-quant, then packed (the same model converted in place)
    _reset_peak(device)
    model, step = build()
    params = sum(p.numel() for p in model.parameters())
    out["params_m"] = round(params / 1e6, 1)
    out["bf16"] = {"it_s": round(_time_it(step, device, iters), 3), "peak_gib": _peak(device)}
    if left():
        _reset_peak(device)
        layers = to_svdquant_shells(model, mode="fake")
        out["svdquant_fake"] = {"it_s": round(_time_it(step, device, iters), 3), "peak_gib": _peak(device),
                                "layers": layers}
    if left():
        for m in sq.svdquant_layers(model).values():
            m.mode, m._dequantized = "packed", None
        _reset_peak(device)
        out["svdquant_packed"] = {"it_s": round(_time_it(step, device, iters), 3), "peak_gib": _peak(device),
                                  "stored_gib": round(sq.storage_bytes(model) / 2**30, 3)}
    del model, step
    # torchao int8 needs the 16-bit weights back
    if importlib.util.find_spec("torchao") is None:
        out["torchao_int8_weight_only"] = out["torchao_int8_dynamic"] = {"skipped": "torchao is not installed"}
        return out
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    for key, config in (("torchao_int8_weight_only", Int8WeightOnlyConfig),
                        ("torchao_int8_dynamic", Int8DynamicActivationInt8WeightConfig)):
        if not left():
            out[key] = {"skipped": "time budget"}
            continue
        _reset_peak(device)
        model, step = build()
        try:
            quantize_(model, config())
            out[key] = {"it_s": round(_time_it(step, device, iters), 3), "peak_gib": _peak(device)}
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run here is a result too
            out[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        del model, step
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
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    size = 1024 if not dry else 64
    iters = args.iters or (5 if not dry else 1)
    result: dict[str, Any] = {
        "mode": "dry-run (tiny configs, CPU)" if dry else "real-size configs, random weights",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."), "size": f"{size}x{size}",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if device == "cuda":
        cap = torch.cuda.get_device_capability()
        result["compute_capability"] = f"{cap[0]}.{cap[1]}"
        from atelier_gpu.registry import NUNCHAKU_CAPABILITIES

        result["nunchaku_supported_gpu"] = cap in NUNCHAKU_CAPABILITIES
    for name, cfg, build in (("sdxl_unet", SDXL_TINY if dry else SDXL_UNET, build_sdxl),
                             ("flux_transformer", FLUX_TINY if dry else FLUX_DEV, build_flux)):
        t0 = time.perf_counter()
        try:
            result[name] = bench_denoiser(name, lambda cfg=cfg, build=build: build(cfg, device, dtype, size),
                                          device, iters, budget_s=args.budget_s)
            result[name]["note"] = ("one iteration = one UNet forward at batch 2 (CFG)" if name == "sdxl_unet"
                                    else "one iteration = one transformer forward, 4096 image + 512 text tokens"
                                    if not dry else "one iteration = one forward")
        except Exception as exc:  # noqa: BLE001 - keep what was measured
            result[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        result[name]["seconds"] = round(time.perf_counter() - t0, 1)
        _reset_peak(device)
    try:
        with sq._threads(1 if device == "cpu" else None):
            result["svdquant_one_layer"] = one_layer_decomposition(device, *((3072, 12288) if not dry else (128, 256)))
    except Exception as exc:  # noqa: BLE001
        result["svdquant_one_layer"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    out = Path(args.out) if args.out else GPU_RESULTS
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("cpu", "gpu"))
    parser.add_argument("--dry-run", action="store_true", help="gpu mode on tiny configs, on the CPU")
    parser.add_argument("--out", default=None, help="where the JSON goes (default bench/results.json or "
                                                    "bench/gpu_results.json)")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=150.0, help="time budget per denoiser (gpu mode)")
    parser.add_argument("--skip-worker", action="store_true", help="cpu mode without worker_busy_fraction")
    args = parser.parse_args(argv)
    return run_cpu(args) if args.mode == "cpu" else run_gpu(args)


if __name__ == "__main__":
    raise SystemExit(main())
