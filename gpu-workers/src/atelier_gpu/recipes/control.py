"""Control: one or more ControlNets (canny, depth, pose), averaged the Ctrl-Adapter way.

diffusers' multi-ControlNet **sums** the residuals of its nets, each scaled by its conditioning scale.
Ctrl-Adapter combines conditions by a weighted average (equal weights = a plain mean), so here each
net's scale is ``conditioning_scale * weight_i / sum(weights)``: the weights are normalised to sum 1
and adding a second condition does not double the control strength. Each control also has its own
guidance window, ``start``..``end`` as fractions of the denoising (diffusers'
``control_guidance_start``/``control_guidance_end``).

Control images are given (``Control.image``) or derived (``atelier_gpu.control_images``: canny edges of
an image, depth and pose maps from a layout's boxes) and resized to the output size.

1. ``check_inputs`` says exactly what is wrong.
2. ``normalised_scales`` does the Ctrl-Adapter averaging.
3. ``run_batch`` builds the ControlNet pipeline from the warm base pipeline's components
   (``from_pipe``: no weights copied) and generates one image per seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .common import (
    NEGATIVE_FAMILIES,
    check_common,
    check_prompt,
    fail,
    generators,
    rgb_images,
    sampling_kwargs,
    step_callback,
    text_kwargs,
)

RECIPE = "control"
FAMILIES = ("sdxl", "flux")


@dataclass
class Control:
    """One condition: a loaded ControlNet, its control image, averaging weight and guidance window."""

    controlnet: Any
    image: Image.Image
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    kind: str = "other"


def normalised_scales(weights: list[float], conditioning_scale: float) -> list[float]:
    """Ctrl-Adapter averaging: ``conditioning_scale * w_i / sum(w)`` (the scales sum to ``conditioning_scale``)."""
    total = float(sum(weights))
    if total <= 0:
        raise fail(RECIPE, "controls", f"weights {weights} must have a positive sum")
    return [conditioning_scale * float(w) / total for w in weights]


def check_inputs(pipe: Any, *, family: Any, prompt: Any, controls: Any, width: Any, height: Any, steps: Any,
                 guidance: Any, seeds: Any, conditioning_scale: Any = 1.0, negative_prompt: Any = None,
                 on_step: Any = None) -> None:
    """Raise ``StageError(retryable=False)`` naming the first bad argument."""
    check_common(RECIPE, pipe, family=family, width=width, height=height, steps=steps, guidance=guidance,
                 seeds=seeds, on_step=on_step, families=FAMILIES)
    check_prompt(RECIPE, "prompt", prompt)
    check_prompt(RECIPE, "negative_prompt", negative_prompt, optional=True)
    if not isinstance(controls, list | tuple) or not controls:
        raise fail(RECIPE, "controls", "must be a non-empty list of Control(controlnet, image, weight, start, end)")
    for i, c in enumerate(controls):
        where = f"controls[{i}]"
        if not isinstance(c, Control):
            raise fail(RECIPE, where, f"is a {type(c).__name__}, not a Control")
        if c.controlnet is None:
            raise fail(RECIPE, f"{where}.controlnet", "is missing (load it with ModelRegistry.controlnet)")
        if not isinstance(c.image, Image.Image):
            raise fail(RECIPE, f"{where}.image", "must be a PIL image (given, or derived with control_images.derive)")
        if not isinstance(c.weight, int | float) or c.weight < 0:
            raise fail(RECIPE, f"{where}.weight", f"is {c.weight!r}; it must be a number >= 0")
        if not (0.0 <= c.start < c.end <= 1.0):
            raise fail(RECIPE, f"{where}.start/end", f"are {c.start}/{c.end}; need 0 <= start < end <= 1")
    if sum(c.weight for c in controls) <= 0:
        raise fail(RECIPE, "controls", "the weights sum to 0; give at least one control a positive weight")
    if not isinstance(conditioning_scale, int | float) or isinstance(conditioning_scale, bool) \
            or not 0.0 <= conditioning_scale <= 5.0:
        raise fail(RECIPE, "conditioning_scale", f"is {conditioning_scale!r}; it must be between 0 and 5")


def control_pipeline(pipe: Any, family: str, controlnets: list[Any]) -> Any:
    """The ControlNet pipeline over ``pipe``'s own components (shared, not copied)."""
    if family == "sdxl":
        from diffusers import (  # heavy (diffusers): loaded on first use
            MultiControlNetModel,
            StableDiffusionXLControlNetPipeline,
        )

        return StableDiffusionXLControlNetPipeline.from_pipe(pipe, controlnet=MultiControlNetModel(controlnets))
    from diffusers import FluxControlNetPipeline, FluxMultiControlNetModel  # heavy (diffusers): loaded on first use

    return FluxControlNetPipeline.from_pipe(pipe, controlnet=FluxMultiControlNetModel(controlnets))


def run_batch(pipe: Any, *, family: str, prompt: str, controls: list[Control], width: int, height: int, steps: int,
              guidance: float, seeds: list[int], conditioning_scale: float = 1.0, negative_prompt: str | None = None,
              on_step: Callable[[int, int], None] | None = None, timesteps: list[int] | None = None,
              eta: float | None = None) -> list[Any]:
    """Generate one image per seed under every control at once.

    Args:
        pipe: a loaded SDXL (``family="sdxl"``) or FLUX (``"flux"``) pipeline.
        prompt, negative_prompt: what to draw / avoid (FLUX ignores the negative prompt).
        controls: ControlNets of the same family with their images, weights and guidance windows.
        conditioning_scale: total control strength, split over the controls by their normalised weights.
        width, height, steps, guidance, seeds, on_step, timesteps, eta: as in text-to-image.

    Returns:
        ``len(seeds)`` RGB images of ``width`` x ``height``.
    """
    check_inputs(pipe, family=family, prompt=prompt, controls=controls, width=width, height=height, steps=steps,
                 guidance=guidance, seeds=seeds, conditioning_scale=conditioning_scale,
                 negative_prompt=negative_prompt, on_step=on_step)
    n = len(seeds)
    images = [c.image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR) for c in controls]
    cpipe = control_pipeline(pipe, family, [c.controlnet for c in controls])
    cpipe.set_progress_bar_config(disable=True)
    call: dict[str, Any] = {
        "prompt": [prompt] * n, "width": width, "height": height, "generator": generators(seeds),
        "controlnet_conditioning_scale": normalised_scales([c.weight for c in controls], conditioning_scale),
        "control_guidance_start": [c.start for c in controls], "control_guidance_end": [c.end for c in controls],
        "callback_on_step_end": step_callback(on_step, len(timesteps) if timesteps else steps),
        "callback_on_step_end_tensor_inputs": ["latents"], "output_type": "pil",
        **sampling_kwargs(family, steps=steps, guidance=guidance, timesteps=timesteps, eta=eta),
        **text_kwargs(pipe, family),
    }
    if family == "sdxl":
        call["image"] = images
    else:
        call["control_image"] = images
    if family in NEGATIVE_FAMILIES:
        call["negative_prompt"] = [negative_prompt] * n if negative_prompt else None
    return rgb_images(cpipe(**call))


def run(pipe: Any, *, seed: int, **kwargs: Any) -> Any:
    """One image: ``run_batch`` with ``seeds=[seed]``."""
    return run_batch(pipe, seeds=[seed], **kwargs)[0]
