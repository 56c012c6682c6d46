"""Face alignment before embedding: five landmarks → the ArcFace 112x112 template (insightface's ``norm_crop``).

ArcFace-style recognisers were trained on faces warped so that the eyes, the nose tip and the mouth corners
land on five fixed points of a 112x112 crop (``ARCFACE_TEMPLATE``); a square crop of a detector's box
leaves a tilted or off-centre face where the model never saw one, and scores it low. Here:

* ``similarity_transform`` is the least-squares similarity (rotation, uniform scale, translation; no
  reflection) between two point sets: Umeyama's closed form, what insightface's ``estimate_norm`` gets from
  skimage's ``SimilarityTransform``;
* ``align_face`` warps the image with it (``cv2.warpAffine``, black outside the picture as ``norm_crop``);
* ``FaceFinder`` finds faces (a YuNet ONNX when one is configured — it gives the five landmarks — and the
  Haar cascade of ``faces``) and the landmarks of a face, recording where they came from
  (``Landmarks.source``): ``"detector"`` (YuNet's), ``"eyes"`` (OpenCV's ``haarcascade_eye.xml`` inside
  the upper face box: both eyes fix rotation, scale and position, and the nose and mouth follow the
  template), or ``"box"`` (canonical points in the detector's box: ``Face.keypoints``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .faces import EYE_CASCADE_NAME, Face, FaceDetector, FaceModelMissing, find_cascade

# insightface's arcface_dst: left eye, right eye (image left/right), nose tip, left and right mouth corners
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
TEMPLATE_SIDE = 112
SOURCES = ("detector", "eyes", "box")


@dataclass(frozen=True)
class Landmarks:
    """Five points (eyes, nose tip, mouth corners; image pixels) and where they came from (``SOURCES``)."""

    points: tuple[tuple[float, float], ...]
    source: str

    def as_list(self) -> list[list[float]]:
        return [[round(x, 1), round(y, 1)] for x, y in self.points]


def template(size: int = TEMPLATE_SIDE) -> np.ndarray:
    """The ArcFace reference points for a ``size`` x ``size`` crop."""
    return ARCFACE_TEMPLATE * (size / TEMPLATE_SIDE)


def similarity_transform(src: Any, dst: Any) -> np.ndarray:
    """The 2x3 similarity matrix ``M`` minimising ``sum |M @ [src, 1] - dst|^2`` (Umeyama, 1991)."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching (n >= 2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s * s).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("the source points coincide")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection: flip the weakest axis
        fix[1, 1] = -1.0
    rot = u @ fix @ vt
    scale = float((sig * np.diag(fix)).sum() / var_s)
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply(matrix: np.ndarray, points: Any) -> np.ndarray:
    """``points`` (n, 2) through a 2x3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def alignment_matrix(landmarks: Landmarks | Any, size: int = TEMPLATE_SIDE) -> np.ndarray:
    """The transform taking the face's five landmarks (image pixels) onto the template of a ``size`` crop."""
    points = landmarks.points if isinstance(landmarks, Landmarks) else landmarks
    return similarity_transform(points, template(size))


def align_face(image: Image.Image, landmarks: Landmarks | Any, *, size: int = TEMPLATE_SIDE) -> Image.Image:
    """The ``size`` x ``size`` aligned face crop (insightface's ``norm_crop``)."""
    import cv2  # heavy (OpenCV): loaded on first use

    arr = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    warped = cv2.warpAffine(arr, alignment_matrix(landmarks, size), (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return Image.fromarray(warped)


def landmarks_from_eyes(left: tuple[float, float], right: tuple[float, float]) -> tuple[tuple[float, float], ...]:
    """Five points from the two eye centres (image left, image right): the template placed by the similarity
    that puts its eyes on them (exact for two points), so nose and mouth follow the eyes' tilt and distance."""
    tl, tr = complex(*ARCFACE_TEMPLATE[0]), complex(*ARCFACE_TEMPLATE[1])
    el, er = complex(*left), complex(*right)
    a = (er - el) / (tr - tl)
    b = el - a * tl
    out = (a * complex(x, y) + b for x, y in ARCFACE_TEMPLATE)
    return tuple((z.real, z.imag) for z in out)


def find_yunet(folder: Path | None) -> Path | None:
    """A YuNet face detector (``face_detection_yunet*.onnx``) in a face model folder, or None."""
    if folder is None or not Path(folder).is_dir():
        return None
    found = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() == ".onnx"
                   and "yunet" in p.name.lower())
    return found[0] if found else None


class YuNetDetector:
    """OpenCV's ``FaceDetectorYN`` on a local YuNet ONNX: boxes with five landmarks (largest face first)."""

    def __init__(self, path: Path, *, score_threshold: float = 0.6) -> None:
        import cv2  # heavy (OpenCV): loaded on first use

        self.path = Path(path)
        try:
            self._det = cv2.FaceDetectorYN.create(str(self.path), "", (320, 320), score_threshold)
        except cv2.error as exc:
            raise FaceModelMissing(f"OpenCV cannot read the YuNet detector {self.path}: {exc}") from exc

    def detect(self, image: Image.Image) -> list[Face]:
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        self._det.setInputSize((image.width, image.height))
        _, found = self._det.detect(bgr)
        faces = []
        for f in [] if found is None else found:
            # YuNet: box, right eye (image left), left eye, nose tip, right and left mouth corners, score
            pts = tuple((float(f[4 + 2 * i]), float(f[5 + 2 * i])) for i in range(5))
            faces.append(Face(int(round(f[0])), int(round(f[1])), int(round(f[2])), int(round(f[3])), 1, pts))
        return sorted(faces, key=lambda fc: fc.w * fc.h, reverse=True)


def _eye_cascade_beside(face_cascade: str) -> FaceDetector | None:
    """The eye detector: ``haarcascade_eye.xml`` beside the face cascade, else where OpenCV installs it."""
    beside = Path(face_cascade).with_name(EYE_CASCADE_NAME)
    try:
        path = beside if beside.is_file() else find_cascade(name=EYE_CASCADE_NAME)
        # eyes are at least ~12% of the face box; the face crop is resized so that they span 20+ pixels
        return FaceDetector(path, min_neighbors=2, min_fraction=0.15, max_side=256)
    except FaceModelMissing:
        return None


class FaceFinder:
    """Faces and their landmarks: YuNet (with landmarks) when configured, then the Haar cascade; for a Haar
    face, the eyes found by the eye cascade inside it, else canonical points in its box."""

    EYE_FACE_WIDTH = 160  # the face box is resized to this width before the eye cascade runs

    def __init__(self, detector: FaceDetector, *, yunet: YuNetDetector | None = None, eyes: bool = True) -> None:
        self.detector, self.yunet = detector, yunet
        self.eye_detector = _eye_cascade_beside(detector.cascade.path) if eyes else None

    @classmethod
    def wrap(cls, detector: FaceDetector | FaceFinder) -> FaceFinder:
        return detector if isinstance(detector, FaceFinder) else cls(detector)

    def detect(self, image: Image.Image, region: tuple[int, int, int, int] | None = None) -> list[Face]:
        """Faces (largest first) in the image, or in ``region`` (x1, y1, x2, y2) with boxes in image pixels."""
        ox, oy = 0, 0
        if region is not None:
            x1, y1 = max(0, int(region[0])), max(0, int(region[1]))
            x2, y2 = min(image.width, int(region[2])), min(image.height, int(region[3]))
            if x2 - x1 < 8 or y2 - y1 < 8:
                return []
            image, ox, oy = image.crop((x1, y1, x2, y2)), x1, y1
        faces = self.yunet.detect(image) if self.yunet is not None else []
        if not faces:
            faces = self.detector.detect(image)
        if ox or oy:
            faces = [replace(f, x=f.x + ox, y=f.y + oy, landmarks=None if f.landmarks is None else
                             tuple((px + ox, py + oy) for px, py in f.landmarks)) for f in faces]
        return faces

    def landmarks(self, image: Image.Image, face: Face) -> Landmarks:
        if face.landmarks is not None and len(face.landmarks) == 5:
            return Landmarks(tuple(face.landmarks), "detector")
        eyes = self.eyes(image, face)
        if eyes is not None:
            return Landmarks(landmarks_from_eyes(*eyes), "eyes")
        return Landmarks(tuple(face.keypoints()), "box")

    def eyes(self, image: Image.Image, face: Face) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """The two eye centres (image left, image right) inside the face's box, or None when the eye cascade
        finds no plausible pair (both in the upper 60%, one each side of the middle, similar sizes, 0.25-0.75
        of the box apart, the line between them tilted less than 40 degrees)."""
        if self.eye_detector is None or face.w < 16 or face.h < 16:
            return None
        top = (face.x, face.y, face.x + face.w, face.y + round(face.h * 0.6))
        k = self.EYE_FACE_WIDTH / face.w
        crop = image.convert("RGB").crop(top)
        crop = crop.resize((self.EYE_FACE_WIDTH, max(1, round(crop.height * k))), Image.Resampling.BILINEAR)
        found = self.eye_detector.detect(crop)
        w = self.EYE_FACE_WIDTH
        cands = [(e.x + e.w / 2, e.y + e.h / 2, e.w, e.neighbors) for e in found if 0.1 * w <= e.w <= 0.45 * w]
        best, best_key = None, None
        for a in cands:
            for b in cands:
                if not (a[0] < w / 2 <= b[0]):
                    continue
                dx, dy = b[0] - a[0], b[1] - a[1]
                dist = float(np.hypot(dx, dy))
                if not 0.25 * w <= dist <= 0.75 * w or abs(np.degrees(np.arctan2(dy, dx))) > 40:
                    continue
                key = (min(a[2], b[2]) / max(a[2], b[2]), a[3] + b[3])
                if best_key is None or key > best_key:
                    best, best_key = (a, b), key
        if best is None:
            return None
        (ax, ay, *_), (bx, by, *_) = best
        return ((face.x + ax / k, face.y + ay / k), (face.x + bx / k, face.y + by / k))
