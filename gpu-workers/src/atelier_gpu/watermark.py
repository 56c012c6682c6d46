"""Invisible watermark backends of the ``gpu.watermark`` stage.

* ``dwtDctSvd+rs`` (default): the numpy DWT-DCT-SVD + Reed-Solomon codec of ``atelier_provenance.watermark``,
  re-exported here (``embed``, ``detect``, ``payload_for``, ...). It imports no torch, so the API can read
  marks too.
* ``vine+rs``: VINE (Lu et al., "Robust Watermarking Using Generative Priors Against Image Editing",
  ICLR 2025) when its encoder/decoder weights are configured (``ATELIER_WATERMARK_VINE_DIR``). VINE's
  modules are not packaged on PyPI, so the folder holds TorchScript exports of the two networks
  (``encoder.pt``: ``(image [1,3,256,256] in [-1,1], message [1,100] of 0/1) -> marked image in [-1,1]``;
  ``decoder.pt``: ``image [1,3,256,256] in [-1,1] -> 100 logits``), e.g. ``torch.jit.trace`` of the
  repository's ``VINE_Turbo`` encoder and ConvNeXt decoder. As in the paper, the encoder works at 256x256
  and only its residual is upsampled onto the full-size image. The 100 bits carry our 96-bit codeword plus
  four zero bits, so the same Reed-Solomon code and binomial decision apply (100 bits: >= 66 at 0.1%).

torch is imported only inside ``VineBackend``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from atelier_provenance.watermark import (
    CODEWORD_BITS,
    DEFAULT_FPR,
    METHOD,
    MIN_PIXELS,
    PAYLOAD_BYTES,
    Detection,
    WatermarkError,
    binomial_tail,
    binomial_threshold,
    bits_of,
    codeword,
    detect,
    embed,
    job_ref,
    payload_for,
    rs_decode,
    tenant_ref,
)
from atelier_runtime.settings import Settings
from PIL import Image

__all__ = ["CODEWORD_BITS", "DEFAULT_FPR", "METHOD", "MIN_PIXELS", "PAYLOAD_BYTES", "Detection", "DwtDctSvdBackend",
           "VineBackend", "WatermarkError", "backend_from_settings", "codeword", "detect", "embed", "job_ref",
           "payload_for", "tenant_ref"]


class DwtDctSvdBackend:
    """The default codec (numpy, CPU); see ``atelier_provenance.watermark``."""

    method = METHOD

    def embed(self, image: Image.Image, payload: bytes) -> Image.Image:
        return embed(image, payload)

    def detect(self, image: Image.Image, *, expected_size: tuple[int, int] | None = None,
               expected: bytes | None = None, fpr: float = DEFAULT_FPR) -> Detection:
        return detect(image, expected_size=expected_size, expected=expected, fpr=fpr)


class VineBackend:
    """VINE encoder/decoder from a folder of TorchScript exports (``encoder.pt``, ``decoder.pt``)."""

    method = "vine+rs"
    message_bits = 100
    side = 256

    def __init__(self, folder: Path, *, device: str = "cpu") -> None:
        folder = Path(folder)
        missing = [n for n in ("encoder.pt", "decoder.pt") if not (folder / n).is_file()]
        if missing:
            raise WatermarkError(f"VINE weights not found: {folder} lacks {', '.join(missing)} (TorchScript exports "
                                 "of VINE's encoder and decoder); unset ATELIER_WATERMARK_BACKEND to use dwtDctSvd")
        import torch  # heavy (torch): loaded on first use

        self.torch = torch
        self.device = device
        self.encoder = torch.jit.load(str(folder / "encoder.pt"), map_location=device).eval()
        self.decoder = torch.jit.load(str(folder / "decoder.pt"), map_location=device).eval()

    def _tensor(self, image: Image.Image) -> Any:
        arr = np.asarray(image.convert("RGB").resize((self.side, self.side), Image.Resampling.BICUBIC),
                         dtype=np.float32) / 127.5 - 1.0
        return self.torch.from_numpy(arr).permute(2, 0, 1)[None].to(self.device)

    def _message(self, payload: bytes) -> np.ndarray:
        msg = np.zeros(self.message_bits, dtype=np.float32)
        msg[:CODEWORD_BITS] = bits_of(codeword(payload))
        return msg

    def embed(self, image: Image.Image, payload: bytes) -> Image.Image:
        """Encode at 256x256, upsample the residual to the image's size, add it (VINE's resolution scaling)."""
        rgb = image.convert("RGB")
        if rgb.width * rgb.height < MIN_PIXELS:
            raise WatermarkError(f"image is {rgb.width}x{rgb.height}; the watermark needs at least 256x256 pixels")
        torch = self.torch
        x = self._tensor(rgb)
        msg = torch.from_numpy(self._message(payload))[None].to(self.device)
        with torch.inference_mode():
            residual = (self.encoder(x, msg) - x).clamp(-2, 2)
            residual = torch.nn.functional.interpolate(residual, size=(rgb.height, rgb.width), mode="bicubic",
                                                       align_corners=False)
        res = residual[0].permute(1, 2, 0).cpu().numpy() * 127.5
        out = np.asarray(rgb, dtype=np.float64) + res
        return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")

    def read_bits(self, image: Image.Image) -> np.ndarray:
        with self.torch.inference_mode():
            logits = self.decoder(self._tensor(image))
        return (logits.reshape(-1)[: self.message_bits].cpu().numpy() > 0).astype(np.int8)

    def detect(self, image: Image.Image, *, expected_size: tuple[int, int] | None = None,
               expected: bytes | None = None, fpr: float = DEFAULT_FPR) -> Detection:
        """VINE reads at 256x256 whatever the size, so ``expected_size`` is not needed (accepted for symmetry)."""
        bits = self.read_bits(image)
        n = self.message_bits
        k = binomial_threshold(n, fpr)
        payload, fixed = None, 0
        if expected is not None:
            ref = self._message(expected).astype(np.int8)
        else:
            payload, fixed = rs_decode(bits[:CODEWORD_BITS], np.ones(CODEWORD_BITS, dtype=bool))
            ref = self._message(payload).astype(np.int8) if payload is not None else None
        matched = int(np.sum(bits == ref)) if ref is not None else 0
        return Detection(detected=ref is not None and matched >= k, payload=payload, bit_accuracy=matched / n,
                         matched_bits=matched, bits_read=n, threshold_bits=k, fpr=fpr,
                         p_value=binomial_tail(n, matched) if ref is not None else 1.0, geometry="resized to 256x256",
                         corrected_bytes=fixed, expected=expected, raw_bits=tuple(int(b) for b in bits))


def backend_from_settings(settings: Settings) -> DwtDctSvdBackend | VineBackend:
    """The backend the settings name; ``vine`` without its weights is a clear error, never a silent fallback."""
    if settings.watermark_backend == "vine":
        if settings.watermark_vine_dir is None:
            raise WatermarkError("ATELIER_WATERMARK_BACKEND=vine needs ATELIER_WATERMARK_VINE_DIR (a folder with the "
                                 "TorchScript encoder.pt and decoder.pt of VINE)")
        return VineBackend(settings.watermark_vine_dir)
    return DwtDctSvdBackend()
