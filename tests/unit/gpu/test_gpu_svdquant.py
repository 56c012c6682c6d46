"""SVDQuant on a weight with outlier channels: the error and memory bounds it must meet (margins measured in METHODS.md)."""

from __future__ import annotations

import pytest
import torch
from atelier_gpu.quant import svdquant as sq
from torch import nn

SEEDS = range(4)


@pytest.fixture(autouse=True)
def one_thread():
    """Small float64 SVDs run several times faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def outlier_case(seed: int, out_f: int = 512, in_f: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """4 outlier weight rows x20 and 4 outlier activation channels x40 (the METHODS.md setup)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g, dtype=torch.float64) * 0.02
    w[torch.randperm(out_f, generator=g)[:4]] *= 20
    x = torch.randn(128, in_f, generator=g, dtype=torch.float64)
    x[:, torch.randperm(in_f, generator=g)[:4]] *= 40
    return w, x


def _err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.norm(y - ref))


def test_pack_unpack_round_trip_two_values_per_byte():
    q = torch.randint(-8, 8, (6, 128), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    packed = sq.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (6, 64)
    assert torch.equal(sq.unpack_int4(packed), q)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        sq.pack_int4(torch.full((2, 2), 8, dtype=torch.int8))


def test_int4_values_and_groups():
    w, _ = outlier_case(0)
    q, scale = sq.quantize_groups(w, 64)
    assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
    assert scale.shape == (512, 256 // 64)
    assert float((sq.dequantize_groups(q, scale, 64) - w).abs().max()) <= float(scale.max()) / 2 + 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_low_rank_plus_int4_halves_the_plain_int4_error(seed):
    w, _ = outlier_case(seed)
    dec = sq.decompose(w, rank=32)
    ratio = torch.linalg.norm(w - dec.weight()) / torch.linalg.norm(w - sq.fake_quant(w))
    assert ratio < 0.5
    residual = w - dec.low_rank
    assert float(residual.abs().max()) < 0.2 * float(w.abs().max())  # the branch took the outliers
    assert int(dec.q.min()) >= -8 and int(dec.q.max()) <= 7


@pytest.mark.parametrize("seed", SEEDS)
def test_w4a4_error_beats_smoothquant_and_naive(seed):
    w, x = outlier_case(seed)
    ref = x @ w.T
    smooth = sq.smoothing_factors(x.abs().amax(0), w, 0.5)
    svdq = _err(sq.w4a4_output(x, w, smooth=smooth, rank=32), ref)
    smoothquant = _err(sq.w4a4_output(x, w, smooth=smooth, rank=0), ref)
    naive = _err(sq.w4a4_output(x, w, rank=0), ref)
    assert svdq / smoothquant < 0.75
    assert svdq / naive < 0.5


def test_error_falls_as_rank_grows():
    w, x = outlier_case(1)
    ref = x @ w.T
    smooth = sq.smoothing_factors(x.abs().amax(0), w, 0.5)
    errors = [_err(sq.w4a4_output(x, w, smooth=smooth, rank=r), ref) for r in (0, 8, 16, 32)]
    assert errors[0] > errors[1] > errors[2] >= errors[3]


def test_alpha_search_picks_the_lowest_error_on_the_calibration_rows():
    w, x = outlier_case(2)
    best, errors = sq.search_alpha(x, w, rank=32, alphas=(0.0, 0.25, 0.5, 0.75))
    assert set(errors) == {0.0, 0.25, 0.5, 0.75}
    assert errors[best] == min(errors.values())
    assert errors[0.0] > errors[best]  # migrating the activation outliers helps on this layer


def _layer(seed: int = 3) -> tuple[nn.Linear, torch.Tensor]:
    w, x = outlier_case(seed)
    lin = nn.Linear(256, 512).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.normal_(generator=torch.Generator().manual_seed(seed))
    return lin, x


def test_layer_runs_w4a4_close_to_the_reference_packed_and_fake_agree():
    lin, x = _layer()
    layer, alpha = sq.SVDQuantLinear.from_linear(lin, calib_x=x, alphas=(0.25, 0.5, 0.75))
    assert alpha in (0.25, 0.5, 0.75)
    assert layer.qweight.dtype == torch.uint8 and layer.qweight.shape == (512, 128)
    with torch.no_grad():
        ref = lin(x)
        out = layer(x)
        fake = sq.SVDQuantLinear.from_linear(lin, calib_x=x, alphas=(alpha,), mode="fake")[0](x)
        naive = x @ sq.fake_quant(lin.weight).T + lin.bias  # weight-only INT4, no branch, no smoothing
    assert torch.allclose(out, fake, atol=1e-9)
    assert _err(out, ref) / float(torch.linalg.norm(ref)) < 0.1
    assert _err(out, ref) < _err(naive, ref)


def test_folded_lora_equals_a_separate_lora_branch():
    lin, x = _layer(4)
    layer, _ = sq.SVDQuantLinear.from_linear(lin, calib_x=x, alphas=(0.5,))
    g = torch.Generator().manual_seed(9)
    down, up, scale = torch.randn(8, 256, generator=g, dtype=torch.float64), \
        torch.randn(512, 8, generator=g, dtype=torch.float64), 0.7
    q_before = layer.qweight.clone()
    with torch.no_grad():
        separate = layer(x) + scale * (x @ down.T) @ up.T
        layer.fold_lora(down, up, scale)
        folded = layer(x)
    assert layer.rank == 32 + 8
    assert torch.equal(layer.qweight, q_before)  # nothing was re-quantised
    assert float((folded - separate).abs().max()) < 1e-10


def test_packed_weights_and_branch_take_at_most_a_3_5th_of_bf16_on_a_flux_layer():
    layer = sq.SVDQuantLinear(12288, 3072, rank=32, dtype=torch.bfloat16)
    stored = layer.storage_bytes()
    assert stored * 3.5 <= sq.bf16_bytes(3072, 12288, bias=True)
    parts = {k: b.numel() * b.element_size() for k, b in layer.named_buffers()}
    assert parts["qweight"] == 3072 * 12288 // 2  # two INT4 values per byte


def test_quantize_model_save_load_and_fold_lora(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    x = torch.randn(64, 128)
    names = [n for n, _ in sq.quantizable_linears(model)]
    assert names == ["0", "2"]
    stats = sq.collect_activation_stats(model, lambda: model(x), names)
    assert stats["0"].absmax.shape == (128,) and stats["2"].rows.shape[1] == 256
    with torch.no_grad():
        ref = model(x)
    report = sq.quantize_model(model, stats, alphas=(0.25, 0.5))
    assert set(report.layers) == {"0", "2"} and report.bytes_after < report.bytes_before
    with torch.no_grad():
        quant = model(x)
    assert float(torch.linalg.norm(quant - ref) / torch.linalg.norm(ref)) < 0.2
    path = sq.save_svdquant(model, tmp_path / "q.safetensors")
    assert sq.read_svdquant_metadata(path)["format"] == sq.FORMAT
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    assert sq.load_svdquant(fresh, path) == 2
    with torch.no_grad():
        assert torch.equal(fresh(x), quant)
    lora = {"0.lora_A.weight": torch.randn(4, 128), "0.lora_B.weight": torch.randn(256, 4),
            "2.lora_A.weight": torch.randn(4, 256), "2.lora_B.weight": torch.randn(128, 4)}
    assert sq.fold_lora(fresh, lora, scale=0.5) == 2
    assert fresh[0].rank == 36
    with pytest.raises(ValueError, match="not in this model"):
        sq.fold_lora(fresh, {"9.lora_A.weight": torch.zeros(1, 1), "9.lora_B.weight": torch.zeros(1, 1)})
    with pytest.raises(ValueError, match="not an"):
        sq.load_svdquant(fresh, _plain_safetensors(tmp_path))


def _plain_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    return path
