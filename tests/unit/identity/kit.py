"""Test helpers: drawn faces the Haar cascade finds, and a tiny TorchScript face embedder built here."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ASHA = {"skin": (224, 180, 150), "hair": (40, 25, 15)}
RAMU = {"skin": (120, 200, 235), "hair": (30, 30, 90)}


def face(size: int = 256, *, skin: tuple[int, int, int] = ASHA["skin"], hair: tuple[int, int, int] = ASHA["hair"],
         bg: tuple[int, int, int] = (90, 140, 200), cx: float = 0.5, cy: float = 0.5, scale: float = 0.5,
         canvas: Image.Image | None = None) -> Image.Image:
    """A frontal cartoon face (hair, skin oval, eyes with brows, nose, mouth), softly blurred."""
    im = canvas.copy() if canvas is not None else Image.new("RGB", (size, size), bg)
    size = im.width
    d = ImageDraw.Draw(im)
    s = size * scale
    x0, y0 = size * cx - s / 2, im.height * cy - s / 2

    def at(fx: float, fy: float) -> tuple[float, float]:
        return (x0 + fx * s, y0 + fy * s)

    d.ellipse([*at(0.0, -0.12), *at(1.0, 0.6)], fill=hair)
    d.ellipse([*at(0.08, 0.0), *at(0.92, 1.12)], fill=skin)
    shade = tuple(int(c * 0.8) for c in skin)
    for ex in (0.3, 0.7):
        d.ellipse([*at(ex - 0.12, 0.36), *at(ex + 0.12, 0.47)], fill=(245, 245, 245))
        d.ellipse([*at(ex - 0.06, 0.37), *at(ex + 0.06, 0.47)], fill=(40, 30, 30))
        d.rectangle([*at(ex - 0.14, 0.28), *at(ex + 0.14, 0.32)], fill=(60, 40, 20))
    d.polygon([at(0.5, 0.45), at(0.43, 0.68), at(0.57, 0.68)], fill=shade)
    d.ellipse([*at(0.33, 0.8), *at(0.67, 0.9)], fill=(170, 70, 70))
    return im.filter(ImageFilter.GaussianBlur(2.0))


def write_embedder(path: Path) -> Path:
    """A TorchScript 'face embedder': the 2x2 average colour layout of the crop's centre (12-d)."""
    import torch

    class ColourLayout(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            centre = x[:, :, 24:88, 24:88]
            return torch.nn.functional.adaptive_avg_pool2d(centre, 2).flatten(1)

    torch.jit.save(torch.jit.script(ColourLayout()), str(path))
    return path
