"""SVDQuant: 4-bit weights and 4-bit activations, with a 16-bit low-rank branch that absorbs outliers.

For one linear layer ``y = x W^T + b`` (``W`` is ``out x in``), following SVDQuant (Li et al., 2024;
mit-han-lab/deepcompressor, nunchaku), written here from the paper's description:

1. **Smoothing** migrates activation outliers into the weight, per input channel ``j``:
   ``l_j = max|X_j|^a / max|W_:,j|^(1-a)``, ``X' = X / l``, ``W' = W * l`` (so ``X' W'^T = X W^T``).
   The migration strength ``a`` is searched on a small calibration set (``alphas``, default
   ``0, 0.05, ..., 1``) by the layer's W4A4 output error.
2. **Low-rank branch**: the rank-``r`` SVD of ``W'`` (float64), ``L1 = U_r S_r`` (``out x r``),
   ``L2 = V_r^T`` (``r x in``), refitted a few times on ``W' - Q(R)`` while that lowers the error.
3. **Residual** ``R = W' - L1 L2`` is quantised to INT4, symmetric, one scale per group of
   ``group_size`` (64) input channels, values in [-8, 7], stored **two per byte**.
4. At run time the activations ``X'`` are quantised the same way (per token, per group of 64) and
   ``y = X' L2^T L1^T + Q(X') Q(R)^T + b``. The low-rank branch stays in the compute dtype.

A LoRA ``ΔW = s·B A`` needs no re-quantisation: it is concatenated onto the low-rank branch along the
rank dimension (``L2 ← [L2; A·diag(l)]``, ``L1 ← [L1, s·B]``), which equals running it as a separate branch.

This module computes in plain PyTorch: ``mode="packed"`` keeps only the packed weight and unpacks it
on every call (the real memory saving, no fused kernel); ``mode="fake"`` caches the dequantised
weight in the compute dtype (the same numbers, bf16 memory, faster without kernels). Fused 4-bit
kernels are Nunchaku's (see ``atelier_gpu.quant.backends``).

Checkpoints are safetensors: per layer ``<name>.qweight`` (uint8), ``.wscale``, ``.smooth``,
``.lora_down``, ``.lora_up`` and ``.bias``; the metadata names the format, rank, group size and layers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "atelier-svdquant-int4"
FORMAT_VERSION = "1"
DEFAULT_RANK = 32
DEFAULT_GROUP = 64
QMIN, QMAX = -8, 7
ALPHAS = tuple(i / 20 for i in range(21))
_EPS = 1e-8


# ---------------------------------------------------------------- INT4 groups, packing

def quantize_groups(x: torch.Tensor, group_size: int = DEFAULT_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric INT4 per group of ``group_size`` along the last dim: (int8 values in [-8, 7], scales)."""
    if x.shape[-1] % group_size:
        raise ValueError(f"last dimension {x.shape[-1]} is not a multiple of the group size {group_size}")
    g = x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    scale = g.abs().amax(dim=-1, keepdim=True).clamp(min=_EPS) / QMAX
    q = torch.round(g / scale).clamp(QMIN, QMAX).to(torch.int8)
    return q.reshape(x.shape), scale.squeeze(-1)


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, group_size: int = DEFAULT_GROUP,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = dtype or scale.dtype
    g = q.reshape(*q.shape[:-1], q.shape[-1] // group_size, group_size).to(dtype)
    return (g * scale.to(dtype).unsqueeze(-1)).reshape(q.shape)


def fake_quant(x: torch.Tensor, group_size: int = DEFAULT_GROUP) -> torch.Tensor:
    """Quantise to INT4 per group and back (what the 4-bit GEMM sees), in ``x``'s dtype."""
    q, scale = quantize_groups(x, group_size)
    return dequantize_groups(q, scale, group_size, dtype=x.dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """INT4 values (int8 tensor in [-8, 7], even last dim) → uint8, two per byte (low nibble first)."""
    if q.shape[-1] % 2:
        raise ValueError("pack_int4 needs an even last dimension")
    if int(q.min()) < QMIN or int(q.max()) > QMAX:
        raise ValueError("pack_int4: values outside [-8, 7]")
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 → int8 values in [-8, 7], last dim doubled."""
    lo = (packed & 0xF).to(torch.int8)
    hi = (packed >> 4).to(torch.int8)
    lo = torch.where(lo > QMAX, lo - 16, lo)
    hi = torch.where(hi > QMAX, hi - 16, hi)
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


# ---------------------------------------------------------------- one weight

def smoothing_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float,
                      beta: float | None = None) -> torch.Tensor:
    """``l_j = max|X_j|^alpha / max|W_:,j|^beta`` per input channel (``beta`` defaults to ``1 - alpha``)."""
    beta = 1.0 - alpha if beta is None else beta
    w_absmax = weight.abs().amax(dim=0).double().clamp(min=1e-5)
    a_absmax = act_absmax.double().clamp(min=1e-5)
    smooth = a_absmax.pow(alpha) / w_absmax.pow(beta)
    # a scale of 1 at the geometric mean keeps both sides in the same range (the product is unchanged)
    smooth = smooth / smooth.log().mean().exp()
    return smooth.clamp(min=1e-4, max=1e4)


def _svd_rank(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return u[:, :rank] * s[:rank], vh[:rank]


@dataclass
class Decomposition:
    """``W' ≈ L1 L2 + deq(q, scale)``; all float64 except ``q`` (int8 values in [-8, 7])."""

    l1: torch.Tensor
    l2: torch.Tensor
    q: torch.Tensor
    scale: torch.Tensor
    group_size: int
    iterations: int

    @property
    def low_rank(self) -> torch.Tensor:
        return self.l1 @ self.l2

    def residual(self) -> torch.Tensor:
        return dequantize_groups(self.q, self.scale, self.group_size)

    def weight(self) -> torch.Tensor:
        return self.low_rank + self.residual()


def decompose(weight: torch.Tensor, *, rank: int = DEFAULT_RANK, group_size: int = DEFAULT_GROUP,
              refit_iters: int = 4) -> Decomposition:
    """Low-rank branch from the SVD of ``weight`` plus the INT4 residual, refitted while it helps.

    Runs in ``weight``'s dtype when it is float32/float64 (pass float64 for the final decomposition).
    """
    w = weight if weight.dtype in (torch.float32, torch.float64) else weight.double()
    out_f, in_f = w.shape
    if rank < 0 or rank > min(out_f, in_f):
        raise ValueError(f"rank {rank} must be between 0 and {min(out_f, in_f)}")
    if rank == 0:
        q, scale = quantize_groups(w, group_size)
        return Decomposition(w.new_zeros(out_f, 0), w.new_zeros(0, in_f), q, scale, group_size, 0)
    l1, l2 = _svd_rank(w, rank)
    best: Decomposition | None = None
    best_err = math.inf
    for it in range(refit_iters + 1):
        q, scale = quantize_groups(w - l1 @ l2, group_size)
        residual = dequantize_groups(q, scale, group_size)
        err = float(torch.linalg.norm(w - l1 @ l2 - residual))
        if err >= best_err:
            break
        best, best_err = Decomposition(l1, l2, q, scale, group_size, it), err
        l1, l2 = _svd_rank(w - residual, rank)  # refit the branch to what the INT4 residual misses
    assert best is not None
    return best


def w4a4_output(x: torch.Tensor, weight: torch.Tensor, *, smooth: torch.Tensor | None = None, rank: int = 0,
                group_size: int = DEFAULT_GROUP, refit_iters: int = 4) -> torch.Tensor:
    """Reference W4A4 output of ``x W^T`` (in ``x``'s dtype): smoothing if given, low-rank branch if ``rank`` > 0."""
    w = weight.to(x.dtype)
    if smooth is not None:
        x, w = x / smooth.to(x.dtype), w * smooth.to(x.dtype)
    dec = decompose(w, rank=rank, group_size=group_size, refit_iters=refit_iters)
    return x @ dec.low_rank.T + fake_quant(x, group_size) @ dec.residual().T


def search_alpha(x: torch.Tensor, weight: torch.Tensor, act_absmax: torch.Tensor | None = None, *,
                 rank: int = DEFAULT_RANK, group_size: int = DEFAULT_GROUP,
                 alphas: Iterable[float] = ALPHAS) -> tuple[float, dict[float, float]]:
    """The migration strength with the lowest W4A4 output error on the calibration rows ``x``."""
    # float32 is plenty to rank the candidates (the final decomposition runs in float64)
    x = x.reshape(-1, x.shape[-1]).float()
    weight = weight.float()
    act_absmax = x.abs().amax(dim=0) if act_absmax is None else act_absmax.float()
    ref = x @ weight.T
    errors: dict[float, float] = {}
    for a in alphas:
        smooth = smoothing_factors(act_absmax, weight, a)
        out = w4a4_output(x, weight, smooth=smooth, rank=rank, group_size=group_size, refit_iters=0)
        errors[float(a)] = float(torch.linalg.norm(out - ref))
    best = min(errors, key=lambda a: (errors[a], abs(a - 0.5)))
    return best, errors


# ---------------------------------------------------------------- the layer

class SVDQuantLinear(nn.Module):
    """A linear layer as SVDQuant stores it: packed INT4 residual, group scales, smoothing, low-rank branch."""

    def __init__(self, in_features: int, out_features: int, *, rank: int = DEFAULT_RANK,
                 group_size: int = DEFAULT_GROUP, bias: bool = True, dtype: torch.dtype = torch.float32,
                 act_quant: bool = True, mode: str = "packed") -> None:
        super().__init__()
        if in_features % group_size or in_features % 2:
            raise ValueError(f"in_features {in_features} must be a multiple of the group size {group_size}")
        if mode not in ("packed", "fake"):
            raise ValueError("mode must be 'packed' or 'fake'")
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.act_quant, self.mode = group_size, act_quant, mode
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("wscale", torch.ones(out_features, in_features // group_size, dtype=dtype))
        self.register_buffer("smooth", torch.ones(in_features, dtype=dtype))
        self.register_buffer("lora_down", torch.zeros(rank, in_features, dtype=dtype))
        self.register_buffer("lora_up", torch.zeros(out_features, rank, dtype=dtype))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype))
        else:
            self.bias = None
        self._dequantized: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.lora_down.shape[0])

    @classmethod
    def from_decomposition(cls, dec: Decomposition, smooth: torch.Tensor, bias: torch.Tensor | None, *,
                           dtype: torch.dtype, act_quant: bool = True, mode: str = "packed") -> SVDQuantLinear:
        out_f, in_f = dec.q.shape
        layer = cls(in_f, out_f, rank=dec.l1.shape[1], group_size=dec.group_size, bias=bias is not None, dtype=dtype,
                    act_quant=act_quant, mode=mode)
        layer.qweight.copy_(pack_int4(dec.q))
        layer.wscale.copy_(dec.scale.to(dtype))
        layer.smooth.copy_(smooth.to(dtype))
        layer.lora_down.copy_(dec.l2.to(dtype))
        layer.lora_up.copy_(dec.l1.to(dtype))
        if bias is not None:
            layer.bias.copy_(bias.detach().to(dtype))
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, calib_x: torch.Tensor | None = None,
                    act_absmax: torch.Tensor | None = None, rank: int = DEFAULT_RANK,
                    group_size: int = DEFAULT_GROUP, alphas: Iterable[float] = ALPHAS, refit_iters: int = 4,
                    mode: str = "packed", dtype: torch.dtype | None = None) -> tuple[SVDQuantLinear, float]:
        """Quantise ``linear``; the migration strength is searched on ``calib_x`` (alpha 0.5 without one)."""
        weight = linear.weight.detach().double()
        dtype = dtype or linear.weight.dtype
        if calib_x is not None and calib_x.numel():
            alpha, _ = search_alpha(calib_x, weight, act_absmax, rank=rank, group_size=group_size, alphas=alphas)
            absmax = act_absmax if act_absmax is not None else calib_x.reshape(-1, weight.shape[1]).abs().amax(0)
        elif act_absmax is not None:
            alpha, absmax = 0.5, act_absmax
        else:
            alpha, absmax = 0.0, torch.ones(weight.shape[1], dtype=torch.float64)
        smooth = smoothing_factors(absmax, weight, alpha) if alpha > 0 else torch.ones(weight.shape[1],
                                                                                        dtype=torch.float64)
        dec = decompose(weight * smooth, rank=rank, group_size=group_size, refit_iters=refit_iters)
        layer = cls.from_decomposition(dec, smooth, linear.bias, dtype=dtype, mode=mode)
        return layer.to(linear.weight.device), alpha

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The INT4 residual ``Q(R)`` in the smoothed space, as a dense (out, in) tensor."""
        return dequantize_groups(unpack_int4(self.qweight), self.wscale, self.group_size, dtype=dtype or self.wscale.dtype)

    def fold_lora(self, down: torch.Tensor, up: torch.Tensor, scale: float = 1.0) -> None:
        """Add a LoRA ``scale * up @ down`` (``down``: r x in, ``up``: out x r) to the low-rank branch, no re-quantising."""
        if down.shape[1] != self.in_features or up.shape[0] != self.out_features or down.shape[0] != up.shape[1]:
            raise ValueError(f"LoRA shapes {tuple(down.shape)} / {tuple(up.shape)} do not fit a "
                             f"{self.in_features}->{self.out_features} layer")
        dtype = self.lora_down.dtype
        # the branch sees X' = X / l, so the LoRA's down projection takes the smoothing back: A X = (A diag(l)) X'
        self.lora_down = torch.cat([self.lora_down, (down.double() * self.smooth.double()).to(dtype)], dim=0)
        self.lora_up = torch.cat([self.lora_up, (up.double() * scale).to(dtype)], dim=1)

    def storage_bytes(self) -> int:
        """Bytes of what is stored (packed weight, scales, smoothing, branch, bias), without run-time caches."""
        return sum(b.numel() * b.element_size() for name, b in self.named_buffers() if b is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xs = x / self.smooth.to(dtype)
        y = (xs @ self.lora_down.to(dtype).T) @ self.lora_up.to(dtype).T
        if self.mode == "fake":
            if self._dequantized is None or self._dequantized.dtype != dtype or self._dequantized.device != x.device:
                self._dequantized = self.dequantized_weight(dtype).to(x.device)
            w = self._dequantized
        else:
            w = self.dequantized_weight(dtype)
        xq = fake_quant(xs, self.group_size) if self.act_quant else xs
        y = y + xq @ w.T
        if self.bias is not None:
            y = y + self.bias.to(dtype)
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"group_size={self.group_size}, mode={self.mode}")


# ---------------------------------------------------------------- a whole UNet / DiT

@dataclass
class ActStats:
    absmax: torch.Tensor
    rows: torch.Tensor  # a sample of input rows for the alpha search


@dataclass
class QuantReport:
    layers: dict[str, float] = field(default_factory=dict)  # name → chosen alpha
    skipped: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0


_KEEP16_TOP = {"proj_out"}  # a DiT's final output projection (inner attention proj_out layers are quantised)
_KEEP16_PARTS = {"time_embedding", "time_embed", "add_embedding", "time_text_embed", "context_embedder", "x_embedder",
                 "guidance_embedder", "norm_out"}


def quantizable_linears(model: nn.Module, *, rank: int = DEFAULT_RANK, group_size: int = DEFAULT_GROUP,
                        skip: Callable[[str], bool] | None = None) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` layers worth 4 bits: input a multiple of the group size, both sides above the rank.

    Embedders of time / text / pooled projections and the final output projection keep 16 bits, as in
    SVDQuant (they are small and sensitive); ``skip(name)`` can exclude more.
    """
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or isinstance(module, SVDQuantLinear):
            continue
        parts = name.split(".")
        if name in _KEEP16_TOP or any(p in _KEEP16_PARTS or p.startswith("norm") for p in parts):
            continue
        if module.in_features % group_size or min(module.in_features, module.out_features) <= rank:
            continue
        if skip is not None and skip(name):
            continue
        out.append((name, module))
    return out


def collect_activation_stats(model: nn.Module, run: Callable[[], Any], names: Iterable[str], *,
                             max_rows: int = 256, seed: int = 0) -> dict[str, ActStats]:
    """Run ``run()`` with hooks on the named linears: per-channel input absmax and a sample of input rows."""
    wanted = set(names)
    stats: dict[str, ActStats] = {}
    gen = torch.Generator().manual_seed(seed)
    handles = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float().cpu()
            absmax = x.abs().amax(dim=0)
            pick = x[torch.randperm(x.shape[0], generator=gen)[:max_rows]]
            old = stats.get(name)
            if old is None:
                stats[name] = ActStats(absmax, pick)
            else:
                rows = torch.cat([old.rows, pick])
                rows = rows[torch.randperm(rows.shape[0], generator=gen)[:max_rows]]
                stats[name] = ActStats(torch.maximum(old.absmax, absmax), rows)
        return hook

    for name, module in model.named_modules():
        if name in wanted:
            handles.append(module.register_forward_pre_hook(hook_for(name)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return stats


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _bytes(module: nn.Module) -> int:
    own = sum(p.numel() * p.element_size() for p in module.parameters())
    return own + sum(b.numel() * b.element_size() for b in module.buffers())


def quantize_model(model: nn.Module, stats: dict[str, ActStats] | None = None, *, rank: int = DEFAULT_RANK,
                   group_size: int = DEFAULT_GROUP, alphas: Iterable[float] = ALPHAS, refit_iters: int = 4,
                   mode: str = "packed", skip: Callable[[str], bool] | None = None,
                   storage_dtype: torch.dtype | None = None) -> QuantReport:
    """Replace every quantisable linear of ``model`` by an :class:`SVDQuantLinear`, in place."""
    alphas = tuple(alphas)
    report = QuantReport(bytes_before=_bytes(model))
    for name, linear in quantizable_linears(model, rank=rank, group_size=group_size, skip=skip):
        st = (stats or {}).get(name)
        if stats is not None and st is None:
            report.skipped.append(name)  # never ran during calibration (e.g. an unused branch)
            continue
        # small CPU decompositions run far faster on one thread than on contended ones
        small = linear.weight.numel() < 2**20 and linear.weight.device.type == "cpu"
        with torch.no_grad(), _threads(1 if small else None):
            layer, alpha = SVDQuantLinear.from_linear(
                linear, calib_x=st.rows if st else None, act_absmax=st.absmax if st else None, rank=rank,
                group_size=group_size, alphas=alphas, refit_iters=refit_iters, mode=mode,
                dtype=storage_dtype or linear.weight.dtype)
        _set_module(model, name, layer)
        report.layers[name] = alpha
    report.bytes_after = _bytes(model)
    return report


def svdquant_layers(model: nn.Module) -> dict[str, SVDQuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)}


def save_svdquant(model: nn.Module, path: Path | str, *, extra: dict[str, str] | None = None) -> Path:
    """Write the quantised layers of ``model`` (only those) to one safetensors file."""
    from safetensors.torch import save_file  # heavy (safetensors (torch)): loaded on first use

    layers = svdquant_layers(model)
    if not layers:
        raise ValueError("the model has no SVDQuantLinear layers; run quantize_model first")
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        for key, buf in layer.named_buffers():
            if buf is not None:
                tensors[f"{name}.{key}"] = buf.detach().contiguous().cpu()
    first = next(iter(layers.values()))
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "group_size": str(first.group_size),
            "layers": json.dumps(sorted(layers)), **(extra or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_svdquant_metadata(path: Path | str) -> dict[str, str]:
    from safetensors import safe_open  # heavy (safetensors (torch)): loaded on first use

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_svdquant(model: nn.Module, path: Path | str, *, mode: str = "packed", device: str | None = None) -> int:
    """Swap the linears named in the checkpoint for SVDQuant layers and load them; returns how many."""
    from safetensors.torch import load_file  # heavy (safetensors (torch)): loaded on first use

    meta = read_svdquant_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an {FORMAT} checkpoint (format={meta.get('format')!r})")
    tensors = load_file(str(path), device=device or "cpu")
    names = json.loads(meta["layers"])
    group = int(meta["group_size"])
    for name in names:
        try:
            old = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"{path}: layer {name} is not in this model") from exc
        in_f = tensors[f"{name}.qweight"].shape[1] * 2
        out_f = tensors[f"{name}.qweight"].shape[0]
        if isinstance(old, nn.Linear) and (old.in_features, old.out_features) != (in_f, out_f):
            raise ValueError(f"{path}: layer {name} is {in_f}->{out_f} in the checkpoint, "
                             f"{old.in_features}->{old.out_features} in the model")
        dtype = tensors[f"{name}.wscale"].dtype
        layer = SVDQuantLinear(in_f, out_f, rank=tensors[f"{name}.lora_down"].shape[0], group_size=group,
                               bias=f"{name}.bias" in tensors, dtype=dtype, mode=mode)
        for key in ("qweight", "wscale", "smooth", "lora_down", "lora_up", "bias"):
            if f"{name}.{key}" in tensors:
                setattr(layer, key, tensors[f"{name}.{key}"])
        ref = next(iter(old.parameters()), None) if isinstance(old, nn.Module) else None
        _set_module(model, name, layer.to(ref.device) if ref is not None else layer)
    return len(names)


def fold_lora(model: nn.Module, lora: dict[str, torch.Tensor], *, scale: float = 1.0, prefix: str = "") -> int:
    """Apply a LoRA in diffusers/PEFT format (``<module>.lora_A.weight`` / ``.lora_B.weight``, optional ``.alpha``).

    SVDQuant layers get it concatenated onto their low-rank branch (no re-quantisation); plain linears and
    convolutions get ``W += scale * B A`` (``fold_delta``). ``prefix`` (e.g. ``"unet."``) is stripped from the
    keys. Returns the count.
    """
    downs = {k[: -len(".lora_A.weight")]: v for k, v in lora.items() if k.endswith(".lora_A.weight")}
    if not downs:
        raise ValueError("no '<module>.lora_A.weight' keys: not a diffusers/PEFT LoRA state dict")
    for key, down in downs.items():
        up = lora.get(f"{key}.lora_B.weight")
        if up is None:
            raise ValueError(f"LoRA key {key}.lora_B.weight is missing")
        name = key[len(prefix):] if prefix and key.startswith(prefix) else key
        alpha = lora.get(f"{key}.alpha")
        fold_delta(model, name, down, up, scale * (float(alpha) / down.shape[0] if alpha is not None else 1.0))
    return len(downs)


def fold_delta(model: nn.Module, name: str, down: torch.Tensor, up: torch.Tensor, scale: float) -> None:
    """Add ``scale * up @ down`` to module ``name`` of ``model``: onto an SVDQuant layer's low-rank branch, into a
    linear's weight, or into a convolution's kernel (``down``: rank x in x kh x kw, ``up``: out x rank x 1 x 1, as
    kohya's conv LoRAs are)."""
    try:
        module = model.get_submodule(name)
    except AttributeError as exc:
        raise ValueError(f"LoRA module {name} is not in this model") from exc
    if isinstance(module, SVDQuantLinear):
        module.fold_lora(down, up, scale)
        return
    if isinstance(module, nn.Linear):
        delta = up.double() @ down.double()
    elif isinstance(module, nn.Conv2d):
        delta = (up.double().flatten(1) @ down.double().flatten(1)).reshape(up.shape[0], *down.shape[1:])
    else:
        raise ValueError(f"LoRA module {name} is a {type(module).__name__}, not a linear or convolution layer")
    if delta.shape != module.weight.shape:
        raise ValueError(f"LoRA shapes {tuple(down.shape)} / {tuple(up.shape)} do not fit {name} "
                         f"{tuple(module.weight.shape)}")
    with torch.no_grad():
        module.weight += (scale * delta).to(module.weight.dtype).to(module.weight.device)


def storage_bytes(model: nn.Module) -> int:
    """Bytes the model stores: parameters, buffers; SVDQuant layers without their run-time caches."""
    return _bytes(model)


def bf16_bytes(out_features: int, in_features: int, bias: bool = False) -> int:
    return 2 * (out_features * in_features + (out_features if bias else 0))
