"""Test helpers: drawn faces the Haar cascade finds, the tiny TorchScript face embedder (atelier_gpu.identity.tiny),
and gpu.scene stage contexts with character sheets upstream."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

from atelier_contracts.keys import job_prefix
from atelier_contracts.tasks import StageTask
from atelier_runtime.stage_runner import StageContext, WorkerResources
from PIL import Image, ImageDraw, ImageFilter

ASHA = {"skin": (224, 180, 150), "hair": (40, 25, 15)}
RAMU = {"skin": (120, 200, 235), "hair": (30, 30, 90)}
TENANT = "tenant-id"
PLANNER = {"backend": "rules", "model": "rules", "prompt_version": "1"}
LEFT, RIGHT = [0.05, 0.3, 0.45, 1.0], [0.55, 0.3, 0.95, 1.0]


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
    from atelier_gpu.identity.tiny import write_tiny_embedder

    return write_tiny_embedder(path)


class AppStub:
    def send_task(self, *_: Any, **__: Any) -> None:
        pass


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def story(cast: list[tuple[str, list[float]]]) -> dict[str, Any]:
    return {
        "plan_id": "story-1", "seed": 7, "width": 1280, "height": 960, "negative_prompt": "", "planner": PLANNER,
        "title": "T", "story": "S", "culture_notes": [], "language": "en",
        "characters": [{"id": cid, "name": cid, "description": "d", "sheet_prompt": "s", "seed": 0} for cid, _ in cast],
        "scenes": [{"index": 0, "narration": "n", "backdrop": "a market", "scene_prompt": "two friends at a market",
                    "cast": [{"character_id": cid, "pose": "standing", "expression": "happy",
                              "box": {"bbox": box, "role": "character"}} for cid, box in cast]}],
    }


def scene_ctx(res: WorkerResources, sheets: dict[str, Image.Image | None], boxes: dict[str, list[float]],
              *, spec: dict[str, Any] | None = None) -> tuple[StageContext, dict[str, str]]:
    """A gpu.scene[s0] context whose upstream has the sheets (None: a key that is not in storage)."""
    job = uuid.uuid4().hex[:10]
    prefix = job_prefix(TENANT, job)
    keys = {cid: (res.store.put(f"{prefix}/gpu.character_sheet/{cid}.png", png(im), "image/png").key
                  if im is not None else f"{prefix}/gpu.character_sheet/{cid}-lost.png") for cid, im in sheets.items()}
    layout = {"plan_id": "l0", "seed": 100, "width": 1280, "height": 960, "planner": PLANNER,
              "global_caption": "two friends at a market",
              "boxes": [{"bbox": [0, 0, 1, 1], "caption": "a market", "role": "background", "z": 0}]
              + [{"bbox": box, "caption": f"{cid}, standing", "role": "character", "z": 10, "ref_artifact": keys[cid]}
                 for cid, box in boxes.items()]}
    upstream = {"plan.scenes": {"plan": story([(c, boxes.get(c, LEFT)) for c in sheets])},
                "plan.scene_layout": {"layouts": [layout]},
                "gpu.character_sheet": {cid: {"sheet_key": k} for cid, k in keys.items()}}
    task = StageTask(job_id=job, tenant_id=TENANT, stage_id=f"{job}:s0", stage="gpu.scene", item="s0", kind="story",
                     spec=spec or {}, upstream=upstream, key_prefix=prefix)
    return StageContext(task, res, AppStub()), keys
