"""The identity score of a scene: every cast member's face against its character sheet (ID-Aligner's reward).

For each character of the scene's cast: the largest face on its sheet is embedded once; every face
found in the scene is embedded; characters and faces are matched greedily by cosine similarity (each
face serves one character). The scene's score is the lowest matched similarity (every character must
be recognisable), and it passes when every cast member was matched at or above the threshold.

What it cannot measure it says, and never calls a pass:
* no face in the scene → "no face found" (regenerating rarely helps: framing and pose come from the
  layout), a warning the job completes with unless the gate is strict;
* fewer faces than cast members → the missing ones fail (a new seed may show them);
* a sheet without a detectable face → that character cannot be scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .embedder import Embedder
from .faces import FaceDetector, crop_face


@dataclass
class IdentityResult:
    score: float | None
    passed: bool
    regenerate: bool
    detail: str
    characters: list[dict[str, Any]] = field(default_factory=list)
    faces: list[list[int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def identity_score(scene: Image.Image, sheets: dict[str, Image.Image], *, detector: FaceDetector,
                   embedder: Embedder, threshold: float) -> IdentityResult:
    """Compare the scene's faces with the cast's sheets (``sheets``: character id → sheet image)."""
    if not sheets:
        return IdentityResult(None, True, False, "no cast in this scene: nothing to compare")
    faces = detector.detect(scene)
    boxes = [list(f.box) for f in faces]
    if not faces:
        return IdentityResult(None, False, False, "no face found", faces=boxes,
                              warnings=[f"no face found in the scene ({len(sheets)} character(s) expected)"])
    refs: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    for cid, sheet in sheets.items():
        sheet_faces = detector.detect(sheet)
        if not sheet_faces:
            warnings.append(f"no face found on the character sheet of {cid}")
            continue
        refs[cid] = embedder.embed([crop_face(sheet, sheet_faces[0])])[0]
    if not refs:
        return IdentityResult(None, False, False, "no face found on any character sheet", faces=boxes,
                              warnings=warnings)
    found = embedder.embed([crop_face(scene, f) for f in faces])
    ids = list(refs)
    sims = np.array([[float(np.dot(refs[c], found[j])) for j in range(len(faces))] for c in ids])
    matched: dict[str, tuple[int, float]] = {}
    work = sims.copy()
    for _ in range(min(len(ids), len(faces))):
        i, j = np.unravel_index(np.argmax(work), work.shape)
        matched[ids[i]] = (int(j), float(sims[i, j]))
        work[i, :] = -np.inf
        work[:, j] = -np.inf
    characters = []
    for cid in sheets:
        if cid not in refs:
            characters.append({"character_id": cid, "similarity": None, "face": None, "passed": False,
                               "detail": "no face on sheet"})
        elif cid in matched:
            j, sim = matched[cid]
            characters.append({"character_id": cid, "similarity": round(sim, 4), "face": boxes[j],
                               "passed": sim >= threshold})
        else:
            characters.append({"character_id": cid, "similarity": None, "face": None, "passed": False,
                               "detail": "no face left for this character"})
    sims_found = [c["similarity"] for c in characters if c["similarity"] is not None]
    score = min(sims_found) if sims_found else None
    passed = all(c["passed"] for c in characters)
    missing = [c["character_id"] for c in characters if c["similarity"] is None and c.get("detail") != "no face on sheet"]
    detail = (f"min similarity {score:.3f} vs threshold {threshold}" if score is not None else "no character matched")
    if missing:
        detail += f"; not found: {', '.join(missing)}"
    # a new seed can fix a face that does not match, or a character that did not show
    regenerate = not passed and any(c["detail"] != "no face on sheet" if "detail" in c else not c["passed"]
                                    for c in characters)
    return IdentityResult(score, passed, regenerate, detail, characters, boxes, warnings)
