"""SVDQuant a whole pipeline's denoiser: calibrate on a few prompts, quantise, write the checkpoint.

    python -m atelier_gpu.quant.pipeline --models-file models/models.yaml --model sdxl \\
        --out models/sdxl/svdquant/unet.safetensors [--rank 32] [--group 64] [--size 512] [--steps 8]

Then point a models.yaml entry at it (``quantization: svdquant-int4``, ``svdquant: <file>``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..registry import ModelRegistry
from .svdquant import (
    ALPHAS,
    DEFAULT_GROUP,
    DEFAULT_RANK,
    QuantReport,
    collect_activation_stats,
    quantizable_linears,
    quantize_model,
    save_svdquant,
)

# a small calibration set in the spirit of SVDQuant's (it uses 64 COCO/MJHQ prompts): varied subjects and styles
CALIBRATION_PROMPTS = (
    "a photo of a glass bottle of cold brew coffee on a marble kitchen table, soft morning light",
    "an illustration of a girl flying a kite over a village at sunset, kids style",
    "a studio product shot of a red sneaker on a clean white background",
    "a watercolor painting of a market street with flowers and fruit stalls",
    "a cinematic night city scene with neon lights and rain on the street",
    "a minimal modern living room with a wooden chair and a green plant",
)
DENOISER = {"sdxl": "unet", "flux": "transformer", "sd3": "transformer", "pixart": "transformer"}


def quantize_pipeline(pipe: Any, *, family: str, out: Path | str | None = None,
                      prompts: Sequence[str] = CALIBRATION_PROMPTS, width: int = 512, height: int = 512,
                      steps: int = 4, guidance: float | None = None, rank: int = DEFAULT_RANK,
                      group_size: int = DEFAULT_GROUP, alphas: Iterable[float] = ALPHAS, max_rows: int = 256,
                      mode: str = "packed", refit_iters: int = 4) -> QuantReport:
    """Calibrate the denoiser of ``pipe`` on ``prompts``, replace its linears in place, save to ``out``."""
    denoiser = getattr(pipe, DENOISER[family])
    names = [n for n, _ in quantizable_linears(denoiser, rank=rank, group_size=group_size)]
    if not names:
        raise ValueError(f"no linear layer of the {family} denoiser fits rank {rank} and group {group_size}")

    def run() -> None:
        for i, prompt in enumerate(prompts):
            kwargs: dict[str, Any] = {"prompt": prompt, "width": width, "height": height, "num_inference_steps": steps,
                                      "generator": torch.Generator("cpu").manual_seed(i), "output_type": "latent"}
            if guidance is not None:
                kwargs["guidance_scale"] = guidance
            pipe(**kwargs)

    stats = collect_activation_stats(denoiser, run, names, max_rows=max_rows)
    report = quantize_model(denoiser, stats, rank=rank, group_size=group_size, alphas=alphas, mode=mode,
                            refit_iters=refit_iters)
    if out is not None:
        save_svdquant(denoiser, out, extra={"family": family, "rank": str(rank),
                                            "calibration_prompts": str(len(prompts))})
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SVDQuant the denoiser of a models.yaml entry")
    parser.add_argument("--models-file", type=Path, required=True)
    parser.add_argument("--model", required=True, help="id of the 16-bit model in models.yaml")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK)
    parser.add_argument("--group", type=int, default=DEFAULT_GROUP)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    reg = ModelRegistry(args.models_file, device=args.device)
    spec = reg.spec(args.model)
    report = quantize_pipeline(reg.load(args.model), family=spec.family, out=args.out, width=args.size,
                               height=args.size, steps=args.steps or spec.steps, guidance=spec.guidance,
                               rank=args.rank, group_size=args.group)
    print(f"{args.out}: {len(report.layers)} layers quantised, {len(report.skipped)} skipped, "
          f"denoiser {report.bytes_before / 2**20:.1f} MiB -> {report.bytes_after / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
