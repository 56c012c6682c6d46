"""Offline face detection: OpenCV's Viola-Jones Haar cascades, evaluated in numpy.

OpenCV 5 dropped ``cv2.CascadeClassifier`` from its main modules and the PyPI wheels no longer ship the
cascade files, so this module reads the classic ``haarcascade_frontalface_default.xml`` (Debian's
``opencv-data`` package, or any path in ``ATELIER_IDENTITY_CASCADE_PATH``) and evaluates it the way
OpenCV's ``detectMultiScale`` does:

* an image pyramid (factor 1.1) with a 24x24 window, stride 2 below scale 2 and 1 above;
* each window's features are normalised by the standard deviation of its inner 22x22 area;
* a window survives a stage when the sum of its weak classifiers' leaf values reaches the stage threshold;
* raw hits are grouped (``groupRectangles``: eps 0.2, at least ``min_neighbors`` + 1 per group).

All windows of a pyramid level are evaluated at once, stage by stage (numpy gathers on the integral
image), so a 512x512 image takes well under a second on a CPU.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

CASCADE_NAME = "haarcascade_frontalface_default.xml"
EYE_CASCADE_NAME = "haarcascade_eye.xml"
SEARCH_DIRS = ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades",
               "/usr/local/share/opencv4/haarcascades")


class FaceModelMissing(RuntimeError):
    """No cascade file to detect faces with."""


@dataclass(frozen=True)
class Face:
    """A detected face: box (x, y, w, h) in pixels, how many raw windows voted for it, and the five landmarks
    (eyes, nose tip, mouth corners, in image pixels) when the detector gives them (YuNet does, Haar does not)."""

    x: int
    y: int
    w: int
    h: int
    neighbors: int
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.w, self.y + self.h)

    def keypoints(self) -> list[tuple[float, float]]:
        """Five canonical landmarks (eyes, nose, mouth corners) placed in the box (no landmark model here)."""
        rel = ((0.31, 0.40), (0.69, 0.40), (0.50, 0.60), (0.35, 0.78), (0.65, 0.78))
        return [(self.x + fx * self.w, self.y + fy * self.h) for fx, fy in rel]


@dataclass(frozen=True)
class _Stage:
    threshold: float
    feat_thresh: np.ndarray  # (n,)
    left: np.ndarray  # (n,) leaf when value < threshold
    right: np.ndarray  # (n,)
    rects: np.ndarray  # (n, 3, 4) x, y, w, h
    weights: np.ndarray  # (n, 3)


@dataclass(frozen=True)
class Cascade:
    width: int
    height: int
    stages: tuple[_Stage, ...]
    path: str


def find_cascade(configured: Path | None = None, *, name: str = CASCADE_NAME) -> Path:
    """The cascade to use: the configured file, else OpenCV's cascade ``name`` (frontal faces) where OpenCV
    installs it."""
    if configured is not None:
        if not Path(configured).is_file():
            raise FaceModelMissing(f"ATELIER_IDENTITY_CASCADE_PATH={configured} does not exist")
        return Path(configured)
    candidates = []
    try:
        import cv2  # heavy (OpenCV): loaded on first use

        candidates.append(Path(cv2.data.haarcascades) / name)
    except (ImportError, AttributeError):
        pass
    candidates += [Path(d) / name for d in SEARCH_DIRS]
    for c in candidates:
        if c.is_file():
            return c
    raise FaceModelMissing(f"no {name}: install Debian's opencv-data (infra/dev/apt-packages.txt) or set "
                           "ATELIER_IDENTITY_CASCADE_PATH")


@lru_cache(maxsize=4)
def load_cascade(path: str) -> Cascade:
    """Parse an OpenCV (new format, BOOST + HAAR, stump) cascade XML."""
    root = ET.parse(path).getroot()
    node = root.find("cascade")
    if node is None or (node.findtext("featureType") or "").strip() != "HAAR":
        raise FaceModelMissing(f"{path} is not an OpenCV HAAR cascade")
    width, height = int(node.findtext("width") or 0), int(node.findtext("height") or 0)
    feats = []
    for f in node.find("features") or []:
        rs = [[float(v) for v in (r.text or "").split()] for r in f.find("rects") or []]
        if (f.findtext("tilted") or "0").strip() == "1":
            raise FaceModelMissing(f"{path}: tilted Haar features are not supported")
        feats.append(rs)
    stages = []
    for st in node.find("stages") or []:
        idx, thr, left, right = [], [], [], []
        for wc in st.find("weakClassifiers") or []:
            internal = (wc.findtext("internalNodes") or "").split()
            leaves = [float(v) for v in (wc.findtext("leafValues") or "").split()]
            if len(internal) != 4 or len(leaves) != 2:
                raise FaceModelMissing(f"{path}: only stump weak classifiers are supported")
            idx.append(int(internal[2]))
            thr.append(float(internal[3]))
            left.append(leaves[0])
            right.append(leaves[1])
        rects = np.zeros((len(idx), 3, 4), dtype=np.int64)
        weights = np.zeros((len(idx), 3))
        for i, fi in enumerate(idx):
            for j, r in enumerate(feats[fi][:3]):
                rects[i, j] = r[:4]
                weights[i, j] = r[4]
        stages.append(_Stage(float(st.findtext("stageThreshold") or 0), np.array(thr), np.array(left),
                             np.array(right), rects, weights))
    return Cascade(width, height, tuple(stages), path)


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64)


def _corner_offsets(stage: _Stage, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat integral-image offsets of every rect corner of a stage's features, and their signed weights."""
    x, y, w, h = (stage.rects[..., i] for i in range(4))  # (f, 3)
    offs = np.stack([(y + h) * stride + x + w, y * stride + x + w, (y + h) * stride + x, y * stride + x], -1)
    signs = np.array([1.0, -1.0, -1.0, 1.0])
    coef = stage.weights[..., None] * signs  # (f, 3, 4)
    return offs.reshape(len(x), -1), coef.reshape(len(x), -1)


def _windows(cascade: Cascade, gray: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of the windows of one pyramid level that pass every stage."""
    h, w = gray.shape
    ww, wh = cascade.width, cascade.height
    if h < wh or w < ww:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    stride = w + 1
    ii = np.zeros((h + 1, w + 1))
    ii[1:, 1:] = gray.cumsum(0).cumsum(1)
    sq = np.zeros((h + 1, w + 1))
    sq[1:, 1:] = (gray * gray).cumsum(0).cumsum(1)
    flat, flat_sq = ii.ravel(), sq.ravel()
    ys, xs = np.meshgrid(np.arange(0, h - wh + 1, step), np.arange(0, w - ww + 1, step), indexing="ij")
    base = (ys * stride + xs).ravel()
    # variance normalisation over the inner window (OpenCV's normrect: 1 pixel in from each side)
    nw, nh = ww - 2, wh - 2
    a, b, c, d = (nh + 1) * stride + nw + 1, stride + nw + 1, (nh + 1) * stride + 1, stride + 1
    s = flat[base + a] - flat[base + b] - flat[base + c] + flat[base + d]
    s2 = flat_sq[base + a] - flat_sq[base + b] - flat_sq[base + c] + flat_sq[base + d]
    nf = nw * nh * s2 - s * s
    inv = 1.0 / np.where(nf > 0, np.sqrt(np.maximum(nf, 0)), 1.0)
    for stage in cascade.stages:
        if base.size == 0:
            break
        offs, coef = _corner_offsets(stage, stride)
        # OpenCV's HaarEvaluator: sum(weight * rect sum) / sqrt(area * sum(x^2) - sum(x)^2) of the inner window
        value = np.einsum("nfk,fk->nf", flat[base[:, None, None] + offs[None]], coef) * inv[:, None]
        leaf = np.where(value < stage.feat_thresh[None], stage.left[None], stage.right[None])
        keep = leaf.sum(-1) >= stage.threshold
        base, inv = base[keep], inv[keep]
    return base % stride, base // stride


def _group(rects: list[tuple[int, int, int, int]], min_neighbors: int, eps: float = 0.2
           ) -> list[tuple[int, int, int, int, int]]:
    """OpenCV's groupRectangles: cluster similar boxes, keep clusters with more than ``min_neighbors``."""
    n = len(rects)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            a, b = rects[i], rects[j]
            delta = eps * (min(a[2], b[2]) + min(a[3], b[3])) * 0.5
            if (abs(a[0] - b[0]) <= delta and abs(a[1] - b[1]) <= delta and abs(a[0] + a[2] - b[0] - b[2]) <= delta
                    and abs(a[1] + a[3] - b[1] - b[3]) <= delta):
                parent[find(i)] = find(j)
    clusters: dict[int, list[tuple[int, int, int, int]]] = {}
    for i, r in enumerate(rects):
        clusters.setdefault(find(i), []).append(r)
    out = []
    for members in clusters.values():
        if len(members) <= min_neighbors:
            continue
        arr = np.array(members, dtype=np.float64)
        x, y, w, h = (int(round(v)) for v in arr.mean(0))
        out.append((x, y, w, h, len(members)))
    # drop boxes inside a bigger, better-supported one (OpenCV's second pass)
    kept = []
    for a in out:
        inside = False
        for b in out:
            if a is b or b[4] < max(3, a[4]):
                continue
            dx, dy = round(b[2] * eps), round(b[3] * eps)
            if a[0] >= b[0] - dx and a[1] >= b[1] - dy and a[0] + a[2] <= b[0] + b[2] + dx and a[1] + a[3] <= b[1] + b[3] + dy:
                inside = True
                break
        if not inside:
            kept.append(a)
    return kept


class FaceDetector:
    """Frontal faces in an image (largest first)."""

    def __init__(self, cascade_path: Path | None = None, *, scale_factor: float = 1.1, min_neighbors: int = 3,
                 min_fraction: float = 0.08, max_side: int = 512) -> None:
        self.cascade = load_cascade(str(find_cascade(cascade_path)))
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.min_fraction, self.max_side = min_fraction, max_side

    def detect(self, image: Image.Image) -> list[Face]:
        # detection works on a copy no larger than max_side (faces smaller than that are not identities anyway)
        shrink = min(1.0, self.max_side / max(image.size))
        work = image if shrink == 1.0 else image.resize((max(1, round(image.width * shrink)),
                                                         max(1, round(image.height * shrink))), Image.Resampling.BILINEAR)
        base = _gray(work)
        raw: list[tuple[int, int, int, int]] = []
        factor = 1.0
        cw, ch = self.cascade.width, self.cascade.height
        # faces smaller than min_fraction of the short side are too small to carry an identity
        min_size = max(cw, self.min_fraction * min(base.shape))
        while True:
            sw, sh = round(base.shape[1] / factor), round(base.shape[0] / factor)
            if sw < cw or sh < ch:
                break
            if cw * factor >= min_size:
                level = base if factor == 1.0 else _gray(work.resize((sw, sh), Image.Resampling.BILINEAR))
                xs, ys = _windows(self.cascade, level, 1 if factor > 2 else 2)
                raw += [(round(x * factor), round(y * factor), round(cw * factor), round(ch * factor))
                        for x, y in zip(xs.tolist(), ys.tolist(), strict=True)]
            factor *= self.scale_factor
        faces = [Face(round(x / shrink), round(y / shrink), round(w / shrink), round(h / shrink), n)
                 for x, y, w, h, n in _group(raw, self.min_neighbors)]
        return sorted(faces, key=lambda f: f.w * f.h, reverse=True)


def crop_face(image: Image.Image, face: Face, *, margin: float = 0.15, size: int = 112) -> Image.Image:
    """A square crop around the face (``margin`` of its size on each side), resized to ``size``."""
    side = max(face.w, face.h) * (1 + 2 * margin)
    cx, cy = face.x + face.w / 2, face.y + face.h / 2
    box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    return image.convert("RGB").crop(box).resize((size, size), Image.Resampling.BICUBIC)
