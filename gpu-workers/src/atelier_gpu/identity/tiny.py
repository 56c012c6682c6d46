"""A tiny face 'recogniser' written here (no weights downloaded), for tests and the tiny InstantID demo.

It is not a face model: it embeds the colour layout of the crop's centre (the 2x2 average colour of the
middle 64x64 pixels of the 112x112 input, 12 numbers), optionally mixed into ``dim`` dimensions by a seeded
random projection, so faces drawn in different colours get different embeddings and the same face the same
one. The module is saved with TorchScript, a format ``identity.embedder.Embedder`` loads like an ArcFace ONNX
(same ``[N, 3, 112, 112]`` input in [-1, 1]).

``write_tiny_embedder(path)`` is the 12-d embedder of the identity gate tests; ``write_tiny_embedder(path,
dim=512)`` is the face model of ``atelier_gpu.tiny.init_tiny_instantid`` (antelopev2's 512-d width, the
input width of InstantID's Resampler).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LAYOUT_DIM = 12  # 2x2 cells x 3 colour channels


def build_tiny_embedder(dim: int | None = None, *, seed: int = 0) -> Any:
    """The colour-layout module: ``[N, 3, 112, 112]`` → ``[N, dim]`` (``dim=None``: the 12 layout values)."""
    import torch  # heavy (torch): loaded on first use

    class ColourLayout(torch.nn.Module):
        def __init__(self, projection: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("projection", projection)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            centre = x[:, :, 24:88, 24:88]
            return torch.nn.functional.adaptive_avg_pool2d(centre, 2).flatten(1) @ self.projection

    if dim is None:
        projection = torch.eye(LAYOUT_DIM)
    else:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        projection = torch.randn(LAYOUT_DIM, dim, generator=torch.Generator().manual_seed(seed))
    return ColourLayout(projection).eval()


def write_tiny_embedder(path: Path, *, dim: int | None = None, seed: int = 0) -> Path:
    """Write ``build_tiny_embedder(dim, seed=seed)`` as TorchScript to ``path`` (e.g. ``recognition.pt``)."""
    import torch  # heavy (torch): loaded on first use

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(build_tiny_embedder(dim, seed=seed)), str(path))
    return path
