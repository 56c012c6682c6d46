"""Face embedders: a face crop in, an L2-normalised identity vector out.

Two formats, both loaded from a local path (``ATELIER_IDENTITY_EMBEDDER_PATH``), never downloaded:

* ``.onnx``: an ArcFace-style recogniser (insightface's ``w600k_r50.onnx``/``glintr100.onnx``, OpenCV's
  SFace, ...) run by OpenCV's dnn module: 112x112 RGB, (x - 127.5) / 127.5, NCHW;
* ``.pt``/``.ts``/``.jit``: a TorchScript module taking the same tensor ``[N, 3, 112, 112]``.

Whatever the model outputs is flattened and L2-normalised, so the identity score is a plain dot product
(cosine similarity, as in ArcFace and ID-Aligner's identity reward).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

INPUT_SIDE = 112


class EmbedderMissing(RuntimeError):
    """No embedder is configured, or its file cannot be read."""


def _blob(crops: list[Image.Image], side: int) -> np.ndarray:
    arr = np.stack([np.asarray(c.convert("RGB").resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
                    for c in crops])
    return np.ascontiguousarray(((arr - 127.5) / 127.5).transpose(0, 3, 1, 2))


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.reshape(len(vectors), -1).astype(np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


class Embedder:
    """Loaded once per worker; ``embed`` takes face crops and returns unit vectors (one row each)."""

    def __init__(self, path: Path, *, side: int = INPUT_SIDE) -> None:
        self.path, self.side = Path(path), side
        if not self.path.is_file():
            raise EmbedderMissing(f"face embedder {self.path} does not exist")
        suffix = self.path.suffix.lower()
        self._net: Any = None
        self._module: Any = None
        if suffix == ".onnx":
            import cv2  # heavy (OpenCV): loaded on first use

            try:
                self._net = cv2.dnn.readNetFromONNX(str(self.path))
            except cv2.error as exc:
                raise EmbedderMissing(f"OpenCV cannot read {self.path}: {exc}") from exc
        elif suffix in (".pt", ".ts", ".jit", ".torchscript"):
            import torch  # heavy (torch): loaded on first use

            self._module = torch.jit.load(str(self.path), map_location="cpu").eval()
        else:
            raise EmbedderMissing(f"face embedder {self.path}: expected .onnx (OpenCV dnn) or .pt (TorchScript)")

    def embed(self, crops: list[Image.Image], *, normalise: bool = True) -> np.ndarray:
        """One row per crop: unit vectors, or the model's raw output with ``normalise=False`` (what InstantID's
        Resampler takes: insightface's ``face.embedding``, not ``normed_embedding``)."""
        if not crops:
            return np.zeros((0, 0))
        blob = _blob(crops, self.side)
        if self._net is not None:
            out = []
            for i in range(len(blob)):  # many exported recognisers have a fixed batch of 1
                self._net.setInput(blob[i: i + 1])
                out.append(np.asarray(self._net.forward()).reshape(-1))
            raw = np.stack(out)
        else:
            import torch  # heavy (torch): loaded on first use

            with torch.inference_mode():
                raw = self._module(torch.from_numpy(blob)).cpu().numpy()
        raw = raw.reshape(len(raw), -1).astype(np.float64)
        return _normalise(raw) if normalise else raw


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (unit vectors from ``Embedder.embed``)."""
    return float(np.dot(_normalise(a[None])[0], _normalise(b[None])[0]))
