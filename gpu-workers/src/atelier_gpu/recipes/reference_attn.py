"""Reference-only attention: the weight-free way to make an SDXL image follow a reference image.

This is the technique of ControlNet's ``reference_only`` preprocessor (also diffusers' community
``StableDiffusionXLReferencePipeline``), written here as attention processors and hooks on the warm
pipeline's UNet so that any recipe's pipeline call (text-to-image, the layout recipe) can use it:

1. **Encode** — each reference image (a character sheet) is fitted into the generation size without
   distortion (letterboxed with its own corner colour), encoded by the pipeline's VAE (the latent mean,
   so no randomness) and scaled like the pipeline's latents.
2. **Write** — before every UNet call of the pipeline, a forward pre-hook noises the reference latents to
   the current timestep (``scheduler.add_noise`` with fresh noise from a CPU generator seeded from the
   image's seed, then ``scale_model_input``) and runs them through the UNet with the same conditioning;
   every self-attention (``attn1``) processor stores its input tokens. ControlNet residuals are not
   given to this pass, and it runs with the cross-attention processors that were in place when the
   reference was installed, so a recipe's own per-call processors (the layout recipe's regional
   cross-attention) ground only the image being made, never the reference.
3. **Read** — in the pipeline's own UNet call every self-attention layer attends over its own tokens
   *and* the stored reference tokens (keys/values of ``[x, ref]``), so appearance (faces, hair,
   clothes, colours) flows from the reference into the image while the prompt keeps the composition.

Knobs, as ControlNet names them:

* ``style_fidelity`` (0..1, default 0.5) — with classifier-free guidance the conditional half always reads
  the reference; the unconditional half gets ``style_fidelity·self-only + (1 - style_fidelity)·reference``.
  That is the reference pipeline's choice: at 0 both halves see the reference, so CFG's difference
  keeps the prompt in charge; at 1 the unconditional half never sees it, so CFG amplifies the reference.
  Without CFG the single batch reads the reference and the knob does nothing.
* ``attention_weight`` (``attention_auto_machine_weight``, 0..1, default 1) — self-attention layers are
  ranked by width, widest (deepest, coarsest) first, and layer ``i`` of ``n`` reads the reference only if
  ``attention_weight > i / n``: 1 uses every layer, smaller values keep it to the coarse ones.
* ``adain`` / ``adain_weight`` (``reference_adain``, ``gn_auto_machine_weight``) — optional: every ResNet
  block's output gets the reference's per-channel mean/std (AdaIN), ranked the same way. Off by default:
  it moves *global* colour statistics toward the sheet's (plain) backdrop, which suits style transfer
  more than a character placed in a scene.

**Several references.** With ``regions`` (one box per reference, normalised ``[x1, y1, x2, y2]``, e.g. each
character's layout box) a position inside box ``r`` attends over ``[x, ref_r]`` and a position outside
every box over ``[x]`` alone: ``out = self + Σ_r m_r·(attn([x, ref_r]) - self)``, with the layout
recipe's exclusive box masks (``layout.box_masks``: overlaps go to the front box), pooled to each layer's
grid. So each character reads only its own sheet and the backdrop copies none. Without ``regions`` every
position attends over all references at once (``[x, ref_1, ..., ref_R]``); AdaIN, when on, always uses the
references' mean statistics.

This keeps a character *roughly* consistent (colours, clothes, hair) with no extra weights; real facial
identity needs InstantID's weights (``recipes.identity``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from atelier_contracts.plans import Box
from PIL import Image

from ..attention import RegionalState, installed
from . import text_to_image
from .common import check_common, fail
from .layout import box_masks
from .regional import LATENT_FACTOR

RECIPE = "reference_only"
SEED_OFFSET = 0x9E3779B9  # the reference noise is its own stream, never the image's starting noise
_RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual",
              "down_intrablock_additional_residuals")


@dataclass
class ReferenceState:
    """What the hooks and processors of one installation share (and what a caller may inspect after).

    Args:
        references: the reference images (fitted and encoded on the first UNet call, at its latent size).
        regions: one box per reference, or None (every position reads every reference).
        cfg: the pipeline's batch is ``[uncond, cond]`` (classifier-free guidance on).
        style_fidelity: weight of self-only attention in the unconditional half (see the module doc).
        seed: seeds the CPU generator of the reference noise.
    """

    references: list[Image.Image]
    regions: list[Box] | None
    cfg: bool
    style_fidelity: float
    seed: int
    mode: str = "off"  # "write" during the reference pass, "read" during the pipeline's own UNet call
    writes: int = 0  # reference passes run (one per denoising step)
    bank: dict[str, torch.Tensor] = field(default_factory=dict)  # attn1 name → (R*batch, tokens, C)
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # resnet → mean, var
    latents: torch.Tensor | None = None  # (R, C, h, w) encoded references at the current latent size
    _masks: RegionalState | None = None
    _generator: torch.Generator | None = None

    @property
    def count(self) -> int:
        return len(self.references)

    def noise(self, shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if self._generator is None:
            self._generator = torch.Generator("cpu").manual_seed((self.seed + SEED_OFFSET) % 2**32)
        return torch.randn(shape, generator=self._generator, dtype=torch.float32).to(device=device, dtype=dtype)

    def references_at(self, pipe: Any, sample: torch.Tensor) -> torch.Tensor:
        """The encoded references for a UNet input like ``sample`` (encoded once per latent size)."""
        latents = self.latents
        if latents is None or latents.shape[-2:] != sample.shape[-2:] or latents.dtype != sample.dtype:
            f = pipe.vae_scale_factor
            latents = encode_references(pipe, self.references, sample.shape[-1] * f, sample.shape[-2] * f,
                                        device=sample.device, dtype=sample.dtype)
            self.latents, self._masks = latents, None
        return latents

    def masks_at(self, tokens: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """(R, tokens) weights of each reference's box on a layer's grid, or None without regions."""
        if self.regions is None or self.latents is None:
            return None
        if self._masks is None:  # the layout recipe's box masks and grids, so both ground the same positions
            h, w = self.latents.shape[-2:]
            self._masks = RegionalState(masks=box_masks(self.regions, w * LATENT_FACTOR, h * LATENT_FACTOR))
        return self._masks.masks_at(tokens, device, dtype)

    def blend_uncond(self, with_reference: torch.Tensor, plain: Callable[[slice], torch.Tensor]) -> torch.Tensor:
        """Cond rows keep ``with_reference``; uncond rows mix in ``plain(rows)`` by ``style_fidelity``."""
        rows = with_reference.shape[0]
        if not self.cfg or self.style_fidelity <= 0 or rows % 2:
            return with_reference
        uc = slice(0, rows // 2)
        out = with_reference.clone()
        out[uc] = self.style_fidelity * plain(uc) + (1.0 - self.style_fidelity) * with_reference[uc]
        return out


def fit_reference(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` scaled to fit ``width`` x ``height`` whole, centred, the rest filled with its top-left colour."""
    rgb = image.convert("RGB")
    scale = min(width / rgb.width, height / rgb.height)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    canvas = Image.new("RGB", (width, height), rgb.getpixel((0, 0)))
    canvas.paste(rgb.resize(size, Image.Resampling.LANCZOS), ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas


def encode_references(pipe: Any, references: Sequence[Image.Image], width: int, height: int, *,
                      device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(R, C, height/f, width/f) latents of the fitted references, scaled like the pipeline's latents."""
    vae = pipe.vae
    pixels = torch.cat([pipe.image_processor.preprocess(fit_reference(im, width, height), height=height, width=width)
                        for im in references])
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:  # SDXL's original VAE overflows in float16, as the pipeline knows when it decodes
        vae.to(torch.float32)
    try:
        with torch.no_grad():
            latents = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
    finally:
        if upcast:
            vae.to(torch.float16)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).to(device=device, dtype=dtype)


# ---------------------------------------------------------------- self-attention processor

class ReferenceAttnProcessor:
    """An ``attn1`` processor: stores its tokens in the write pass, attends over ``[x, refs]`` in the read pass.

    Anything else (the layer is ranked out by ``attention_weight``, a mask or a 4-D input, no bank for this
    batch) goes to the layer's own processor, so an inactive layer computes exactly what it did before.
    """

    def __init__(self, state: ReferenceState, name: str, plain: Any, active: bool) -> None:
        self.state = state
        self.name = name
        self.plain = plain
        self.active = active

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        st = self.state
        simple = (encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
                  and attn.spatial_norm is None and attn.group_norm is None)
        if self.active and simple and st.mode == "write":
            st.bank[self.name] = hidden_states.detach()
        bank = st.bank.get(self.name) if self.active and simple and st.mode == "read" else None
        if bank is None or bank.shape[0] != st.count * hidden_states.shape[0]:
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return self._read(attn, hidden_states, bank)

    def _read(self, attn: Any, x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        st = self.state
        batch, tokens, channels = x.shape
        refs = bank.reshape(st.count, batch, -1, channels)
        ref_tokens = refs.shape[2]
        context = torch.cat([x, *refs.unbind(0)], dim=1)  # (batch, tokens + R * ref_tokens, C)
        heads = attn.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)

        q, k, v = split(attn.to_q(x)), split(attn.to_k(context)), split(attn.to_v(context))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        def attend(rows: slice, keep: list[slice]) -> torch.Tensor:
            kk = torch.cat([k[rows, :, s] for s in keep], dim=2)
            vv = torch.cat([v[rows, :, s] for s in keep], dim=2)
            return F.scaled_dot_product_attention(q[rows], kk, vv, dropout_p=0.0, is_causal=False, scale=attn.scale)

        own = slice(0, tokens)
        every = slice(0, batch)
        masks = st.masks_at(tokens, x.device, q.dtype)
        if masks is None:  # every position reads every reference
            out = attend(every, [slice(0, context.shape[1])])
        else:  # each reference only inside its box
            base = attend(every, [own])
            out = base
            for r in range(st.count):
                ref = slice(tokens + r * ref_tokens, tokens + (r + 1) * ref_tokens)
                out = out + masks[r][None, None, :, None] * (attend(every, [own, ref]) - base)
        out = st.blend_uncond(out, lambda rows: attend(rows, [own]))
        out = out.transpose(1, 2).reshape(batch, tokens, -1).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + x
        return out / attn.rescale_output_factor


def _ranked(names: list[str], width: Callable[[str], int], weight: float) -> set[str]:
    """The names active at ``weight``: ranked widest first (stable), name ``i`` of ``n`` active if ``weight > i/n``."""
    order = sorted(names, key=lambda n: -width(n))
    return {n for i, n in enumerate(order) if weight > i / len(order)}


# ---------------------------------------------------------------- installing it

def _repeat(value: Any, times: int, batch: int) -> Any:
    """``value`` with every batch-sized tensor in it repeated ``times`` (reference-major), for the write pass."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value] * times) if value.ndim and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: _repeat(v, times, batch) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_repeat(v, times, batch) for v in value)
    return value


@contextmanager
def reference_attention(pipe: Any, references: Sequence[Image.Image], *, cfg: bool, seed: int,
                        regions: Sequence[Box | Sequence[float]] | None = None, style_fidelity: float = 0.5,
                        attention_weight: float = 1.0, adain: bool = False, adain_weight: float = 1.0
                        ) -> Iterator[ReferenceState]:
    """Make every UNet call of ``pipe`` inside the block follow ``references`` (reference-only attention).

    Installs a :class:`ReferenceAttnProcessor` on each self-attention (``attn1``) layer through
    ``unet.set_attn_processor`` (every other processor stays the object it was), a forward pre-hook on
    the UNet that runs the write pass, and AdaIN hooks when ``adain``; all are removed and the original
    processors set back on the way out, whatever happens inside (a cancelled job's exception included).
    The caller holds the registry's ``call_lock``: the warm pipeline is shared between threads.

    Args:
        pipe: an SDXL pipeline (``unet``, ``vae``, ``scheduler``, ``image_processor``).
        references: one image per reference (character sheets).
        cfg: whether the calls inside use classifier-free guidance (batch ``[uncond, cond]``).
        seed: seeds the reference noise (same seed and inputs → same image).
        regions: one box per reference (``Box`` or normalised ``[x1, y1, x2, y2]``), or None.
        style_fidelity, attention_weight, adain, adain_weight: see the module doc.

    Yields:
        the :class:`ReferenceState` (``writes`` counts the reference passes that ran).
    """
    check_inputs(pipe, references=references, regions=regions, style_fidelity=style_fidelity,
                 attention_weight=attention_weight, adain_weight=adain_weight)
    unet = pipe.unet
    boxes = None if regions is None else [
        b if isinstance(b, Box) else Box(bbox=tuple(float(c) for c in b), role="character") for b in regions]
    state = ReferenceState(references=list(references), regions=boxes, cfg=bool(cfg),
                           style_fidelity=float(style_fidelity), seed=int(seed))
    original = dict(unet.attn_processors)
    self_names = [n for n in original if n.endswith("attn1.processor")]

    def module_of(name: str) -> Any:
        return unet.get_submodule(name.removesuffix(".processor"))

    active = _ranked(self_names, lambda n: module_of(n).to_q.in_features, attention_weight)
    processors = {n: ReferenceAttnProcessor(state, n, original[n], n in active) for n in self_names}
    # the write pass uses the cross-attention processors of this moment, not a recipe's per-call ones
    cross = [(module_of(n), p) for n, p in original.items() if n not in processors]

    def write_pass(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if state.mode == "write":  # the write pass's own UNet call
            return None
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        batch = sample.shape[0]
        latents = state.references_at(pipe, sample)
        t = timestep if isinstance(timestep, torch.Tensor) else torch.tensor(timestep)
        noisy = pipe.scheduler.add_noise(latents, state.noise(latents.shape, latents.device, latents.dtype),
                                         t.reshape(1).to(latents.device))
        noisy = pipe.scheduler.scale_model_input(noisy, timestep).repeat_interleave(batch, dim=0)
        rest = {k: _repeat(v, state.count, batch) for k, v in kwargs.items()
                if k not in ("sample", "timestep", "return_dict", *_RESIDUALS)}
        current = [m.processor for m, _ in cross]
        swapped = any(c is not p for c, (_, p) in zip(current, cross, strict=True))
        if swapped:
            for m, p in cross:
                m.set_processor(p)
        state.mode = "write"
        try:
            with torch.no_grad():
                module(noisy, timestep, *_repeat(args[2:], state.count, batch), return_dict=False, **rest)
        finally:
            state.mode = "read"
            if swapped:
                for (m, _), c in zip(cross, current, strict=True):
                    m.set_processor(c)
        state.writes += 1
        return None

    handles = [unet.register_forward_pre_hook(write_pass, with_kwargs=True)]
    if adain:
        handles += _adain_hooks(unet, state, adain_weight)
    try:
        with installed(unet, processors):
            yield state
    finally:
        for h in handles:
            h.remove()
        state.mode = "off"
        state.bank.clear()
        state.stats.clear()
        state.latents = None


def _adain_hooks(unet: Any, state: ReferenceState, weight: float) -> list[Any]:
    """Forward hooks on the UNet's ResNet blocks: record output stats (write), match them (read)."""
    from diffusers.models.resnet import ResnetBlock2D  # heavy (diffusers): loaded on first use

    resnets = {n: m for n, m in unet.named_modules() if isinstance(m, ResnetBlock2D)}
    active = _ranked(list(resnets), lambda n: int(resnets[n].out_channels), weight)
    eps = 1e-6

    def hook_for(name: str) -> Callable[..., Any]:
        def hook(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            if state.mode == "write":
                var, mean = torch.var_mean(output, dim=(2, 3), keepdim=True, correction=0)
                state.stats[name] = (mean, var)
                return None
            stats = state.stats.get(name) if state.mode == "read" else None
            if stats is None or stats[0].shape[0] != state.count * output.shape[0]:
                return None
            batch = output.shape[0]
            ref_mean = stats[0].view(state.count, batch, *stats[0].shape[1:]).mean(0)
            ref_std = (stats[1].view(state.count, batch, *stats[1].shape[1:]).mean(0) + eps).sqrt()
            var, mean = torch.var_mean(output, dim=(2, 3), keepdim=True, correction=0)
            matched = (output - mean) / (var + eps).sqrt() * ref_std + ref_mean
            return state.blend_uncond(matched, lambda rows: output[rows])

        return hook

    return [resnets[n].register_forward_hook(hook_for(n)) for n in resnets if n in active]


# ---------------------------------------------------------------- checks and a one-call recipe

def check_inputs(pipe: Any, *, references: Any, regions: Any = None, style_fidelity: Any = 0.5,
                 attention_weight: Any = 1.0, adain_weight: Any = 1.0) -> None:
    """Raise ``StageError(retryable=False)`` naming the first bad argument."""
    for name in ("unet", "vae", "scheduler", "image_processor"):
        if getattr(pipe, name, None) is None:
            raise fail(RECIPE, "pipe", f"is a {type(pipe).__name__} without `{name}`; reference-only attention "
                                       "needs an SDXL (UNet) pipeline")
    if not isinstance(references, list | tuple) or not references:
        raise fail(RECIPE, "references", "must be a non-empty list of images")
    for i, im in enumerate(references):
        if not isinstance(im, Image.Image):
            raise fail(RECIPE, f"references[{i}]", f"must be a PIL image, got {type(im).__name__}")
    if regions is not None:
        if not isinstance(regions, list | tuple) or len(regions) != len(references):
            raise fail(RECIPE, "regions", f"must give one box per reference ({len(references)}), or be None")
        for i, b in enumerate(regions):
            bbox = b.bbox if isinstance(b, Box) else b
            ok = isinstance(bbox, list | tuple) and len(bbox) == 4 and all(
                isinstance(c, int | float) and math.isfinite(c) for c in bbox)
            if not ok or not (0 <= bbox[0] < bbox[2] <= 1 and 0 <= bbox[1] < bbox[3] <= 1):
                raise fail(RECIPE, f"regions[{i}]", f"is {b!r}; expected [x1, y1, x2, y2] with 0<=x1<x2<=1, 0<=y1<y2<=1")
    for name, value in (("style_fidelity", style_fidelity), ("attention_weight", attention_weight),
                        ("adain_weight", adain_weight)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise fail(RECIPE, name, f"is {value!r}; it must be a number between 0 and 1")


def run(pipe: Any, *, references: Sequence[Image.Image], prompt: str, negative_prompt: str | None = "", width: int,
        height: int, steps: int, guidance: float, seed: int, regions: Sequence[Any] | None = None,
        on_step: Callable[[int, int], None] | None = None, timesteps: list[int] | None = None,
        eta: float | None = None, **knobs: Any) -> Any:
    """SDXL text-to-image that follows ``references`` (one RGB image); ``knobs`` go to :func:`reference_attention`."""
    check_common(RECIPE, pipe, family="sdxl", width=width, height=height, steps=steps, guidance=guidance,
                 seeds=[seed], on_step=on_step, families=("sdxl",))
    cfg = guidance > 1.0 and pipe.unet.config.time_cond_proj_dim is None
    with reference_attention(pipe, references, cfg=cfg, seed=seed, regions=regions, **knobs):
        return text_to_image.run(pipe, family="sdxl", prompt=prompt, negative_prompt=negative_prompt, width=width,
                                 height=height, steps=steps, guidance=guidance, seed=seed, on_step=on_step,
                                 timesteps=timesteps, eta=eta)
