"""The few things every recipe does the same way: input checks, seeds, step callbacks, sampling arguments.

Recipes stay flat files that read top to bottom; this module only holds what would otherwise be
copied five times.

* **Seeds** — one CPU ``torch.Generator`` per image (``generator=[...]``), so image ``i`` of a batch
  starts from the same noise as a batch of one with seed ``seeds[i]``: any image reproduces alone
  (pixels equal up to float rounding between batch sizes, at most 1/255 here).
* **Steps** — ``on_step(step, total)`` after every denoising step; whatever it raises stops the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from atelier_contracts.errors import StageError

FAMILIES = ("sdxl", "flux", "sd3", "pixart")
NEGATIVE_FAMILIES = ("sdxl", "sd3", "pixart")  # FLUX.1 is guidance-distilled: no negative branch
DENOISER = {"sdxl": "unet", "flux": "transformer", "sd3": "transformer", "pixart": "transformer"}
MIN_SIDE = 32
MAX_SIDE = 4096
MAX_STEPS = 200
MAX_SEED = 2**32 - 1
MAX_BATCH = 64


def fail(recipe: str, argument: str, detail: str) -> StageError:
    return StageError(f"{recipe}: `{argument}` {detail}", retryable=False, field=argument)


def check_common(recipe: str, pipe: Any, *, family: Any, width: Any, height: Any, steps: Any, guidance: Any,
                 seeds: Any, on_step: Any = None, multiple: int = 16, families: Sequence[str] = FAMILIES) -> None:
    """Checks shared by every recipe; raise ``StageError(retryable=False)`` naming the first bad argument."""
    if family not in families:
        raise fail(recipe, "family", f"is {family!r}; expected one of {', '.join(families)}")
    denoiser = DENOISER[family]
    if getattr(pipe, denoiser, None) is None:
        raise fail(recipe, "pipe", f"is a {type(pipe).__name__} without a `{denoiser}`; it is not a {family} pipeline")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(recipe, name, f"must be an integer, got {value!r}")
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise fail(recipe, name, f"is {value}; it must be between {MIN_SIDE} and {MAX_SIDE}")
        if value % multiple:
            raise fail(recipe, name, f"is {value}; it must be a multiple of {multiple} (use generation_size())")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        raise fail(recipe, "steps", f"is {steps!r}; it must be an integer between 1 and {MAX_STEPS}")
    if not isinstance(guidance, int | float) or isinstance(guidance, bool) or not 0.0 <= guidance <= 50.0:
        raise fail(recipe, "guidance", f"is {guidance!r}; it must be a number between 0 and 50")
    if not isinstance(seeds, list | tuple) or not 1 <= len(seeds) <= MAX_BATCH:
        raise fail(recipe, "seeds", f"must be a list of 1 to {MAX_BATCH} seeds, got {seeds!r}")
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= MAX_SEED:
            raise fail(recipe, "seed", f"is {s!r}; it must be an integer between 0 and 2**32-1")
    if on_step is not None and not callable(on_step):
        raise fail(recipe, "on_step", "must be callable as on_step(step, total) or None")


def check_prompt(recipe: str, name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise fail(recipe, name, "must be a non-empty string" if not optional else "must be a string or None")


def generators(seeds: Sequence[int]) -> list[Any]:
    """One CPU generator per image: the same starting noise on every device and at every batch size."""
    import torch  # heavy (torch): loaded on first use

    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def step_callback(on_step: Callable[[int, int], None] | None, steps: int,
                  after_step: Callable[[int], None] | None = None) -> Callable[..., dict[str, Any]]:
    """A ``callback_on_step_end`` reporting ``(step, total)`` from 1; ``after_step(step)`` runs first."""

    def on_step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if after_step is not None:
            after_step(step + 1)
        if on_step is not None:
            total = getattr(pipeline, "num_timesteps", None) or steps
            on_step(step + 1, total)
        return {}

    return on_step_end


def sampling_kwargs(family: str, *, steps: int, guidance: float, timesteps: Sequence[int] | None = None,
                    eta: float | None = None) -> dict[str, Any]:
    """``num_inference_steps``/``timesteps``, guidance and ``eta`` as each pipeline family names them."""
    out: dict[str, Any] = {"guidance_scale": float(guidance)}
    if timesteps:
        out["timesteps"] = list(timesteps)
    else:
        out["num_inference_steps"] = steps
    if eta is not None and family == "sdxl":
        out["eta"] = float(eta)
    if family == "pixart":
        out["use_resolution_binning"] = False  # the recipe already picked the size
    return out


def text_kwargs(pipe: Any, family: str) -> dict[str, Any]:
    """Text-length arguments that fit the pipeline's own tokenizers."""
    if family == "pixart":
        return {"max_sequence_length": min(300, int(pipe.tokenizer.model_max_length))}
    if family == "sd3":
        return {"max_sequence_length": min(256, int(pipe.tokenizer_3.model_max_length))}
    if family == "flux":
        return {"max_sequence_length": min(512, int(pipe.tokenizer_2.model_max_length))}
    return {}


def rgb_images(output: Any) -> list[Any]:
    return [im if im.mode == "RGB" else im.convert("RGB") for im in output.images]
