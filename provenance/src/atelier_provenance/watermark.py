"""Invisible watermark codec: a 48-bit payload, Reed-Solomon protected, hidden with DWT-DCT-SVD.

Pure numpy + Pillow + reedsolo (no torch, no OpenCV), so the API and the ``atelier verify`` command can
decode a mark without importing GPU code; ``atelier_gpu.watermark`` re-exports it for the workers.

Payload (6 bytes) = sha256(tenant_id)[:2] + sha256(job_id)[:4] (``payload_for``). Reed-Solomon adds 6
parity bytes, so the 96-bit codeword survives up to 3 wrong bytes; a fixed XOR mask ("whitening") keeps a
blank image from reading as the all-zero codeword.

The scheme is invisible-watermark's ``dwtDctSvd`` (the one Stable Diffusion ships): the U (chroma)
channel of BT.601 YUV goes through a one-level Haar DWT; its LL band is cut into 4x4 blocks; the largest
singular value ``s`` of each block's DCT is quantised so that ``frac(s / scale)`` is 0.25 for a 0 bit and
0.75 for a 1 bit; block ``n`` (raster order) carries codeword bit ``n mod 96``. Two facts keep this file
short: the 2-D DCT is orthonormal, so the singular values of a block's DCT are the block's own; and only
the LL band changes, so the inverse DWT adds half of each LL change to the 2x2 pixels under it. Changes to
the library's arithmetic, each measured by ``bench/watermark_bench.py``:

* colour conversion in float, rounded and clipped once (the library writes floats into uint8: PSNR ~15 dB
  on noisy images, and it swaps the H/V detail bands on the way back);
* the nearest lattice point carrying the bit, not the one above ``floor(s / scale)`` (max shift 0.5 instead
  of 0.75 of a step: less distortion at the same strength);
* soft decoding: each block votes ``-sin(2 pi frac(s / scale))`` (+1 at 0.75, -1 at 0.25, 0 on the
  decision boundary) and a bit is the sign of its votes' sum, where the library counts hard votes.

A mark written here reads back with the library's own ``WatermarkDecoder(...).decode(..., 'dwtDctSvd')``
(tests/unit/gpu/test_gpu_watermark.py checks it).

Deciding "is this ours": the raw 96 bits are compared with a codeword. On an unmarked image each bit
matches with probability 1/2, so matches ~ Binomial(96, 1/2) and ``binomial_threshold`` gives the number
of matching bits above which a match happens by chance with probability at most the stated false-positive
rate (96 bits: >= 61 at 1%, >= 64 at 0.1%). When several geometries are tried (resize back to the
recorded size, centre-crop placement) the rate is divided among them (Bonferroni). A blind read (no
expected payload) must also Reed-Solomon-decode, which a random word does with probability ~1.4e-5.

Limits: at least ``MIN_BLOCKS`` (192) 8x8 blocks — a 320x50 banner has 240, a 728x90 one 1,001 (what 256x256
has); flat, fully saturated images (pure white, pure blue) have no chroma
headroom and cannot carry the mark. ``detect`` reads at an expected size only up to ``MAX_READ_SCALE`` (4x)
each side of the image as found, so a claimed size cannot make one read cost more than 16x the image's own
pixels; callers that take the size from outside bound its area too (``atelier_provenance.verify``: the
upload pixel cap).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from reedsolo import ReedSolomonError, RSCodec

METHOD = "dwtDctSvd+rs"
PAYLOAD_BYTES = 6
PARITY_BYTES = 6
CODEWORD_BYTES = PAYLOAD_BYTES + PARITY_BYTES
CODEWORD_BITS = CODEWORD_BYTES * 8
# Step of the singular-value quantiser on the U channel (invisible-watermark's default is 36).
SCALE = 48.0
BLOCK = 4
# the learned (VINE-style) backend encodes at 256x256 and needs that many pixels; this codec needs blocks instead
MIN_PIXELS = 256 * 256
# 4x4 blocks of the half-resolution LL band, each carrying one codeword bit: at least two votes per bit. A 320x50
# mobile leaderboard has 240 blocks (2.5 votes), a 728x90 leaderboard 1,001 — as many as 256x256 (1,024)
MIN_BLOCKS = 2 * CODEWORD_BITS
DEFAULT_FPR = 1e-3
# An expected size is read (resized back to, or a crop placed inside) only up to this many times each side of the
# image as found: beyond it the work would be set by whoever states the size, not by the image. The price: a copy
# shrunk to under 1/4 of each side is no longer read at its recorded size (a 1024x1024 mark still read at 1/5).
MAX_READ_SCALE = 4
_WHITENING = hashlib.sha256(b"atelier watermark v1").digest()[:CODEWORD_BYTES]
# BT.601 YUV as OpenCV computes it (what invisible-watermark's decoder reads): U = 0.492 (B - Y) + 128;
# the inverse moves B by 2.032 dU and G by -0.395 dU, which leaves Y unchanged.
_KB, _KG = 2.032, -0.395


class WatermarkError(ValueError):
    """The image cannot carry the watermark (too small, wrong payload size)."""


def payload_for(tenant_id: str, job_id: str) -> bytes:
    """The 6-byte payload of a job's assets: 2 bytes of sha256(tenant_id) + 4 bytes of sha256(job_id)."""
    return tenant_ref(tenant_id) + job_ref(job_id)


def tenant_ref(tenant_id: str) -> bytes:
    return hashlib.sha256(tenant_id.encode()).digest()[:2]


def job_ref(job_id: str) -> bytes:
    return hashlib.sha256(job_id.encode()).digest()[:4]


def _codec() -> Any:
    return RSCodec(PARITY_BYTES)


def _whiten(data: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, _WHITENING, strict=True))


def codeword(payload: bytes) -> bytes:
    """Payload + Reed-Solomon parity, whitened: the 12 bytes that are actually embedded."""
    if len(payload) != PAYLOAD_BYTES:
        raise WatermarkError(f"payload must be {PAYLOAD_BYTES} bytes, got {len(payload)}")
    return _whiten(bytes(_codec().encode(payload)))


def bits_of(data: bytes) -> np.ndarray:
    """``data`` as a vector of bits, most significant first."""
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.int8)


@lru_cache(maxsize=64)
def binomial_threshold(n: int, fpr: float) -> int:
    """Smallest k with P(Binomial(n, 1/2) >= k) <= fpr: matching bits needed to claim a mark at that rate."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    tail = 0.0
    for k in range(n, -1, -1):
        tail += math.comb(n, k) / 2.0**n
        if tail > fpr:
            return k + 1
    return 0


def binomial_tail(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) >= k): the chance an unmarked image matches ``k`` of ``n`` bits or more."""
    return sum(math.comb(n, i) for i in range(max(k, 0), n + 1)) / 2.0**n


# --- transform ------------------------------------------------------------------------------------

def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def _u_channel(rgb: np.ndarray) -> np.ndarray:
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return 0.492 * (rgb[..., 2] - y) + 128.0


def _ll(u: np.ndarray) -> np.ndarray:
    """LL band of the orthonormal Haar DWT (invisible-watermark's ``pywt.dwt2(..., 'haar')``)."""
    return (u[0::2, 0::2] + u[0::2, 1::2] + u[1::2, 0::2] + u[1::2, 1::2]) / 2.0


def _blocks(ll: np.ndarray) -> np.ndarray:
    rows, cols = ll.shape[0] // BLOCK, ll.shape[1] // BLOCK
    return ll[: rows * BLOCK, : cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2)


def _block_grid(width: int, height: int) -> tuple[int, int]:
    """Blocks per column and per row for an image of this size."""
    return (height // 4 * 4) // 2 // BLOCK, (width // 4 * 4) // 2 // BLOCK


def capacity(width: int, height: int) -> int:
    """How many blocks (codeword bit votes) an image of this size carries; at least ``MIN_BLOCKS`` to be marked."""
    rows, cols = _block_grid(width, height)
    return rows * cols


def embed(image: Image.Image, payload: bytes, *, scale: float = SCALE) -> Image.Image:
    """Return an RGB copy of ``image`` carrying ``payload`` (6 bytes, see ``payload_for``)."""
    bits = bits_of(codeword(payload))
    rgb = _rgb(image)
    rows, cols = rgb.shape[:2]
    if capacity(cols, rows) < MIN_BLOCKS:
        raise WatermarkError(f"image is {cols}x{rows}: {capacity(cols, rows)} blocks of 8x8 pixels; the watermark "
                             f"needs at least {MIN_BLOCKS} (two per codeword bit)")
    r4, c4 = rows // 4 * 4, cols // 4 * 4
    ll = _ll(_u_channel(rgb[:r4, :c4]))
    blocks = _blocks(ll)
    nr, nc = blocks.shape[:2]
    want = bits[np.arange(nr * nc) % CODEWORD_BITS].reshape(nr, nc).astype(np.float64)
    u_, s, vt = np.linalg.svd(blocks)
    s0 = s[..., 0]
    # nearest lattice point (k + 0.25 + 0.5 bit) * scale, k >= 0
    base = np.floor(s0 / scale)
    cands = np.stack([(base + d + 0.25 + 0.5 * want) * scale for d in (-1.0, 0.0, 1.0)], axis=-1)
    cands[cands < 0] = np.inf
    target = np.take_along_axis(cands, np.abs(cands - s0[..., None]).argmin(-1)[..., None], -1)[..., 0]
    delta_blocks = (target - s0)[..., None, None] * (u_[..., :, 0][..., :, None] * vt[..., 0, :][..., None, :])
    delta_ll = np.zeros_like(ll)
    delta_ll[: nr * BLOCK, : nc * BLOCK] = delta_blocks.swapaxes(1, 2).reshape(nr * BLOCK, nc * BLOCK)
    delta_u = np.repeat(np.repeat(delta_ll, 2, axis=0), 2, axis=1) / 2.0
    out = rgb.copy()
    out[:r4, :c4, 2] += _KB * delta_u
    out[:r4, :c4, 1] += _KG * delta_u
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def _s0(u: np.ndarray) -> np.ndarray:
    """Largest singular value of every 4x4 LL block of ``u`` (eigenvalues of B^T B: exact, twice as fast as SVD)."""
    blocks = _blocks(_ll(u)).reshape(-1, BLOCK, BLOCK)
    gram = np.einsum("nij,nik->njk", blocks, blocks)
    rows, cols = u.shape[0] // 2 // BLOCK, u.shape[1] // 2 // BLOCK
    return np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[:, -1], 0.0)).reshape(rows, cols)


def _votes(s0: np.ndarray, scale: float) -> np.ndarray:
    """Per-block soft votes in [-1, 1] (positive = bit 1)."""
    return -np.sin(2.0 * np.pi * np.mod(s0 / scale, 1.0))


def _u_read(rgb: np.ndarray) -> np.ndarray:
    rows, cols = rgb.shape[:2]
    # the library's decoder reads U from a uint8 YUV conversion; rounding here keeps both decoders equal
    return np.rint(_u_channel(rgb[: rows // 4 * 4, : cols // 4 * 4]))


def _bit_scores(votes: np.ndarray, start: int = 0, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sum of votes per codeword bit and how many blocks voted for it; ``start``/``stride`` give the raster
    index of the first block and the original grid width (a crop placed back inside its canvas)."""
    nr, nc = votes.shape
    stride = nc if stride is None else stride
    idx = ((start + np.arange(nr)[:, None] * stride + np.arange(nc)[None, :]) % CODEWORD_BITS).ravel()
    sums = np.bincount(idx, weights=votes.ravel(), minlength=CODEWORD_BITS)
    counts = np.bincount(idx, minlength=CODEWORD_BITS)
    return sums, counts


# --- detection ------------------------------------------------------------------------------------

# Chroma gains tried when reading: brightness and contrast changes multiply U - 128 by their factor, which
# moves every singular value off the quantiser's lattice; dividing it back out before reading restores the
# lattice. The grid's ratio (3.5%) keeps the true gain within the ~2.5% a read tolerates.
GAINS = (1.0, *(round(1.035**i, 4) for i in range(1, 18)), round(1 / 1.035, 4), round(1 / 1.035**2, 4),
         round(1 / 1.035**3, 4))


@dataclass(frozen=True)
class Reading:
    """The raw codeword read under one hypothesis (geometry x chroma gain)."""

    geometry: str
    gain: float
    bits: np.ndarray  # 96 hard bits (0/1)
    seen: np.ndarray  # 96 bools: False where no block carried that bit (a crop can lose some)
    strength: float  # mean |vote sum| / votes per bit: ~0 for noise, ~0.7+ for a clean mark


@dataclass(frozen=True)
class Detection:
    """What ``detect`` found.

    ``detected`` is the decision at ``fpr``: the raw bits match the codeword (of ``expected`` when one was
    given, else of the Reed-Solomon-decoded payload) in at least ``threshold_bits`` of the bits read.
    """

    detected: bool
    payload: bytes | None  # Reed-Solomon-decoded payload (blind read), None if not decodable
    bit_accuracy: float  # matching bits / bits read, against the codeword the decision used (0.0 if none)
    matched_bits: int
    bits_read: int
    threshold_bits: int
    fpr: float
    p_value: float  # P(an unmarked image matches this many bits or more) under this one hypothesis
    geometry: str
    gain: float = 1.0
    corrected_bytes: int = 0
    expected: bytes | None = None
    hypotheses: int = 1
    strength: float = 0.0
    raw_bits: tuple[int, ...] = field(default=(), repr=False)

    @property
    def reference(self) -> bytes | None:
        """The payload the image carries, as far as the decision goes."""
        if self.payload is not None and self.detected:
            return self.payload
        return self.expected if self.detected else None

    @property
    def tenant_ref(self) -> str | None:
        ref = self.reference
        return ref[:2].hex() if ref else None

    @property
    def job_ref(self) -> str | None:
        ref = self.reference
        return ref[2:].hex() if ref else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD, "detected": self.detected,
            "payload_hex": self.reference.hex() if self.reference else None,
            "tenant_ref": self.tenant_ref, "job_ref": self.job_ref, "bit_accuracy": round(self.bit_accuracy, 4),
            "matched_bits": self.matched_bits, "bits_read": self.bits_read, "codeword_bits": CODEWORD_BITS,
            "threshold_bits": self.threshold_bits, "fpr": self.fpr, "p_value": float(f"{self.p_value:.3g}"),
            "geometry": self.geometry, "gain": self.gain, "hypotheses": self.hypotheses,
            "corrected_bytes": self.corrected_bytes, "strength": round(self.strength, 4),
        }


@dataclass
class _Geometry:
    name: str
    rgb: np.ndarray
    start: int = 0
    stride: int | None = None
    _u: np.ndarray | None = None

    def read(self, gain: float, scale: float) -> Reading:
        if self._u is None:
            self._u = _u_read(self.rgb)
        u = self._u if gain == 1.0 else 128.0 + (self._u - 128.0) / gain
        sums, counts = _bit_scores(_votes(_s0(u), scale), self.start, self.stride)
        seen = counts > 0
        strength = float(np.mean(np.abs(sums[seen]) / counts[seen])) if seen.any() else 0.0
        return Reading(self.name, gain, (sums > 0).astype(np.int8), seen, strength)


def _geometries(image: Image.Image, expected_size: tuple[int, int] | None) -> list[_Geometry]:
    """Every placement that could explain the image's size: as is, resized back, a centre crop put back."""
    img = image.convert("RGB")
    size = img.size
    if expected_size is None or tuple(expected_size) == size:
        return [_Geometry("as-is", _rgb(img))] if capacity(*size) >= MIN_BLOCKS else []
    ew, eh = _checked_size(expected_size)
    if _out_of_reach(size, (ew, eh)):
        return []
    out: list[_Geometry] = []
    if capacity(ew, eh) >= MIN_BLOCKS:
        out.append(_Geometry(f"resized {size[0]}x{size[1]}->{ew}x{eh}",
                             _rgb(img.resize((ew, eh), Image.Resampling.BICUBIC))))
    w, h = size
    if w <= ew and h <= eh:
        # a centre crop keeps the original pixel grid: read the whole 8x8 blocks it covers, numbered as they
        # were in the full image
        rows, cols = _block_grid(ew, eh)
        rgb = _rgb(img)
        for ox in sorted({(ew - w) // 2, (ew - w + 1) // 2}):
            for oy in sorted({(eh - h) // 2, (eh - h + 1) // 2}):
                bx0, by0 = -(-ox // 8), -(-oy // 8)
                bx1, by1 = min((ox + w) // 8, cols), min((oy + h) // 8, rows)
                if (bx1 - bx0) * (by1 - by0) < MIN_BLOCKS:
                    continue
                px, py = bx0 * 8 - ox, by0 * 8 - oy
                sub = rgb[py: py + (by1 - by0) * 8, px: px + (bx1 - bx0) * 8]
                out.append(_Geometry(f"centre-crop {w}x{h} at ({ox},{oy}) of {ew}x{eh}", sub, by0 * cols + bx0, cols))
    return out


def _checked_size(expected_size: tuple[int, int]) -> tuple[int, int]:
    ew, eh = int(expected_size[0]), int(expected_size[1])
    if ew <= 0 or eh <= 0:
        raise WatermarkError(f"an expected size must be positive, got {ew}x{eh}")
    return ew, eh


def _out_of_reach(size: tuple[int, int], expected_size: tuple[int, int]) -> bool:
    """True when ``expected_size`` is more than ``MAX_READ_SCALE`` times the image's ``size`` on a side."""
    return expected_size[0] > MAX_READ_SCALE * size[0] or expected_size[1] > MAX_READ_SCALE * size[1]


def detect(image: Image.Image, *, expected_size: tuple[int, int] | None = None, expected: bytes | None = None,
           candidates: list[bytes] | None = None, fpr: float = DEFAULT_FPR, gains: tuple[float, ...] = GAINS,
           scale: float = SCALE) -> Detection:
    """Read the watermark and decide at false-positive rate ``fpr``.

    Args:
        image: the image as found.
        expected_size: (width, height) it was marked at (from its C2PA manifest or artifact record); when
            the image has another size it is resized back, and a centre-crop placement is tried too. A size
            more than ``MAX_READ_SCALE`` times the image on a side is not read (the result says so); a
            non-positive one is a ``WatermarkError``.
        expected: a payload to test for (a known job); without it the read is blind (Reed-Solomon decode).
        candidates: several payloads to test for (a tenant's jobs); the rate is shared among them too.
        fpr: the false-positive rate the decision is stated at, shared out over the hypotheses tried
            (geometries x chroma gains); the first hypothesis that passes its share ends the search.
        gains: chroma gains to divide out (brightness/contrast changes); ``(1.0,)`` reads only as is.
    """
    geometries = _geometries(image, expected_size)
    plan = [(g, gain) for gain in gains for g in geometries]
    if not plan:
        why = "too small"
        if expected_size is not None and _out_of_reach(image.size, _checked_size(expected_size)):
            why = (f"expected size {int(expected_size[0])}x{int(expected_size[1])} is over {MAX_READ_SCALE}x the "
                   f"image's {image.width}x{image.height} on a side; not read")
        return Detection(False, None, 0.0, 0, 0, CODEWORD_BITS + 1, fpr, 1.0, why, expected=expected, hypotheses=0)
    tests = list(candidates) if candidates else ([expected] if expected is not None else [])
    share = fpr / len(plan) / max(1, len(tests))
    wants = np.stack([bits_of(codeword(p)) for p in tests]) if tests else None
    best: Detection | None = None
    for geometry, gain in plan:
        r = geometry.read(gain, scale)
        n = int(r.seen.sum())
        k = binomial_threshold(n, share)
        payload, fixed = None, 0
        if wants is None:
            payload, fixed = rs_decode(r.bits, r.seen)
            ref = bits_of(codeword(payload)) if payload is not None else None
        else:
            hits = ((wants == r.bits[None]) & r.seen[None]).sum(1)
            pick = int(np.argmax(hits))
            ref, expected = wants[pick], tests[pick]
        matched = int(np.sum((r.bits == ref) & r.seen)) if ref is not None else 0
        det = Detection(
            detected=ref is not None and matched >= k, payload=payload, bit_accuracy=matched / n if n else 0.0,
            matched_bits=matched, bits_read=n, threshold_bits=k, fpr=fpr,
            p_value=binomial_tail(n, matched) if ref is not None else 1.0, geometry=r.geometry, gain=gain,
            corrected_bytes=fixed, expected=expected, hypotheses=len(plan), strength=r.strength,
            raw_bits=tuple(int(b) for b in r.bits),
        )
        if best is None or (det.detected, det.bit_accuracy, det.strength) > (best.detected, best.bit_accuracy,
                                                                              best.strength):
            best = det
        if det.detected:
            break
    assert best is not None
    return best


def rs_decode(bits: np.ndarray, seen: np.ndarray) -> tuple[bytes | None, int]:
    """The payload a read codeword decodes to (Reed-Solomon; bits not ``seen`` are erasures), and how many bytes
    were corrected; ``(None, 0)`` when it does not decode."""
    data = _whiten(bytes(np.packbits(bits.astype(np.uint8))))
    erase = [i for i in range(CODEWORD_BYTES) if not seen[i * 8:(i + 1) * 8].all()]
    if len(erase) > PARITY_BYTES:
        return None, 0
    try:
        message, _full, errata = _codec().decode(data, erase_pos=erase or None)
    except ReedSolomonError:
        return None, 0
    return bytes(message), len(errata)


def read_bits(image: Image.Image, *, scale: float = SCALE) -> np.ndarray:
    """The raw 96 hard bits of ``image`` as it is (no resizing, no gain search): for cross-checks."""
    return _Geometry("as-is", _rgb(image)).read(1.0, scale).bits


def procedural(size: int, seed: int) -> Image.Image:
    """A natural-ish test image (smooth colour waves, flat shapes, a little blur and sensor noise): what the
    robustness suite (bench/watermark_bench.py) and the tests mark, since no image data set can be downloaded here."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for c in range(3):
        for _ in range(6):
            fx, fy, ph = rng.uniform(0.5, 6), rng.uniform(0.5, 6), rng.uniform(0, 6.28)
            img[..., c] += rng.uniform(10, 40) * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
        img[..., c] += rng.uniform(60, 190)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        s = int(rng.integers(10, size // 3))
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x0 + s, y0 + s), fill=col)
    arr = np.asarray(im.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float64) + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
