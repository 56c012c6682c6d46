"""Invisible watermark: a 48-bit payload, Reed-Solomon protected, hidden with DWT-DCT-SVD.

Payload (6 bytes) = sha256(tenant_id)[:2] + sha256(job_id)[:4]. Reed-Solomon adds 6 parity bytes, so
the 96-bit codeword survives up to 3 wrong bytes; a fixed XOR mask keeps blank images from reading as
a valid codeword. The codeword is hidden with invisible-watermark's
``dwtDctSvd`` method: the U (chroma) channel goes through a Haar DWT, its LL band is cut into 4x4
blocks, and the largest singular value of each block's DCT is quantised so that its remainder encodes
one bit; the bits repeat across the whole image and are read back by a majority vote.

Embedding runs the library's block coder (``EmbedDwtDctSvd.encode_frame``) on our own colour
conversion: the library's ``WatermarkEncoder`` writes float results back into a uint8 array
(wrap-around on bright/dark pixels, PSNR ~15 dB on noisy images) and swaps the horizontal and
vertical detail bands on the way back. Converting in float, rounding and clipping once keeps PSNR
near 40 dB and lets the mark survive JPEG quality 75. Decoding uses the library's
``WatermarkDecoder`` in ``bits`` mode unchanged.

Limits: the library needs at least 256x256 pixels; flat, fully saturated images (pure white, pure
blue) have no chroma headroom and cannot carry the mark (their ``detect`` returns ``payload=None``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

METHOD = "dwtDctSvd+rs"
PAYLOAD_BYTES = 6
PARITY_BYTES = 6
CODEWORD_BITS = (PAYLOAD_BYTES + PARITY_BYTES) * 8
# Step of the singular-value quantiser on the U channel. The library default (36) loses ~7% of the
# bits of a 512x512 noisy image to JPEG-75; 48 keeps them all at ~39-40 dB PSNR.
SCALES = (0, 48, 0)
MIN_PIXELS = 256 * 256
# XOR mask over the codeword: a flat or unmarked image reads as all-0 or all-1 bits, and all-zero is a
# valid Reed-Solomon codeword (payload 000000); whitened, such reads are no longer codewords.
_WHITENING = hashlib.sha256(b"atelier watermark v1").digest()[: PAYLOAD_BYTES + PARITY_BYTES]
_CHROMA_GAP = 0.5


class WatermarkError(ValueError):
    """The image cannot carry the watermark (too small, wrong payload size)."""


def payload_for(tenant_id: str, job_id: str) -> bytes:
    """The 6-byte payload of a job's assets: 2 bytes of sha256(tenant_id) + 4 bytes of sha256(job_id)."""
    return hashlib.sha256(tenant_id.encode()).digest()[:2] + hashlib.sha256(job_id.encode()).digest()[:4]


def _codec():
    from reedsolo import RSCodec

    return RSCodec(PARITY_BYTES)


def _whiten(data: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, _WHITENING, strict=True))


def codeword(payload: bytes) -> bytes:
    """Payload + Reed-Solomon parity, whitened: the 12 bytes that are actually embedded."""
    if len(payload) != PAYLOAD_BYTES:
        raise WatermarkError(f"payload must be {PAYLOAD_BYTES} bytes, got {len(payload)}")
    return _whiten(bytes(_codec().encode(payload)))


def _bits(data: bytes) -> list[int]:
    return [int(b) for b in np.unpackbits(np.frombuffer(data, dtype=np.uint8))]


def _to_bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


@dataclass(frozen=True)
class DetectResult:
    """What ``detect`` read: the corrected payload (None if unreadable) and the raw codeword bits."""

    payload: bytes | None
    corrected: bool = False  # Reed-Solomon had to fix at least one byte
    errors: int = 0  # bytes fixed by Reed-Solomon
    raw_bits: tuple[int, ...] = field(default=(), repr=False)

    def bit_accuracy(self, expected: bytes) -> float:
        """Fraction of raw codeword bits that match the codeword of ``expected`` (0.0 if nothing was read)."""
        if not self.raw_bits:
            return 0.0
        want = _bits(codeword(expected))
        return sum(int(a == b) for a, b in zip(self.raw_bits, want, strict=True)) / len(want)

    def matches(self, expected: bytes) -> bool:
        return self.payload is not None and self.payload == expected


def embed(image: Image.Image, payload: bytes) -> Image.Image:
    """Return an RGB copy of ``image`` carrying ``payload`` (6 bytes, see ``payload_for``)."""
    import cv2
    import pywt
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd

    bits = _bits(codeword(payload))
    bgr = _to_bgr(image)
    rows, cols = bgr.shape[:2]
    if rows * cols < MIN_PIXELS:
        raise WatermarkError(f"image is {cols}x{rows}; the watermark needs at least {MIN_PIXELS} pixels (256x256)")
    # Float YUV on the decoder's uint8 scale: cv2 offsets float chroma by 0.5 on 0..1 data (127.5 once
    # scaled) but by 128 on uint8 data, which is what the decoder reads; the 0.5 closes that gap.
    yuv = cv2.cvtColor(bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2YUV).astype(np.float64) * 255.0
    yuv[:, :, 1:] += _CHROMA_GAP
    r4, c4 = rows // 4 * 4, cols // 4 * 4
    coder = EmbedDwtDctSvd(watermarks=bits, wmLen=len(bits), scales=list(SCALES), block=4)
    for channel, scale in enumerate(SCALES):
        if scale <= 0:
            continue
        approx, details = pywt.dwt2(yuv[:r4, :c4, channel], "haar")
        coder.encode_frame(approx, scale)
        yuv[:r4, :c4, channel] = pywt.idwt2((approx, details), "haar")
    yuv[:, :, 1:] -= _CHROMA_GAP
    out = cv2.cvtColor((yuv / 255.0).astype(np.float32), cv2.COLOR_YUV2BGR) * 255.0
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(out[:, :, ::-1]), "RGB")


def detect(image: Image.Image, *, expected_size: tuple[int, int] | None = None) -> DetectResult:
    """Read the watermark; resize to ``expected_size`` (the size it was embedded at) first when given."""
    from imwatermark import WatermarkDecoder
    from reedsolo import ReedSolomonError

    rgb = image.convert("RGB")
    if expected_size is not None and rgb.size != tuple(expected_size):
        rgb = rgb.resize(tuple(expected_size), Image.Resampling.BICUBIC)
    if rgb.width * rgb.height < MIN_PIXELS:
        return DetectResult(payload=None)
    decoder = WatermarkDecoder("bits", CODEWORD_BITS)
    raw = tuple(int(b) for b in decoder.decode(_to_bgr(rgb), "dwtDctSvd", scales=list(SCALES)))
    data = _whiten(bytes(np.packbits(np.array(raw, dtype=np.uint8))))
    try:
        message, _full, errata = _codec().decode(data)
    except ReedSolomonError:
        return DetectResult(payload=None, raw_bits=raw)
    return DetectResult(payload=bytes(message), corrected=len(errata) > 0, errors=len(errata), raw_bits=raw)
