"""Regional attention: each region's prompt acts inside its mask, blended with the base prompt.

Used by the regional (RPG) and layout (CreatiLayout plans) recipes. One rule for both backbones,
for an image feature at a position covered by region ``r`` with weight ``m_r``::

    out = attn(base) + (1 - base_ratio) * sum_r m_r * (attn(region r) - attn(base))

so a fully covered position gets ``(1 - base_ratio)·regional + base_ratio·base`` (RPG's complementary
regional diffusion) and an uncovered one gets the base prompt alone.

* **SDXL** — :class:`SDXLRegionalProcessor` replaces the cross-attention (``attn2``) processors of the
  UNet. The base context is what the pipeline passes; each region's context is its own 77-token CLIP
  encoding. Masks are resized to every layer's grid. Only the conditional half of a CFG batch is
  regional; the unconditional half keeps the negative prompt, as in RPG.
* **FLUX** — :class:`FluxRegionalProcessor` replaces every joint-attention processor of the
  transformer. The text sequence is ``[base tokens, region 1 tokens, ...]`` and attention masks keep
  each region's tokens and its image tokens to each other (Regional-Prompting-FLUX): an image token
  in region ``r`` sees all image tokens and region ``r``'s text; base text sees everything but the
  regions. A second pass with the base-only mask gives the base branch, blended by ``base_ratio``.

``RegionalState.active`` switches the regional rule off (base prompt only) — the layout recipe does
that after its grounding fraction of steps. :func:`installed` puts processors in and always restores
the pipeline's own afterwards, so a warm pipeline is never left modified.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class RegionalState:
    """What the processors of one pipeline call share.

    Args:
        masks: (R, H, W) float weights in [0, 1] on the latent grid; at each position they sum to <= 1.
        base_ratio: weight of the base prompt inside regions (RPG's ``base_ratio``).
        contexts: SDXL only, (R, tokens, dim) region encodings.
        cfg: SDXL only, the batch is [uncond, cond] (classifier-free guidance on).
        text_tokens: FLUX only, tokens per text chunk (base and every region).
        active: regional rule on (True) or base prompt only (False).
    """

    masks: torch.Tensor
    base_ratio: float = 0.3
    contexts: torch.Tensor | None = None
    cfg: bool = False
    text_tokens: int = 0
    active: bool = True
    _cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def regions(self) -> int:
        return int(self.masks.shape[0])

    def masks_at(self, tokens: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(R, tokens) masks for a layer whose grid has ``tokens`` positions (found by halving the latent grid)."""
        key = ("grid", tokens, device, dtype)
        if key not in self._cache:
            _, h, w = self.masks.shape
            for k in range(8):
                gh, gw = math.ceil(h / 2**k), math.ceil(w / 2**k)
                if gh * gw == tokens:
                    break
            else:
                raise ValueError(f"no downsampling of the {h}x{w} latent grid has {tokens} positions")
            grid = F.adaptive_avg_pool2d(self.masks[None].float(), (gh, gw))[0] if (gh, gw) != (h, w) \
                else self.masks.float()
            self._cache[key] = grid.reshape(self.regions, -1).to(device=device, dtype=dtype)
        return self._cache[key]


# ---------------------------------------------------------------- SDXL (UNet cross-attention)

class SDXLRegionalProcessor:
    """Cross-attention with per-region contexts blended by masks (replaces ``attn2`` processors).

    With ``ip`` (the IP-Adapter processor ``load_ip_adapter`` installed on the layer: its ``to_k_ip``/``to_v_ip``
    and scales) the layer also reads the image-prompt tokens the UNet passes beside the text (InstantID's face
    tokens), as diffusers' ``IPAdapterAttnProcessor2_0`` does, and ``faces`` (a state whose masks are one per
    image of the adapter) keeps each image's tokens inside its own mask: each character's face only in their box.
    """

    def __init__(self, state: RegionalState, *, ip: Any = None, faces: RegionalState | None = None) -> None:
        self.state, self.ip, self.faces = state, ip, faces

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is None:
            raise ValueError("SDXLRegionalProcessor is for cross-attention layers only")
        ip_states = None
        if isinstance(encoder_hidden_states, tuple):  # the UNet's (text, [image tokens per adapter])
            encoder_hidden_states, ip_states = encoder_hidden_states
        batch, tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        heads = attn.heads
        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // heads
        q = query.view(batch, -1, heads, head_dim).transpose(1, 2)

        def attend(q_: torch.Tensor, ctx: torch.Tensor, to_k: Any = attn.to_k, to_v: Any = attn.to_v,
                   norm: bool = True) -> torch.Tensor:
            if norm and attn.norm_cross:
                ctx = attn.norm_encoder_hidden_states(ctx)
            k = to_k(ctx).view(ctx.shape[0], -1, heads, head_dim).transpose(1, 2)
            v = to_v(ctx).view(ctx.shape[0], -1, heads, head_dim).transpose(1, 2)
            out = F.scaled_dot_product_attention(q_, k, v, dropout_p=0.0, is_causal=False)
            return out.transpose(1, 2).reshape(q_.shape[0], -1, heads * head_dim)

        out = attend(q, encoder_hidden_states)
        st = self.state
        if st.active and st.contexts is not None and st.regions:
            cond = slice(batch // 2, batch) if st.cfg else slice(0, batch)
            qc = q[cond]
            n = qc.shape[0]
            masks = st.masks_at(tokens, out.device, out.dtype)  # (R, tokens)
            base = out[cond]
            delta = torch.zeros_like(base)
            for r in range(st.regions):
                ctx = st.contexts[r: r + 1].to(device=out.device, dtype=encoder_hidden_states.dtype)
                delta = delta + masks[r][None, :, None] * (attend(qc, ctx.expand(n, -1, -1)) - base)
            out = out.clone()
            out[cond] = base + (1.0 - st.base_ratio) * delta
        if self.ip is not None and ip_states is not None:
            out = out + self._image_tokens(q, ip_states, tokens, attend, out)
        out = out.to(query.dtype)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)

    def _image_tokens(self, q: torch.Tensor, ip_states: list[torch.Tensor], tokens: int, attend: Any,
                      like: torch.Tensor) -> torch.Tensor:
        """The IP-Adapter term: each adapter's images attended with its own projections, scaled, and each image
        kept inside its mask (``faces``) when there is one."""
        extra = torch.zeros_like(like)
        masks = self.faces.masks_at(tokens, like.device, like.dtype) if self.faces is not None else None
        for states, scale, to_k, to_v in zip(ip_states, self.ip.scale, self.ip.to_k_ip, self.ip.to_v_ip,
                                             strict=False):
            if states.ndim == 3:  # (batch, tokens, dim): one image
                states = states[:, None]
            scales = scale if isinstance(scale, list) else [scale] * states.shape[1]
            for i in range(states.shape[1]):
                if scales[i] == 0:
                    continue
                term = attend(q, states[:, i], to_k, to_v, norm=False)
                if masks is not None and i < masks.shape[0]:
                    term = term * masks[i][None, :, None]
                extra = extra + scales[i] * term
        return extra


def sdxl_cross_attention_names(unet: Any) -> list[str]:
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


# ---------------------------------------------------------------- FLUX (joint attention masks)

def flux_token_masks(masks: torch.Tensor, height_tokens: int, width_tokens: int) -> torch.Tensor:
    """(R, H, W) latent-grid weights → (R, tokens) hard membership of FLUX's 2x2-packed image tokens.

    A token belongs to the region with the largest weight there, if that weight is at least 0.5.
    """
    grid = F.adaptive_avg_pool2d(masks[None].float(), (height_tokens, width_tokens))[0]
    flat = grid.reshape(grid.shape[0], -1)
    best, which = flat.max(dim=0)
    member = torch.zeros_like(flat, dtype=torch.bool)
    covered = best >= 0.5
    member[which[covered], torch.nonzero(covered).squeeze(1)] = True
    return member


def flux_attention_masks(member: torch.Tensor, text_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (S, S) masks over ``[base text, region texts..., image]`` for the regional and the base pass."""
    regions, image_tokens = member.shape
    t_total = text_tokens * (regions + 1)
    size = t_total + image_tokens
    img = slice(t_total, size)
    base_txt = slice(0, text_tokens)

    def txt(r: int) -> slice:
        return slice(text_tokens * (r + 1), text_tokens * (r + 2))

    base = torch.zeros(size, size, dtype=torch.bool)
    base[base_txt, base_txt] = True
    base[base_txt, img] = True
    base[img, img] = True
    base[img, base_txt] = True
    for r in range(regions):
        base[txt(r), txt(r)] = True  # region text only sees itself: no influence on the image
    regional = base.clone()
    covered = member.any(dim=0)
    img_idx = torch.arange(t_total, size)
    regional[img_idx[covered], base_txt] = False  # a covered image token reads its region, not the base
    for r in range(regions):
        rows = img_idx[member[r]]
        regional[rows, txt(r)] = True
        regional[txt(r), rows] = True
    return regional, base


class FluxRegionalProcessor:
    """FLUX joint attention with region masks; the base branch blended by ``base_ratio``."""

    def __init__(self, state: RegionalState, image_tokens: tuple[int, int]) -> None:
        self.state = state
        self.image_tokens = image_tokens

    def _masks(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = ("flux", device)
        st = self.state
        if key not in st._cache:
            member = flux_token_masks(st.masks, *self.image_tokens)
            regional, base = flux_attention_masks(member, st.text_tokens)
            covered = member.any(dim=0)
            st._cache[key] = (regional.to(device), base.to(device), covered.to(device))
        return st._cache[key]

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb: Any = None) -> Any:
        from diffusers.models.embeddings import apply_rotary_emb  # heavy (diffusers): loaded on first use
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, enc_q, enc_k, enc_v = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            enc_q = attn.norm_added_q(enc_q.unflatten(-1, (-1, attn.head_dim)))
            enc_k = attn.norm_added_k(enc_k.unflatten(-1, (-1, attn.head_dim)))
            enc_v = enc_v.unflatten(-1, (-1, attn.head_dim))
            query, key, value = (torch.cat([enc_q, query], 1), torch.cat([enc_k, key], 1),
                                 torch.cat([enc_v, value], 1))
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, heads, S, D)
        regional, base_mask, covered = self._masks(q.device)
        if q.shape[2] != regional.shape[0]:
            raise ValueError(f"FLUX regional attention: sequence of {q.shape[2]} tokens, masks for "
                             f"{regional.shape[0]}; were the regional prompt embeddings passed?")
        st = self.state
        base_out = F.scaled_dot_product_attention(q, k, v, attn_mask=base_mask)
        if st.active:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=regional)
            if st.base_ratio > 0:
                t_total = regional.shape[0] - covered.shape[0]
                img_rows = torch.nonzero(covered).squeeze(1) + t_total
                out[:, :, img_rows] = ((1 - st.base_ratio) * out[:, :, img_rows]
                                       + st.base_ratio * base_out[:, :, img_rows])
        else:
            out = base_out
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            enc_out, img_out = out.split_with_sizes([encoder_hidden_states.shape[1],
                                                     out.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            img_out = attn.to_out[1](attn.to_out[0](img_out.contiguous()))
            return img_out, attn.to_add_out(enc_out.contiguous())
        return out


# ---------------------------------------------------------------- install / restore

@contextmanager
def installed(model: Any, processors: dict[str, Any]) -> Iterator[None]:
    """Set ``processors`` (name → processor) on ``model`` for the duration; restore the originals after."""
    original = dict(model.attn_processors)
    merged = {**original, **processors}
    model.set_attn_processor(merged)
    try:
        yield
    finally:
        model.set_attn_processor(original)


def sdxl_processors(unet: Any, state: RegionalState) -> dict[str, Any]:
    proc = SDXLRegionalProcessor(state)
    return dict.fromkeys(sdxl_cross_attention_names(unet), proc)


def flux_processors(transformer: Any, state: RegionalState, image_tokens: tuple[int, int]) -> dict[str, Any]:
    proc = FluxRegionalProcessor(state, image_tokens)
    return dict.fromkeys(transformer.attn_processors, proc)
