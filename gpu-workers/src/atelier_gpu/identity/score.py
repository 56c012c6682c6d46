"""The identity score of a scene: every cast member's face against its character sheet (ID-Aligner's reward).

Each face is aligned before it is embedded (``align``: five landmarks onto the ArcFace 112x112 template —
the detector's landmarks, else the eyes found inside the face box, else canonical points in the box), on the
sheet and in the scene alike. For each character of the scene's cast:

* the largest face on its sheet, aligned and embedded once, is the reference;
* with a box (the layout's box for that character, normalised x1, y1, x2, y2), the faces are looked for
  inside the box grown by ``margin`` of its size on each side (a detection in the box's crop finds faces too
  small to find in the whole picture) — a face of the cast standing in someone else's box is not theirs;
  without one, every face of the scene is a candidate;
* characters and candidate faces are matched greedily by cosine similarity (each face serves one character).

``strict_boxes=False``, or a collection of the ids whose boxes are strict (the others' boxes being only the
story plan's suggestion, not the layout the scene was drawn from), lets a character whose box holds no face
take a face left over elsewhere (recorded ``in_box: false``, with a warning). The scene's score is the lowest similarity of the characters scored; it passes when every character whose
sheet shows a face was found and scored at or above the threshold.

What it cannot measure it says, and never calls a pass:
* no face in the scene → "no face found" (regenerating rarely helps: framing and pose come from the
  layout), a warning the job completes with unless the gate is strict;
* a character with no face in their box (or none left) fails (a new seed may show them);
* a sheet without a detectable face → that character cannot be scored (``passed: null``, a warning).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .align import FaceFinder, Landmarks, align_face
from .embedder import Embedder
from .faces import Face, FaceDetector

BOX_MARGIN = 0.15


@dataclass
class IdentityResult:
    score: float | None
    passed: bool
    regenerate: bool
    detail: str
    characters: list[dict[str, Any]] = field(default_factory=list)
    faces: list[list[int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pixel_box(box: Any, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A normalised (x1, y1, x2, y2) box in pixels of an image of ``size`` (width, height)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return round(x1 * size[0]), round(y1 * size[1]), round(x2 * size[0]), round(y2 * size[1])


def search_region(box: tuple[int, int, int, int], size: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """A pixel box grown by ``margin`` of its width/height on each side, clipped to the image."""
    mx, my = (box[2] - box[0]) * margin, (box[3] - box[1]) * margin
    return (max(0, round(box[0] - mx)), max(0, round(box[1] - my)), min(size[0], round(box[2] + mx)),
            min(size[1], round(box[3] + my)))


def _centre_in(face: Face, region: tuple[int, int, int, int]) -> bool:
    cx, cy = face.x + face.w / 2, face.y + face.h / 2
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]


class _Pool:
    """The scene's faces, each once (a face found again in a box's crop is the same face)."""

    def __init__(self) -> None:
        self.faces: list[Face] = []

    def add(self, face: Face) -> int:
        for i, f in enumerate(self.faces):
            if _iou(f.box, face.box) > 0.5:
                if f.landmarks is None and face.landmarks is not None:
                    self.faces[i] = face
                return i
        self.faces.append(face)
        return len(self.faces) - 1


def identity_score(scene: Image.Image, sheets: dict[str, Image.Image], *, detector: FaceDetector | FaceFinder,
                   embedder: Embedder, threshold: float, boxes: dict[str, Any] | None = None,
                   names: dict[str, str] | None = None, strict_boxes: bool | Collection[str] = True,
                   margin: float = BOX_MARGIN) -> IdentityResult:
    """Compare the scene's faces with the cast's sheets (``sheets``: character id → sheet image; ``boxes``:
    character id → normalised box the character should be in; ``names``: character id → name;
    ``strict_boxes``: whether, or for which character ids, a face outside the box never counts)."""
    if not sheets:
        return IdentityResult(None, True, False, "no cast in this scene: nothing to compare")
    finder = FaceFinder.wrap(detector)
    boxes, names = boxes or {}, names or {}
    size = scene.size
    pool = _Pool()
    for f in finder.detect(scene):
        pool.add(f)
    regions: dict[str, tuple[int, int, int, int]] = {}
    candidates: dict[str, list[int]] = {}
    for cid in sheets:
        if cid in boxes and boxes[cid] is not None:
            regions[cid] = search_region(pixel_box(boxes[cid], size), size, margin)
            inside = [pool.add(f) for f in finder.detect(scene, regions[cid])]
            inside += [i for i, f in enumerate(pool.faces) if _centre_in(f, regions[cid])]
            candidates[cid] = list(dict.fromkeys(inside))
    face_boxes = [list(f.box) for f in pool.faces]

    def entry(cid: str, **kw: Any) -> dict[str, Any]:
        box = list(pixel_box(boxes[cid], size)) if cid in regions else None
        base = {"character_id": cid, "name": names.get(cid, cid), "box": box,
                "search_box": list(regions[cid]) if cid in regions else None, "found": False, "in_box": None,
                "face": None, "landmarks": None, "landmarks_source": None, "similarity": None, "score": None,
                "passed": False}
        return {**base, **kw}

    if not pool.faces:
        return IdentityResult(None, False, False, "no face found", [entry(c, detail="no face found") for c in sheets],
                              face_boxes, [f"no face found in the scene ({len(sheets)} character(s) expected)"])
    refs: dict[str, np.ndarray] = {}
    sheet_sources: dict[str, str] = {}
    warnings: list[str] = []
    for cid, sheet in sheets.items():
        sheet_faces = finder.detect(sheet)
        if not sheet_faces:
            warnings.append(f"no face found on the character sheet of {cid}")
            continue
        marks = finder.landmarks(sheet, sheet_faces[0])
        sheet_sources[cid] = marks.source
        refs[cid] = embedder.embed([align_face(sheet, marks)])[0]
    if not refs:
        return IdentityResult(None, False, False, "no face found on any character sheet",
                              [entry(c, passed=None, detail="no face on sheet") for c in sheets], face_boxes, warnings)
    marks_of: list[Landmarks] = [finder.landmarks(scene, f) for f in pool.faces]
    found = embedder.embed([align_face(scene, m) for m in marks_of])
    sims = {(cid, j): float(np.dot(refs[cid], found[j])) for cid in refs for j in range(len(pool.faces))}

    def assign(allowed: dict[str, list[int]], taken: set[int]) -> dict[str, tuple[int, float]]:
        pairs = sorted(((sims[c, j], c, j) for c, js in allowed.items() for j in js if j not in taken),
                       key=lambda p: (-p[0], p[1], p[2]))
        out: dict[str, tuple[int, float]] = {}
        for sim, c, j in pairs:
            if c not in out and j not in taken:
                out[c] = (j, sim)
                taken.add(j)
        return out

    taken: set[int] = set()
    everywhere = list(range(len(pool.faces)))
    matched = assign({c: candidates.get(c, everywhere) for c in refs}, taken)
    outside: dict[str, tuple[int, float]] = {}
    # the characters whose box is only a suggestion: with no face in it, they may take a face left elsewhere
    loose = {c for c in refs if not (strict_boxes if isinstance(strict_boxes, bool) else c in strict_boxes)}
    empty = {c: everywhere for c in loose if c in candidates and not candidates[c] and c not in matched}
    if empty:
        outside = assign(empty, taken)
        warnings += [f"{names.get(c, c)}: no face in their box; scored the face at {face_boxes[j]}" for c, (j, _)
                     in outside.items()]
    characters = []
    for cid in sheets:
        if cid not in refs:
            characters.append(entry(cid, passed=None, detail="no face on sheet"))
            continue
        hit = matched.get(cid) or outside.get(cid)
        if hit is None:
            why = ("no face in their box" if cid in candidates and not candidates[cid]
                   else "no face left for this character")
            characters.append(entry(cid, detail=why, sheet_landmarks_source=sheet_sources[cid]))
            continue
        j, sim = hit
        characters.append(entry(cid, found=True, in_box=(cid not in outside) if cid in regions else None,
                                face=face_boxes[j], landmarks=marks_of[j].as_list(),
                                landmarks_source=marks_of[j].source, sheet_landmarks_source=sheet_sources[cid],
                                similarity=round(sim, 4), score=round(sim, 4), passed=sim >= threshold))
    scored = [c for c in characters if c["passed"] is not None]
    sims_found = [c["similarity"] for c in scored if c["similarity"] is not None]
    score = min(sims_found) if sims_found else None
    passed = all(c["passed"] for c in scored)
    missing = [c["name"] for c in scored if not c["found"]]
    low = [c["name"] for c in scored if c["found"] and not c["passed"]]
    detail = f"min similarity {score:.3f} vs threshold {threshold}" if score is not None else "no character matched"
    if low:
        detail += f"; below threshold: {', '.join(low)}"
    if missing:
        detail += f"; not found: {', '.join(missing)}"
    # a new seed can fix a face that does not match, or a character that did not show
    regenerate = not passed
    return IdentityResult(score, passed, regenerate, detail, characters, face_boxes, warnings)
