"""The gallery: a job's delivered assets by size and variant (ads) or page (storybooks), with their
gate scores and watermark / C2PA badges, and the intermediate images behind them.

Everything here is read from artifact rows (``artifacts.list_job_artifacts``): scores and marks are
whatever the stages recorded in each artifact's ``meta``.
"""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..schemas import ArtifactView

ITEM_RE = re.compile(r"^(?P<size>\d{2,4}x\d{2,4})-v(?P<variant>\d+)$")
SCENE_RE = re.compile(r"^s(?P<index>\d+)$")
# meta keys under which stages record quality gates (renderer: OCR / contrast; identity gate: similarity)
SCORE_GROUPS = ("gates", "checks", "scores", "quality")
SCORE_KEYS = ("ocr", "contrast", "identity", "cer", "similarity", "aesthetic", "safe_zone", "safe_zones")
IMAGE_KINDS = ("asset", "render", "page", "background", "scene", "character_sheet")
THUMB_WIDTHS = (160, 320, 480, 720)


@dataclass(frozen=True)
class Badge:
    label: str
    state: str  # ok | warn | bad | none
    detail: str = ""


@dataclass(frozen=True)
class Score:
    name: str
    value: str
    state: str  # ok | bad | info


@dataclass
class Tile:
    artifact: ArtifactView
    title: str
    size: str | None = None
    variant: int | None = None
    page: int | None = None
    badges: list[Badge] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)

    @property
    def gates(self) -> tuple[int, int]:
        """(passed, judged): scores with a pass/fail verdict."""
        judged = [s for s in self.scores if s.state in ("ok", "bad")]
        return sum(1 for s in judged if s.state == "ok"), len(judged)

    @property
    def failed(self) -> list[Score]:
        return [s for s in self.scores if s.state == "bad"]


@dataclass
class SizeGroup:
    size: str
    tiles: list[Tile]

    @property
    def aspect(self) -> str:
        w, _, h = self.size.partition("x")
        return f"{w} / {h}"


@dataclass
class Gallery:
    sizes: list[SizeGroup] = field(default_factory=list)
    pages: list[Tile] = field(default_factory=list)
    intermediates: list[Tile] = field(default_factory=list)
    other: list[ArtifactView] = field(default_factory=list)

    @property
    def asset_count(self) -> int:
        return sum(len(g.tiles) for g in self.sizes) + len(self.pages)

    def tile(self, artifact_id: str) -> Tile | None:
        tiles = [t for g in self.sizes for t in g.tiles] + self.pages + self.intermediates
        return next((t for t in tiles if t.artifact.id == artifact_id), None)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "pass" if value else "fail"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:.0f}"
    return str(value)[:40]


def _score(name: str, value: Any) -> Score | None:
    if isinstance(value, bool):
        return Score(name, _fmt(value), "ok" if value else "bad")
    if isinstance(value, int | float):
        return Score(name, _fmt(value), "info")
    if isinstance(value, dict):
        passed = value.get("passed", value.get("ok", value.get("pass")))
        number = next((value[k] for k in ("score", "value", "similarity", "ratio", "cer", "min") if
                       isinstance(value.get(k), int | float) and not isinstance(value.get(k), bool)), None)
        if number is None and passed is None:
            return None
        text = _fmt(number) if number is not None else _fmt(bool(passed))
        if number is not None and passed is not None:
            text += " ✓" if passed else " ✗"
        state = "info" if passed is None else ("ok" if passed else "bad")
        return Score(name, text, state)
    if isinstance(value, str) and value:
        return Score(name, value[:40], "info")
    return None


def gate_scores(*metas: dict[str, Any]) -> list[Score]:
    """Scores a stage recorded in an artifact's meta, in any of the shapes stages use:

    ``gates: [{name, score, passed}]`` (renderer checks), ``gates|checks|scores|quality: {name: value}``,
    ``{gate: name, score, passed}`` (a gate's report, e.g. identity) or ``ocr|contrast|identity|...: value``.
    The first value seen for a name wins.
    """
    seen: dict[str, Score] = {}

    def add(name: str, value: Any) -> None:
        s = _score(name, value)
        if s is not None and s.name not in seen:
            seen[s.name] = s

    for meta in metas:
        if isinstance(meta.get("gate"), str):
            add(meta["gate"], meta)
        for group in SCORE_GROUPS:
            values = meta.get(group)
            if isinstance(values, dict):
                for name, value in values.items():
                    add(str(name), value)
            elif isinstance(values, list):
                for value in values:
                    if isinstance(value, dict) and isinstance(value.get("name"), str):
                        add(value["name"], value)
        for name in SCORE_KEYS:
            if name in meta and name not in seen:
                s = _score(name, meta[name])
                if s is not None:
                    seen[name] = s
    return list(seen.values())


def watermark_badge(meta: dict[str, Any]) -> Badge:
    wm = meta.get("watermark")
    if not isinstance(wm, dict):
        return Badge("no watermark", "none")
    acc = wm.get("bit_accuracy")
    detail = f"{wm.get('method', 'watermark')}" + (f", bit accuracy {acc:.3f}" if isinstance(acc, int | float) else "")
    ok = wm.get("readback_ok", wm.get("detected"))
    if ok is False:
        return Badge("watermark unreadable", "bad", detail)
    return Badge("watermark", "ok", detail)


def c2pa_badge(meta: dict[str, Any]) -> Badge:
    c2pa = meta.get("c2pa")
    if c2pa is None:
        return Badge("no C2PA", "none")
    if isinstance(c2pa, bool):
        return Badge("C2PA", "ok") if c2pa else Badge("C2PA invalid", "bad")
    if isinstance(c2pa, str):
        state = c2pa
        detail = ""
    elif isinstance(c2pa, dict):
        state = str(c2pa.get("state") or c2pa.get("status") or c2pa.get("validation_state") or
                    ("valid" if c2pa.get("valid") else "invalid" if c2pa.get("valid") is False else "signed"))
        detail = ", ".join(f"{k} {c2pa[k]}" for k in ("signer", "issuer", "claim_generator", "manifest_label")
                           if isinstance(c2pa.get(k), str))
    else:
        return Badge("C2PA", "warn")
    lowered = state.lower()
    level = "ok" if lowered in ("valid", "trusted", "signed", "ok") else "warn" if lowered == "untrusted" else "bad"
    return Badge(f"C2PA {lowered}", level, detail)


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def build_gallery(artifacts: Iterable[ArtifactView], *, sizes: Iterable[str] = ()) -> Gallery:
    """Group a job's artifacts: delivered assets by size (ads, in ``sizes`` order) or page (stories), then the rest."""
    items = list(artifacts)
    by_kind_name: dict[tuple[str, str], ArtifactView] = {(a.kind, a.name): a for a in items}
    reports: dict[str, tuple[int, ArtifactView]] = {}  # gate reports by item; a regeneration (s2.r1) wins
    for a in items:
        if a.kind == "gate_report":
            item, _, regen = a.name.partition(".r")
            n = int(regen) if regen.isdigit() else 0
            if item not in reports or n >= reports[item][0]:
                reports[item] = (n, a)
    gallery = Gallery()
    wanted = list(sizes)
    by_size: dict[str, list[Tile]] = {}
    for a in sorted((a for a in items if a.kind == "asset"), key=lambda a: _natural(a.name)):
        related = [by_kind_name.get((k, a.name)) for k in ("render", "page", "scene", "background")]
        report = reports.get(a.name)
        metas = [a.meta] + [r.meta for r in related if r is not None] + ([report[1].meta] if report else [])
        tile = Tile(artifact=a, title=a.name, badges=[watermark_badge(a.meta), c2pa_badge(a.meta)],
                    scores=gate_scores(*metas))
        m, s = ITEM_RE.match(a.name), SCENE_RE.match(a.name)
        if m:
            tile.size, tile.variant = m["size"], int(m["variant"])
            tile.title = f"{m['size']} · variant {int(m['variant']) + 1}"
            by_size.setdefault(m["size"], []).append(tile)
        elif s:
            tile.page = int(s["index"]) + 1
            tile.title = f"page {tile.page}"
            gallery.pages.append(tile)
        else:
            by_size.setdefault(a.name, []).append(tile)
    order = {size: i for i, size in enumerate(wanted)}
    gallery.sizes = [SizeGroup(size, by_size[size])
                     for size in sorted(by_size, key=lambda s: (order.get(s, len(order)), _natural(s)))]
    for a in sorted((a for a in items if a.kind in IMAGE_KINDS and a.kind != "asset"),
                    key=lambda a: (IMAGE_KINDS.index(a.kind), _natural(a.name))):
        gallery.intermediates.append(Tile(artifact=a, title=f"{a.kind.replace('_', ' ')} · {a.name}",
                                          scores=gate_scores(a.meta)))
    gallery.other = [a for a in items if a.kind not in IMAGE_KINDS]
    return gallery


class ThumbCache:
    """A small LRU of encoded thumbnails keyed by (content sha256, width)."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, int], value: bytes) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


def thumbnail(data: bytes, width: int) -> bytes:
    """A WebP no wider than ``width`` (aspect kept; never upscaled)."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (width, width * 4))
        im.load()
        rgb = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
        if rgb.width > width:
            rgb = rgb.resize((width, max(1, round(rgb.height * width / rgb.width))), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        rgb.save(out, format="WEBP", quality=80, method=4)
        return out.getvalue()


def thumb_width(requested: int) -> int:
    """Snap to a few widths so caches (ours and the browser's) see few variants."""
    return next((w for w in THUMB_WIDTHS if w >= requested), THUMB_WIDTHS[-1])
