"""W-Bench-style robustness of the watermark, on this CPU: ``make bench`` → bench/results.json key ``watermark``.

Images: no data set may be downloaded, so the suite marks procedural 512x512 images (smooth colour waves,
flat shapes, blur and sensor noise: the chroma statistics the DWT-DCT-SVD mark lives in) with the job
payload, applies each distortion, and reads the mark back the way ``atelier verify`` does (resized back to
the recorded size, centre crops put back in place, chroma gains divided out).

Per distortion: mean bit accuracy against the payload's codeword, TPR at 1% and 0.1% FPR (binomial
thresholds on matching bits, shared among the hypotheses tried), and the blind read rate (the payload
itself recovered by Reed-Solomon, i.e. the job reference). The empirical FPR is measured on unmarked
images with the same detector (every hypothesis tried).

Small placements (``small_placements``): the IAB units and 234x60, marked at their own size as ``gpu.watermark``
marks them, read after JPEG 85 and 70 (TPR at 0.1% FPR, payload recovered), and the FPR on unmarked images.

Usage: python bench/watermark_bench.py [--images 32] [--unmarked 48] [--size 512] [--small-only]
(README figures: 40 / 60)
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
sys.path.insert(0, str(ROOT / "provenance" / "src"))

from atelier_provenance import watermark as wm  # noqa: E402

PAYLOAD = wm.payload_for("bench-tenant", "bench-job")
procedural = wm.procedural


def jpeg(q: int) -> Callable[[Image.Image], Image.Image]:
    def f(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return f


def resize(s: float) -> Callable[[Image.Image], Image.Image]:
    return lambda im: im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)


def resize_back(s: float) -> Callable[[Image.Image], Image.Image]:
    return lambda im: resize(s)(im).resize(im.size, Image.Resampling.BICUBIC)


def crop(f: float) -> Callable[[Image.Image], Image.Image]:
    def c(im: Image.Image) -> Image.Image:
        w, h = round(im.width * f), round(im.height * f)
        x, y = (im.width - w) // 2, (im.height - h) // 2
        return im.crop((x, y, x + w, y + h))
    return c


def noise(sigma: float) -> Callable[[Image.Image], Image.Image]:
    def n(im: Image.Image) -> Image.Image:
        rng = np.random.default_rng(0)
        arr = np.asarray(im, dtype=np.float64) / 255.0 + rng.normal(0, sigma, (im.height, im.width, 3))
        return Image.fromarray(np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8))
    return n


ATTACKS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "none": lambda im: im,
    "jpeg_90": jpeg(90), "jpeg_70": jpeg(70), "jpeg_50": jpeg(50),
    "resize_0.5": resize(0.5), "resize_0.75": resize(0.75),
    "resize_0.5_back": resize_back(0.5), "resize_0.75_back": resize_back(0.75),
    "centre_crop_80": crop(0.8),
    "blur_r1": lambda im: im.filter(ImageFilter.GaussianBlur(1)),
    "blur_r2": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "blur_r3": lambda im: im.filter(ImageFilter.GaussianBlur(3)),
    "brightness_1.2": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "brightness_1.4": lambda im: ImageEnhance.Brightness(im).enhance(1.4),
    "brightness_1.6": lambda im: ImageEnhance.Brightness(im).enhance(1.6),
    "contrast_1.2": lambda im: ImageEnhance.Contrast(im).enhance(1.2),
    "contrast_1.5": lambda im: ImageEnhance.Contrast(im).enhance(1.5),
    "noise_0.02": noise(0.02), "noise_0.04": noise(0.04), "noise_0.06": noise(0.06),
    "jpeg_75_resize_0.75": lambda im: jpeg(75)(resize(0.75)(im)),
}


def run(images: int, unmarked: int, size: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    marked = [wm.embed(procedural(size, s), PAYLOAD) for s in range(images)]
    psnr = []
    for s, m in enumerate(marked):
        diff = np.asarray(procedural(size, s), dtype=np.float64) - np.asarray(m, dtype=np.float64)
        psnr.append(10 * np.log10(255.0**2 / np.mean(diff**2)))
    rows: dict[str, Any] = {}
    for name, attack in ATTACKS.items():
        acc, tpr1, tpr01, blind = [], [], [], []
        for m in marked:
            img = attack(m)
            d1 = wm.detect(img, expected_size=m.size, expected=PAYLOAD, fpr=1e-2)
            d01 = wm.detect(img, expected_size=m.size, expected=PAYLOAD, fpr=1e-3)
            b = wm.detect(img, expected_size=m.size, fpr=1e-3)
            acc.append(d1.bit_accuracy)
            tpr1.append(d1.detected)
            tpr01.append(d01.detected)
            blind.append(b.detected and b.payload == PAYLOAD)
        rows[name] = {"bit_accuracy": round(float(np.mean(acc)), 4), "tpr_at_1pct_fpr": round(float(np.mean(tpr1)), 4),
                      "tpr_at_0.1pct_fpr": round(float(np.mean(tpr01)), 4),
                      "payload_recovered": round(float(np.mean(blind)), 4)}
        print(f"{name:22s} {rows[name]}", flush=True)
    fp1 = fp01 = fpb = 0
    for s in range(unmarked):
        im = procedural(size, 10_000 + s)
        fp1 += wm.detect(im, expected=PAYLOAD, fpr=1e-2).detected
        fp01 += wm.detect(im, expected=PAYLOAD, fpr=1e-3).detected
        fpb += wm.detect(im, fpr=1e-3).detected
    return {
        "method": wm.METHOD, "codeword_bits": wm.CODEWORD_BITS, "payload_bits": wm.PAYLOAD_BYTES * 8,
        "images": images, "unmarked_images": unmarked, "size": size, "psnr_db": round(float(np.mean(psnr)), 2),
        "thresholds_bits": {"fpr_1pct": wm.binomial_threshold(96, 1e-2), "fpr_0.1pct": wm.binomial_threshold(96, 1e-3)},
        "empirical_fpr": {"at_1pct": fp1 / unmarked, "at_0.1pct": fp01 / unmarked, "blind_at_0.1pct": fpb / unmarked},
        "attacks": rows, "seconds": round(time.perf_counter() - t0, 1),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": "2-core CPU, no GPU",
    }


# the small and extreme-aspect ad placements (atelier_contracts.placements) and IAB's 234x60 half banner
SMALL_SIZES = ((300, 250), (320, 50), (728, 90), (320, 100), (160, 600), (234, 60))
SMALL_ATTACKS = {"none": ATTACKS["none"], "jpeg_85": jpeg(85), "jpeg_70": jpeg(70)}


def small_placements(images: int, unmarked: int) -> dict[str, Any]:
    """TPR at 0.1% FPR on the small placements, as marked by ``gpu.watermark`` (at the asset's own size), after
    JPEG; the empirical FPR on unmarked images of each size."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    for w, h in SMALL_SIZES:
        def image(seed: int, w: int = w, h: int = h) -> Image.Image:
            return procedural(max(w, h), seed).crop((0, 0, w, h))
        marked = [wm.embed(image(s), PAYLOAD) for s in range(images)]
        row: dict[str, Any] = {"blocks": wm.capacity(w, h), "votes_per_bit": round(wm.capacity(w, h) / wm.CODEWORD_BITS, 2)}
        for name, attack in SMALL_ATTACKS.items():
            hits = blind = 0
            for m in marked:
                img = attack(m)
                hits += wm.detect(img, expected=PAYLOAD, fpr=1e-3).detected
                b = wm.detect(img, fpr=1e-3)
                blind += b.detected and b.payload == PAYLOAD
            row[name] = {"tpr_at_0.1pct_fpr": round(hits / images, 4), "payload_recovered": round(blind / images, 4)}
        row["empirical_fpr_at_0.1pct"] = sum(wm.detect(image(20_000 + s), expected=PAYLOAD, fpr=1e-3).detected
                                             for s in range(unmarked)) / unmarked
        out[f"{w}x{h}"] = row
        print(f"{w}x{h:<5d} {row}", flush=True)
    return {"images": images, "unmarked_images": unmarked, "sizes": out, "seconds": round(time.perf_counter() - t0, 1),
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": "2-core CPU, no GPU"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--unmarked", type=int, default=48)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--small-only", action="store_true", help="only the small placements (kept beside the rest)")
    args = ap.parse_args()
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    small = small_placements(args.images, args.unmarked)
    if args.small_only:
        data.setdefault("watermark", {})["small_placements"] = small
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
        return
    result = run(args.images, args.unmarked, args.size)
    result["small_placements"] = small
    data["watermark"] = result  # merge: other benchmarks' keys stay
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "attacks"}, indent=2))


if __name__ == "__main__":
    main()
