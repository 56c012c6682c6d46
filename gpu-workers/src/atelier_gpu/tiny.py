"""Tiny random-init diffusers pipelines, written to disk so tests and demos use the real load path.

A development and test facility (``atelier models init-tiny DIR``, ``atelier demo``, the test fixtures): no
production process imports it.

Nothing here touches a model hub: every component is built from a config, the tokenizers from a
vocabulary generated in memory (or, for ``sdxl-tiny-clip`` / ``flux-tiny-clip``, OpenAI CLIP's real vocabulary
from the BPE file the ``open_clip_torch`` wheel ships), and the result is written with ``save_pretrained``. The registry
then loads these folders with ``from_pretrained(..., local_files_only=True)`` exactly like real
weights. Weights are seeded, so the same call writes the same tensors.

    atelier models init-tiny var/models [--bench] [--identity]

``init_tiny_instantid`` writes InstantID-shaped weights (face model, IdentityNet, ``ip-adapter.bin``) for the
tiny SDXL, so the InstantID path of the identity recipe runs without the real ones.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any

import yaml
from atelier_runtime.clip_vocab import CLIP_VOCAB_SIZE as CLIP_VOCAB_SIZE  # re-exported: the tiny writer's vocabulary
from atelier_runtime.clip_vocab import bytes_to_unicode, clip_vocabulary
from atelier_runtime.clip_vocab import clip_bpe_file as clip_bpe_file

# Bump when a config below changes, so existing folders are rebuilt instead of reused.
TINY_VERSION = "2"
_MARKER = ".atelier-tiny"

# Words that get their own BPE/Unigram token, so typical prompts stay well under 77 tokens.
_WORDS = (
    "a an the of in on at with and or for to by from over under behind near its his her their "
    "photo photograph image picture illustration painting render studio product background scene "
    "light soft warm cold bright dark morning evening sunset night color colour white black red "
    "green blue yellow orange pink purple brown gold silver wood stone marble table floor wall "
    "kitchen garden street market city village river sea beach mountain forest sky cloud sun "
    "girl boy woman man child mother father grandmother grandfather friend dog cat bird tree "
    "flower house home school festival food tea coffee bottle box bag shoe dress shirt hair "
    "smiling happy sad standing sitting walking running holding looking full body kids style "
    "pixar cinematic detailed high quality clean minimal modern simple elegant shadow texture "
    "blurry lowres text watermark logo deformed ugly bad worst"
).split()


def write_clip_vocabulary(folder: Path) -> Path:
    """``vocab.json`` and ``merges.txt`` of the real CLIP vocabulary in ``folder`` (the two files of a CLIP
    tokenizer folder on a model hub, ``#version: 0.2`` header included); returns ``folder``."""
    vocab, merges = clip_vocabulary()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def build_real_clip_tokenizer(*, model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> Any:
    """A ``CLIPTokenizer`` with OpenAI CLIP's real vocabulary, read from ``vocab.json`` + ``merges.txt`` as a real
    model folder's are ("a photo of a cat" → 49406, 320, 1125, 539, 320, 2368, 49407). SDXL's second tokenizer pads
    with ``"!"`` (id 0), its first and FLUX's with ``<|endoftext|>``."""
    from transformers import CLIPTokenizer  # heavy (transformers): loaded on first use

    with tempfile.TemporaryDirectory(prefix="clip-vocab-") as tmp:
        return CLIPTokenizer.from_pretrained(write_clip_vocabulary(Path(tmp)), model_max_length=model_max_length,
                                             pad_token=pad_token)


def build_clip_tokenizer(*, model_max_length: int = 77, pad_token: str = "<|endoftext|>",
                         real_vocab: bool = False) -> Any:
    """A byte-level BPE CLIP tokenizer: every byte, word-final variants, and merges for common words (``real_vocab``:
    OpenAI CLIP's own 49,408 tokens instead, :func:`build_real_clip_tokenizer`)."""
    if real_vocab:
        return build_real_clip_tokenizer(model_max_length=model_max_length, pad_token=pad_token)
    from transformers import CLIPTokenizer  # heavy (transformers): loaded on first use

    alphabet = sorted(set(bytes_to_unicode().values()))
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            merged = left + right
            if merged not in vocab:
                merges.append((left, right))
                vocab[merged] = len(vocab)
            left = merged
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    if pad_token not in vocab:
        vocab[pad_token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=model_max_length)


def clip_words() -> list[str]:
    """The whole ASCII words of OpenAI CLIP's vocabulary (32,911, most frequent first): a stand-in for T5's own
    32,100-piece vocabulary, which no installable package ships."""
    vocab, _ = clip_vocabulary()
    return [t[:-4] for t in vocab if t.endswith("</w>") and t[:-4].isascii() and t[:-4].isalnum()]


def build_t5_tokenizer(*, model_max_length: int = 512, words: list[str] | None = None) -> Any:
    """A Unigram T5 tokenizer (``<pad>``=0, ``</s>``=1, ``<unk>``=2) over characters and common words; ``words``
    adds a piece per word (lower-case and capitalised, in order of preference), e.g. :func:`clip_words` so that an
    English prompt takes about as many tokens as in T5's real vocabulary instead of being spelled out."""
    from transformers import T5TokenizerFast  # heavy (transformers): loaded on first use

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    seen = {p for p, _ in pieces}
    for word in _WORDS:
        piece = "\u2581" + word
        if piece not in seen:
            pieces.append((piece, -3.0 - 0.01 * len(pieces)))
            seen.add(piece)
    extra = words or []
    for i, word in enumerate(extra):
        for piece in ("\u2581" + word, "\u2581" + word.capitalize()):
            if piece not in seen:  # -5..-7: one word beats spelling it (two or more characters at -9/-10)
                pieces.append((piece, -5.0 - 2.0 * i / len(extra)))
                seen.add(piece)
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    for ch in chars:
        for piece, score in (("\u2581" + ch, -9.0), (ch, -10.0)):
            if piece not in seen:
                pieces.append((piece, score))
                seen.add(piece)
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def _clip_text_config(tokenizer: Any, *, hidden: int, layers: int, heads: int, projection: int) -> Any:
    from transformers import CLIPTextConfig  # heavy (transformers): loaded on first use

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        projection_dim=projection,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _sdxl_pipeline(*, unet_channels: tuple[int, ...], layers_per_block: int, transformer_layers: tuple[int, ...],
                   heads: tuple[int, ...], text_hidden: tuple[int, int], text_layers: int,
                   vae_channels: tuple[int, ...], vae_groups: int, real_vocab: bool = False) -> Any:
    import torch  # heavy (torch, diffusers, transformers): loaded on first use
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_clip_tokenizer(real_vocab=real_vocab)
    tokenizer_2 = build_clip_tokenizer(pad_token="!", real_vocab=real_vocab)
    h1, h2 = text_hidden
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer, hidden=h1, layers=text_layers, heads=4, projection=h1))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(
        _clip_text_config(tokenizer_2, hidden=h2, layers=text_layers, heads=4, projection=h2))
    n = len(unet_channels)
    add_time_dim = 8 if unet_channels[0] < 128 else 256
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        block_out_channels=unet_channels,
        layers_per_block=layers_per_block,
        transformer_layers_per_block=transformer_layers,
        attention_head_dim=heads,  # SDXL's config name for the number of heads per block
        use_linear_projection=True,
        cross_attention_dim=h1 + h2,
        addition_embed_type="text_time",
        addition_time_embed_dim=add_time_dim,
        projection_class_embeddings_input_dim=6 * add_time_dim + h2,
        norm_num_groups=min(32, unet_channels[0]),
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        block_out_channels=vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=vae_groups,
        sample_size=128,
        scaling_factor=0.13025,
        force_upcast=False,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="trailing", prediction_type="epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, add_watermarker=False,
    )


def build_sdxl_tiny(*, real_vocab: bool = False) -> Any:
    """SDXL with a two-level 32/64-channel UNet; VAE keeps SDXL's 8x downsampling. ``real_vocab``: both tokenizers
    have OpenAI CLIP's vocabulary (:func:`build_real_clip_tokenizer`; the text encoders' 49,408-row embeddings are
    the only part that grows)."""
    return _sdxl_pipeline(unet_channels=(32, 64), layers_per_block=1, transformer_layers=(1, 1), heads=(2, 4),
                          text_hidden=(32, 32), text_layers=2, vae_channels=(8, 16, 32, 32), vae_groups=8,
                          real_vocab=real_vocab)


def build_sdxl_bench() -> Any:
    """Bench-sized SDXL: UNet (128,256,512), 2 layers per block, transformer layers (1,1,2), ~125M params."""
    return _sdxl_pipeline(unet_channels=(128, 256, 512), layers_per_block=2, transformer_layers=(1, 1, 2),
                          heads=(2, 4, 8), text_hidden=(64, 128), text_layers=4,
                          vae_channels=(32, 64, 128, 128), vae_groups=32)


def build_flux_tiny(*, real_vocab: bool = False) -> Any:
    """FLUX.1-dev-shaped pipeline: 16-channel latents packed 2x2, guidance embedding, CLIP + T5 text. ``real_vocab``:
    the CLIP tokenizer has OpenAI CLIP's vocabulary, and T5 a piece per CLIP word (:func:`clip_words`; no real T5
    vocabulary ships offline), so a prompt's words fit T5's 512-token window as they do with the real one."""
    import torch  # heavy (torch, diffusers, transformers): loaded on first use
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = build_clip_tokenizer(real_vocab=real_vocab)
    tokenizer_2 = build_t5_tokenizer(words=clip_words() if real_vocab else None)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer, hidden=32, layers=2, heads=4, projection=32))
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, use_cache=False, pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id, dropout_rate=0.0,
    ))
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2x2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5 d_model
        pooled_projection_dim=32,  # CLIP pooled output
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=128,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )


def _randomize_zero_modules(model: Any, names: tuple[str, ...], seed: int, std: float = 0.05) -> Any:
    """ControlNets start with zero-initialised output layers (no effect until trained); a random one must act."""
    import torch  # heavy (torch): loaded on first use

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in names):
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return model


def _controlnet_from_unet(unet: Any, *, seed: int) -> Any:
    """A ControlNet copying ``unet``'s encoder (``ControlNetModel.from_unet``), its zero-convs made random."""
    from diffusers import ControlNetModel  # heavy (diffusers): loaded on first use

    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    return _randomize_zero_modules(cn, ("controlnet_down_blocks", "controlnet_mid_block",
                                        "controlnet_cond_embedding.conv_out"), seed=seed)


def build_sdxl_controlnet(pipe: Any | None = None) -> Any:
    """A ControlNet for ``sdxl-tiny``: the tiny UNet's encoder (``ControlNetModel.from_unet``), random zero-convs."""
    return _controlnet_from_unet((pipe or build_sdxl_tiny()).unet, seed=1)


def build_flux_controlnet() -> Any:
    """A FLUX ControlNet shaped like ``flux-tiny`` (one double and one single block), random output layers."""
    import torch  # heavy (torch, diffusers): loaded on first use
    from diffusers import FluxControlNetModel

    torch.manual_seed(0)
    cn = FluxControlNetModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                             num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                             guidance_embeds=True, axes_dims_rope=[4, 4, 8])
    return _randomize_zero_modules(cn, ("controlnet_blocks", "controlnet_single_blocks", "controlnet_x_embedder"),
                                   seed=2)


def build_sd3_tiny() -> Any:
    """SD3-shaped pipeline: MMDiT with 16-channel latents, two CLIP encoders and T5."""
    import torch  # heavy (torch, diffusers, transformers): loaded on first use
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tok, tok2, tok3 = build_clip_tokenizer(), build_clip_tokenizer(pad_token="!"), build_t5_tokenizer(model_max_length=77)
    torch.manual_seed(0)
    te = CLIPTextModelWithProjection(_clip_text_config(tok, hidden=32, layers=2, heads=4, projection=32))
    torch.manual_seed(0)
    te2 = CLIPTextModelWithProjection(_clip_text_config(tok2, hidden=32, layers=2, heads=4, projection=32))
    torch.manual_seed(0)
    te3 = T5EncoderModel(T5Config(vocab_size=len(tok3), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                  relative_attention_num_buckets=8, relative_attention_max_distance=32,
                                  feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                                  pad_token_id=tok3.pad_token_id, eos_token_id=tok3.eos_token_id, dropout_rate=0.0))
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, out_channels=16,
                                        pos_embed_max_size=64)
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32),
                        layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=128,
                        scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
                        force_upcast=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=te,
                                    tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=te3,
                                    tokenizer_3=tok3)


def build_pixart_tiny() -> Any:
    """PixArt-Sigma-shaped pipeline: DiT with adaLN-single, T5 text encoder."""
    import torch  # heavy (torch, diffusers, transformers): loaded on first use
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tok = build_t5_tokenizer(model_max_length=120)
    torch.manual_seed(0)
    te = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=32,
                                 feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, dropout_rate=0.0))
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(sample_size=16, num_layers=2, patch_size=2, attention_head_dim=16,
                                           num_attention_heads=2, caption_channels=32, in_channels=4,
                                           cross_attention_dim=32, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=128,
                        force_upcast=False)
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    return PixArtSigmaPipeline(tokenizer=tok, text_encoder=te, vae=vae, transformer=transformer, scheduler=scheduler)


# id → (family, builder, max_side)
TINY_MODELS: dict[str, tuple[str, Callable[[], Any], int]] = {
    "sdxl-tiny": ("sdxl", build_sdxl_tiny, 128),
    "flux-tiny": ("flux", build_flux_tiny, 128),
    "sd3-tiny": ("sd3", build_sd3_tiny, 128),
    "pixart-tiny": ("pixart", build_pixart_tiny, 128),
}
# ControlNets written beside the tiny pipelines: folder → (builder, the model ids that use it, control kind)
TINY_CONTROLNETS: dict[str, tuple[Callable[[], Any], tuple[str, ...], str]] = {
    "sdxl-tiny-controlnet": (build_sdxl_controlnet, ("sdxl-tiny",), "canny"),
    "flux-tiny-controlnet": (build_flux_controlnet, ("flux-tiny",), "canny"),
}
BENCH_MODELS: dict[str, tuple[str, Callable[[], Any], int]] = {
    "sdxl-bench": ("sdxl", build_sdxl_bench, 256),
}
# the tiny SDXL and FLUX with OpenAI CLIP's real vocabulary (needs open_clip_torch's BPE file): real token counts
REAL_VOCAB_MODELS: dict[str, tuple[str, Callable[[], Any], int]] = {
    "sdxl-tiny-clip": ("sdxl", partial(build_sdxl_tiny, real_vocab=True), 128),
    "flux-tiny-clip": ("flux", partial(build_flux_tiny, real_vocab=True), 128),
}


def _write_pipeline(folder: Path, build: Callable[[], Any], *, force: bool) -> None:
    marker = folder / _MARKER
    if not force and marker.is_file() and marker.read_text().strip() == TINY_VERSION:
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        build().save_pretrained(tmp, safe_serialization=True)
        (tmp / _MARKER).write_text(TINY_VERSION + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fresh(path: Path, force: bool) -> bool:
    marker = path.with_name(path.name + _MARKER)
    return not force and path.is_file() and marker.is_file() and marker.read_text().strip() == TINY_VERSION


def _mark(path: Path) -> None:
    path.with_name(path.name + _MARKER).write_text(TINY_VERSION + "\n")


def _write_lora(path: Path, sdxl_folder: Path, *, force: bool, rank: int = 4) -> Path:
    """A random rank-4 LoRA for the tiny SDXL UNet's attention projections, in diffusers/PEFT format."""
    import torch  # heavy (torch, diffusers, safetensors (torch)): loaded on first use
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    if _fresh(path, force):
        return path
    unet = UNet2DConditionModel.from_pretrained(sdxl_folder / "unet", local_files_only=True)
    gen = torch.Generator().manual_seed(3)
    tensors = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v"):
            tensors[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=gen) * 0.1
            tensors[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=gen) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    _mark(path)
    return path


# diffusers' resnet layer -> kohya/SGM's name for it (SDXL's LDM UNet: in_layers.2 is conv1, out_layers.3 conv2)
_SGM_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
               "conv_shortcut": "skip_connection"}
_SGM_INNER = {"resnets": 0, "attentions": 1}


def sgm_lora_name(module: str, layers_per_block: int) -> str | None:
    """The kohya (sd-scripts) SDXL name of a diffusers UNet module, in the SGM/LDM block numbering real SDXL LoRAs
    use (``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`` -> ``lora_unet_input_blocks_4_1_transformer_
    blocks_0_attn1_to_q``); None for a module outside the blocks this writer covers."""
    parts = module.split(".")
    per = layers_per_block + 1
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 4 and parts[2] in _SGM_INNER:
        block, kind, layer, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        index = (1 + block * per + layer) if parts[0] == "down_blocks" else (block * per + layer)
        group = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
    elif parts[0] == "mid_block" and len(parts) > 3 and parts[1] in _SGM_INNER:
        kind, layer, rest = parts[1], int(parts[2]), parts[3:]
        index, group = (1 if kind == "attentions" else 2 * layer), "middle_block"
    else:
        return None
    if kind == "resnets":
        if len(rest) != 1 or rest[0] not in _SGM_RESNET:
            return None
        tail = _SGM_RESNET[rest[0]]
    else:
        tail = "_".join(rest)
    if group == "middle_block":  # SGM's middle block is one sequence: resnet, attention, resnet (no inner index)
        return f"lora_unet_{group}_{index}_{tail}"
    return f"lora_unet_{group}_{index}_{_SGM_INNER[kind]}_{tail}"


def write_kohya_lora(path: Path, sdxl_folder: Path, *, rank: int = 4, alpha: float = 2.0, seed: int = 5,
                     strength: float = 0.2) -> Path:
    """A random LoRA for a saved SDXL pipeline's UNet in the layout the few-step LoRAs ship in (kohya sd-scripts:
    ``lora_unet_<SGM block>_*.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``), covering the attention
    projections and the resnets' 3x3 convolutions (``lora_down`` a rank x in x 3 x 3 kernel, ``lora_up`` 1x1)."""
    import torch  # heavy (torch, diffusers, safetensors (torch)): loaded on first use
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(sdxl_folder / "unet", local_files_only=True)
    layers = int(unet.config.layers_per_block if isinstance(unet.config.layers_per_block, int)
                 else unet.config.layers_per_block[0])
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for name, module in unet.named_modules():
        key = sgm_lora_name(name, layers)
        if key is None:
            continue
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v"):
            down = torch.randn(rank, module.in_features, generator=gen)
            up = torch.randn(module.out_features, rank, generator=gen)
        elif isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3):
            down = torch.randn(rank, module.in_channels, 3, 3, generator=gen)
            up = torch.randn(module.out_channels, rank, 1, 1, generator=gen)
        else:
            continue
        tensors[f"{key}.lora_down.weight"] = down * strength
        tensors[f"{key}.lora_up.weight"] = up * strength
        tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                                            "ss_network_alpha": str(alpha)})
    return path


def _write_svdquant(path: Path, sdxl_folder: Path, *, force: bool) -> Path:
    """SVDQuant checkpoint of the tiny SDXL UNet, calibrated on a few prompts through the real pipeline."""
    from .quant.pipeline import CALIBRATION_PROMPTS, quantize_pipeline  # heavy (torch, diffusers): loaded on first use
    from .registry import ModelSpec, load_pipeline

    if _fresh(path, force):
        return path
    pipe = load_pipeline(ModelSpec(id="sdxl-tiny", family="sdxl", path=sdxl_folder), device="cpu")
    quantize_pipeline(pipe, family="sdxl", out=path, prompts=CALIBRATION_PROMPTS[:1], width=64, height=64, steps=2,
                      alphas=(0.25, 0.5, 0.75), refit_iters=1)
    _mark(path)
    return path


def init_tiny(dest: Path, *, bench: bool = False, real_vocab: bool = False, force: bool = False) -> Path:
    """Write the tiny pipelines (and ``sdxl-bench`` when asked) into ``dest``; return ``dest/models.yaml``.

    Every family gets one (``sdxl-tiny``, ``flux-tiny``, ``sd3-tiny``, ``pixart-tiny``); SDXL and FLUX
    also get a tiny canny ControlNet, and ``sdxl-tiny-svdq`` is the tiny SDXL with an SVDQuant INT4
    checkpoint and a tiny LoRA folded into its low-rank branches. ``real_vocab`` adds ``sdxl-tiny-clip`` and
    ``flux-tiny-clip``, the same pipelines with OpenAI CLIP's real vocabulary (:data:`REAL_VOCAB_MODELS`).

    Entries already in an existing ``models.yaml`` (real weights) are kept. Folders written by the same
    version of this module are reused unless ``force``.
    """
    from .registry import quiet_progress_bars  # heavy (torch, diffusers): loaded on first use

    quiet_progress_bars()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = dict(TINY_MODELS)
    if bench:
        wanted.update(BENCH_MODELS)
    if real_vocab:
        wanted.update(REAL_VOCAB_MODELS)
    models_file = dest / "models.yaml"
    doc: dict[str, Any] = {}
    if models_file.is_file():
        doc = yaml.safe_load(models_file.read_text()) or {}
    models: dict[str, Any] = dict(doc.get("models") or {})
    for model_id, (family, build, max_side) in wanted.items():
        _write_pipeline(dest / model_id, build, force=force)
        models[model_id] = {
            "family": family, "path": model_id, "dtype": "float32", "quantization": "none",
            # the bench model stands in for a few-step distilled SDXL (Lightning/Hyper style): no CFG
            "steps": 4, "guidance": 1.0 if model_id in BENCH_MODELS else 5.0, "scheduler": None, "max_side": max_side,
        }
    for folder, (build, users, kind) in TINY_CONTROLNETS.items():
        _write_pipeline(dest / folder, build, force=force)
        for model_id in users:
            models[model_id]["controlnets"] = {kind: {"path": folder, "kind": kind}}
    lora = _write_lora(dest / "loras" / "sdxl-tiny-style.safetensors", dest / "sdxl-tiny", force=force)
    svdq = _write_svdquant(dest / "sdxl-tiny-svdq" / "unet.safetensors", dest / "sdxl-tiny", force=force)
    models["sdxl-tiny-svdq"] = {
        **models["sdxl-tiny"], "quantization": "svdquant-int4", "svdquant": str(svdq.relative_to(dest)),
        "loras": [{"path": str(lora.relative_to(dest)), "scale": 0.5, "name": "style"}],
    }
    models["sdxl-tiny-svdq"].pop("controlnets", None)
    doc["models"] = models
    tmp = models_file.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=True))
    tmp.replace(models_file)
    return models_file


# --- tiny InstantID weights ------------------------------------------------------------------------

# InstantID's shapes where they are part of the format (Wang et al., 2024; its ``ip-adapter.bin``):
INSTANTID_FACE_DIM = 512  # antelopev2's embedding width = the Resampler's input width
INSTANTID_QUERIES = 16  # face tokens
RESAMPLER_DEPTH = 4  # diffusers' IP-Adapter Plus conversion maps exactly these 4 blocks
RESAMPLER_DIM_HEAD = 64  # diffusers reads the head count as ``to_q`` rows // 64
RESAMPLER_FF_MULT = 4
# the tiny Resampler's width (InstantID's is 1280 = 20 heads); one head of 64
TINY_RESAMPLER_DIM = 64
IDENTITY_SETTINGS = ("ATELIER_IDENTITY_FACE_MODEL_DIR", "ATELIER_IDENTITY_CONTROLNET_DIR",
                     "ATELIER_IDENTITY_IP_ADAPTER_PATH")


def instantid_ip_adapter_state_dict(unet: Any, *, face_dim: int = INSTANTID_FACE_DIM,
                                    dim: int = TINY_RESAMPLER_DIM, num_queries: int = INSTANTID_QUERIES,
                                    seed: int = 4) -> dict[str, dict[str, Any]]:
    """Random InstantID image-projection weights for ``unet``, in the key layout of InstantID's ``ip-adapter.bin``.

    ``image_proj`` is InstantID's Resampler (IP-Adapter Plus): ``latents`` (1, queries, dim), ``proj_in``
    (face_dim → dim), ``proj_out`` (dim → the UNet's cross-attention width), ``norm_out``, and per block
    ``layers.i.0`` (PerceiverAttention: ``norm1``, ``norm2``, ``to_q``, ``to_kv``, ``to_out``, no biases) and
    ``layers.i.1`` (FeedForward: ``0`` LayerNorm, ``1`` and ``3`` bias-free Linears). ``ip_adapter`` has
    ``{i}.to_k_ip.weight`` / ``{i}.to_v_ip.weight`` for every cross-attention processor, ``i`` its index in
    ``unet.attn_processors`` (1, 3, 5...: the original IP-Adapter's ``ModuleList`` of processors); like
    IP-Adapter's training init they start as copies of that layer's ``to_k`` / ``to_v``.
    """
    import torch  # heavy (torch): loaded on first use

    if dim % RESAMPLER_DIM_HEAD:
        raise ValueError(f"the Resampler width must be a multiple of {RESAMPLER_DIM_HEAD}, got {dim}")
    gen = torch.Generator().manual_seed(seed)
    cross = int(unet.config.cross_attention_dim)
    inner = dim  # heads * dim_head, heads = dim // 64
    hidden = dim * RESAMPLER_FF_MULT

    def linear(out_features: int, in_features: int) -> Any:
        return torch.randn(out_features, in_features, generator=gen) / in_features**0.5

    proj: dict[str, Any] = {
        "latents": torch.randn(1, num_queries, dim, generator=gen) / dim**0.5,
        "proj_in.weight": linear(dim, face_dim), "proj_in.bias": torch.zeros(dim),
        "proj_out.weight": linear(cross, dim), "proj_out.bias": torch.zeros(cross),
        "norm_out.weight": torch.ones(cross), "norm_out.bias": torch.zeros(cross),
    }
    for i in range(RESAMPLER_DEPTH):
        attn, ff = f"layers.{i}.0.", f"layers.{i}.1."
        proj.update({
            f"{attn}norm1.weight": torch.ones(dim), f"{attn}norm1.bias": torch.zeros(dim),
            f"{attn}norm2.weight": torch.ones(dim), f"{attn}norm2.bias": torch.zeros(dim),
            f"{attn}to_q.weight": linear(inner, dim), f"{attn}to_kv.weight": linear(2 * inner, dim),
            f"{attn}to_out.weight": linear(dim, inner),
            f"{ff}0.weight": torch.ones(dim), f"{ff}0.bias": torch.zeros(dim),
            f"{ff}1.weight": linear(hidden, dim), f"{ff}3.weight": linear(dim, hidden),
        })
    return {"image_proj": proj, "ip_adapter": _ip_attention(unet)}


def _ip_attention(unet: Any) -> dict[str, Any]:
    """``{i}.to_k_ip.weight`` / ``{i}.to_v_ip.weight`` for every cross-attention processor of ``unet`` (``i`` its
    index in ``unet.attn_processors``: IP-Adapter's layout), copies of that layer's ``to_k`` / ``to_v``."""
    ip: dict[str, Any] = {}
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        layer = unet.get_submodule(name.removesuffix(".processor"))
        ip[f"{index}.to_k_ip.weight"] = layer.to_k.weight.detach().clone().contiguous()
        ip[f"{index}.to_v_ip.weight"] = layer.to_v.weight.detach().clone().contiguous()
    return ip


IP_ADAPTER_TOKENS = 4  # the original IP-Adapter's image tokens (ImageProjection)
TINY_IMAGE_EMBED_DIM = 32


def init_tiny_ip_adapter(dest: Path, sdxl_folder: Path, *, force: bool = False, seed: int = 8) -> Path:
    """Write a tiny random IP-Adapter for the SDXL pipeline in ``sdxl_folder`` in the layout of
    ``h94/IP-Adapter``'s ``sdxl_models`` folder, and return the folder (``ATELIER_IDENTITY_REFERENCE_ADAPTER_DIR``).

    ``image_encoder/`` is a ``CLIPVisionModelWithProjection`` (``save_pretrained``; 32x32 images, a 32-d image
    embedding), ``ip-adapter_sdxl.bin`` holds ``image_proj`` (IP-Adapter's ``ImageProjection``: ``proj`` maps the
    image embedding to 4 tokens of the UNet's cross-attention width, ``norm``) and ``ip_adapter`` (``to_k_ip`` /
    ``to_v_ip`` per cross-attention layer), read by diffusers' ``load_ip_adapter``."""
    import torch  # heavy (torch): loaded on first use

    dest, sdxl_folder = Path(dest), Path(sdxl_folder)
    if not (sdxl_folder / "unet").is_dir():
        raise FileNotFoundError(f"{sdxl_folder} is not an SDXL pipeline folder (no unet/); run init_tiny first")
    weights = dest / "ip-adapter_sdxl.bin"

    def encoder() -> Any:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # heavy: loaded on first use

        torch.manual_seed(seed)
        return CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
            patch_size=8, projection_dim=TINY_IMAGE_EMBED_DIM))

    _write_pipeline(dest / "image_encoder", encoder, force=force)
    if not _fresh(weights, force):
        from diffusers import UNet2DConditionModel  # heavy (diffusers): loaded on first use

        unet = UNet2DConditionModel.from_pretrained(sdxl_folder / "unet", local_files_only=True)
        gen = torch.Generator().manual_seed(seed)
        cross = int(unet.config.cross_attention_dim)
        proj = {"proj.weight": torch.randn(IP_ADAPTER_TOKENS * cross, TINY_IMAGE_EMBED_DIM, generator=gen)
                / TINY_IMAGE_EMBED_DIM**0.5,
                "proj.bias": torch.zeros(IP_ADAPTER_TOKENS * cross),
                "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
        tmp = weights.with_name(weights.name + ".tmp")
        torch.save({"image_proj": proj, "ip_adapter": _ip_attention(unet)}, tmp)
        tmp.replace(weights)
        _mark(weights)
    return dest


def init_tiny_instantid(dest: Path, sdxl_folder: Path, *, force: bool = False) -> dict[str, Path]:
    """Write tiny random InstantID weights for the SDXL pipeline in ``sdxl_folder``; return the three settings.

    Under ``dest``: ``face_model/recognition.pt`` (a TorchScript colour-layout 'recogniser' with a 512-d
    output, ``identity.tiny``; real users put antelopev2's ``glintr100.onnx`` there), ``identitynet/`` (a
    ControlNet copied from the SDXL UNet's encoder, random zero-convs, ``save_pretrained``) and
    ``ip-adapter.bin`` (``instantid_ip_adapter_state_dict``, ``torch.save``). The result maps
    ``ATELIER_IDENTITY_FACE_MODEL_DIR``, ``_CONTROLNET_DIR`` and ``_IP_ADAPTER_PATH`` to those paths.
    Files written by the same version of this module are reused unless ``force``.
    """
    import torch  # heavy (torch): loaded on first use

    from .identity.tiny import write_tiny_embedder  # heavy (torch, diffusers): loaded on first use

    dest, sdxl_folder = Path(dest), Path(sdxl_folder)
    if not (sdxl_folder / "unet").is_dir():
        raise FileNotFoundError(f"{sdxl_folder} is not an SDXL pipeline folder (no unet/); run init_tiny first")

    @cache
    def unet() -> Any:
        from diffusers import UNet2DConditionModel  # heavy (diffusers): loaded on first use

        return UNet2DConditionModel.from_pretrained(sdxl_folder / "unet", local_files_only=True)

    face_dir, controlnet_dir, ip_path = dest / "face_model", dest / "identitynet", dest / "ip-adapter.bin"
    recogniser = face_dir / "recognition.pt"
    if not _fresh(recogniser, force):
        write_tiny_embedder(recogniser, dim=INSTANTID_FACE_DIM, seed=6)
        _mark(recogniser)
    _write_pipeline(controlnet_dir, lambda: _controlnet_from_unet(unet(), seed=5), force=force)
    if not _fresh(ip_path, force):
        tmp = ip_path.with_name(ip_path.name + ".tmp")
        torch.save(instantid_ip_adapter_state_dict(unet()), tmp)
        tmp.replace(ip_path)
        _mark(ip_path)
    return dict(zip(IDENTITY_SETTINGS, (face_dir, controlnet_dir, ip_path), strict=True))
