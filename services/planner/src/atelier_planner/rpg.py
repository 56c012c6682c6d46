"""RPG offline recaption: split a caption into regional prompts on a grid in RPG's split-ratio grammar.

The LLM version (RPG's "master of composition" prompt) recaptions and plans the split with chain of
thought. Offline we split on conjunctions and commas into entity phrases, read spatial cues from each
phrase (left/right → columns, top/above/upper/bottom/below/under → rows, "X above Y" relations), and
lay the entities on a grid with equal row heights and equal cell widths:

* only horizontal cues → one row, columns left → centre → right;
* only vertical cues → one column per row, rows top → middle → bottom;
* both → rows by vertical cue, and within a row columns by horizontal cue;
* no cues → one row with one column per entity (RPG's usual fallback).

When some phrases carry cues and others do not, the uncued phrases are the setting ("a marble counter
with a towel on the left and ...") and stay in the base prompt only. Phrases about light, mood or
style are kept out of the regions and appended to every region as a style suffix.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from fractions import Fraction

from atelier_contracts.plans import PlannerInfo, Region, RegionalPlan, parse_split_ratio

from .common import RULES_PLANNER, clean_text

MAX_REGIONS = 6
DEFAULT_BASE_RATIO = 0.3

_H_ORDER = {"left": 0, "center": 1, "right": 2}
_V_ORDER = {"top": 0, "middle": 1, "bottom": 2}

# relations inside one phrase: (regex, first-entity cue, second-entity cue)
_RELATIONS: list[tuple[re.Pattern[str], tuple[str, str], tuple[str, str]]] = [
    (re.compile(r"^(?P<a>.+?)\s+(?:is\s+|are\s+)?(?:to\s+the\s+left\s+of|left\s+of)\s+(?P<b>.+)$"), ("h", "left"), ("h", "right")),
    (re.compile(r"^(?P<a>.+?)\s+(?:is\s+|are\s+)?(?:to\s+the\s+right\s+of|right\s+of)\s+(?P<b>.+)$"), ("h", "right"), ("h", "left")),
    (re.compile(r"^(?P<a>.+?)\s+(?:is\s+|are\s+)?(?:above|over|on\s+top\s+of|hanging\s+over)\s+(?P<b>.+)$"), ("v", "top"), ("v", "bottom")),
    (re.compile(r"^(?P<a>.+?)\s+(?:is\s+|are\s+)?(?:below|beneath|underneath|under)\s+(?P<b>.+)$"), ("v", "bottom"), ("v", "top")),
    (re.compile(r"^(?P<a>.+?)\s+(?:is\s+|are\s+)?(?:beside|next\s+to|alongside)\s+(?P<b>.+)$"), ("h", "left"), ("h", "right")),
]

_CUE_PHRASE = re.compile(
    r"\b(?:(?:on|at|to|in|along|across|near|towards?)\s+)?(?:the\s+)?(?:far\s+|upper\s+|lower\s+)?"
    r"(?:top|bottom|left|right|upper|lower|centre|center|middle|foreground|sky)"
    r"(?:[\s-]+(?:left|right|hand))?(?:\s+(?:side|corner|edge|half|part|area|of\s+the\s+(?:frame|image|picture|scene)))?\b",
)
_H_WORDS = {"left": "left", "right": "right", "centre": "center", "center": "center"}
_V_WORDS = {"top": "top", "upper": "top", "sky": "top", "bottom": "bottom", "lower": "bottom", "foreground": "bottom",
            "above": "top", "overhead": "top", "below": "bottom"}
_MIDDLE = re.compile(r"\b(?:in|at)\s+the\s+middle\b|\bmiddle\b")

_STYLE_WORDS = re.compile(
    r"\b(light|lighting|lit|sunlight|glow|shadows?|bokeh|mood|atmosphere|style|photo|photograph|photography|"
    r"realistic|photorealistic|cinematic|render|rendering|illustration|4k|8k|hdr|high quality|detailed|"
    r"depth of field|composition|palette|tones?|aesthetic|minimalist|accents?|advertising|negative space)\b"
)
_SPLIT = re.compile(r"\s*(?:;|,|\band\b|\bwith\b|\bwhile\b|\bwhere\b|\bplus\b)\s*")
_LEAD = re.compile(r"^(?:and|with|while|where|plus|also|there\s+is|there\s+are|a\s+scene\s+of)\s+", re.I)


@dataclass
class Entity:
    text: str
    h: str | None = None
    v: str | None = None


def _strip_cues(text: str) -> str:
    out = _CUE_PHRASE.sub(" ", text)
    out = re.sub(r"\b(?:in|at)\s+the\s+middle\b", " ", out)
    out = re.sub(r"\s+", " ", out).strip(" ,.;:-")
    out = re.sub(r"\b(?:on|at|to|in|of|the)$", "", out).strip(" ,.;:-")
    return out


def _cues(text: str) -> tuple[str | None, str | None]:
    low = text.lower()
    h = v = None
    for m in _CUE_PHRASE.finditer(low):
        for word in re.findall(r"[a-z]+", m.group(0)):
            if word in _H_WORDS and h is None:
                h = _H_WORDS[word]
            if word in _V_WORDS and v is None:
                v = _V_WORDS[word]
    if v is None:
        for word, cue in (("overhead", "top"), ("above", "top"), ("below", "bottom")):
            if re.search(rf"\b{word}\b", low):
                v = cue
    if h is None and v is None and _MIDDLE.search(low):
        h = "center"
    return h, v


def _phrases(caption: str) -> list[str]:
    parts = [p.strip(" .") for p in _SPLIT.split(caption)]
    return [_LEAD.sub("", p).strip() for p in parts if p and p.strip(" .")]


def extract_entities(caption: str) -> tuple[list[Entity], list[str]]:
    """Entity phrases with their spatial cues, and the style phrases (light, mood) of a caption."""
    entities: list[Entity] = []
    style: list[str] = []
    for phrase in _phrases(caption.lower() if caption.isupper() else caption):
        low = phrase.lower()
        rel_done = False
        for pat, cue_a, cue_b in _RELATIONS:
            m = pat.match(low)
            if m:
                a = phrase[m.start("a"):m.end("a")]
                b = phrase[m.start("b"):m.end("b")]
                for txt, (axis, cue) in ((a, cue_a), (b, cue_b)):
                    h, v = _cues(txt)
                    e = Entity(_strip_cues(txt) or txt.strip(), h, v)
                    if axis == "h":
                        e.h = cue
                    else:
                        e.v = cue
                    entities.append(e)
                rel_done = True
                break
        if rel_done:
            continue
        h, v = _cues(phrase)
        if h is None and v is None and _STYLE_WORDS.search(low):
            style.append(phrase)
            continue
        text = _strip_cues(phrase) if (h or v) else phrase
        if text:
            entities.append(Entity(text, h, v))
    return entities, style


def _grid(entities: list[Entity]) -> list[list[Entity]]:
    cued = [e for e in entities if e.h or e.v]
    if not cued:
        return [entities[:MAX_REGIONS]] if entities else []
    chosen = cued[:MAX_REGIONS]
    has_v = any(e.v for e in chosen)
    if not has_v:
        return [sorted(chosen, key=lambda e: _H_ORDER[e.h or "center"])]
    rows: dict[int, list[Entity]] = {}
    for e in chosen:
        rows.setdefault(_V_ORDER[e.v or "middle"], []).append(e)
    return [sorted(rows[k], key=lambda e: _H_ORDER[e.h or "center"]) for k in sorted(rows)]


def split_ratio_for(grid: list[list[object]]) -> str:
    """RPG grammar for equal rows and equal cells: ``"1,1"`` (one row of two) or ``"1,1,1;1,1"``."""
    if len(grid) == 1:
        return ",".join("1" for _ in grid[0])
    return ";".join("1," + ",".join("1" for _ in row) for row in grid)


def recaption(prompt: str, *, plan_id: str | None = None, seed: int = 0, width: int = 1024, height: int = 1024,
              negative_prompt: str = "", base_ratio: float = DEFAULT_BASE_RATIO,
              planner: PlannerInfo = RULES_PLANNER) -> RegionalPlan:
    """Caption → RegionalPlan: base prompt = caption, one region per grid cell, equal widths."""
    caption = clean_text(prompt)
    if not caption:
        raise ValueError("cannot recaption an empty prompt")
    entities, style = extract_entities(caption)
    grid = _grid(entities) or [[Entity(caption)]]
    suffix = ", ".join(style)
    regions = []
    for r, row in enumerate(grid):
        for c, e in enumerate(row):
            text = e.text if not suffix else f"{e.text}, {suffix}"
            regions.append(Region(row=r, col=c, prompt=text))
    split = split_ratio_for(grid)  # type: ignore[arg-type]
    parse_split_ratio(split)  # fail here, not on a GPU, if the grammar were ever wrong
    pid = plan_id or hashlib.sha256(caption.encode("utf-8")).hexdigest()[:16]
    return RegionalPlan(plan_id=pid, seed=seed, width=width, height=height, negative_prompt=negative_prompt,
                        planner=planner, base_prompt=caption, base_ratio=base_ratio, split_ratio=split, regions=regions)


def regional_prompt_text(plan: RegionalPlan) -> str:
    """RPG's ``"p0 BREAK p1 ..."`` form of the regions (what the regional pipeline encodes)."""
    return " BREAK ".join(r.prompt for r in plan.regions)


# ---------------------------------------------------------------- exact split-ratio grammar

Cell = tuple[int, int, tuple[Fraction, Fraction, Fraction, Fraction]]


def ratio_grid(split_ratio: str) -> list[tuple[Fraction, list[Fraction]]]:
    """RPG grammar → ``[(row height, [cell widths])]`` as exact fractions, each level normalised to sum 1.

    Same reading as :func:`atelier_contracts.plans.parse_split_ratio` (``;`` rows, ``,`` cells, the first
    number of a row is its height when there is more than one row), without floating-point error."""
    parse_split_ratio(split_ratio)  # same validation and error messages as the shared contract
    rows: list[tuple[Fraction, list[Fraction]]] = []
    parts = split_ratio.strip().split(";")
    for part in parts:
        nums = [Fraction(x.strip()) for x in part.split(",")]
        if len(parts) == 1:
            rows.append((Fraction(1), nums))
        else:
            rows.append((nums[0], nums[1:] or [Fraction(1)]))
    total = sum(h for h, _ in rows)
    return [(h / total, [w / sum(cells) for w in cells]) for h, cells in rows]


def split_ratio_cells(split_ratio: str) -> list[Cell]:
    """Exact ``(row, col, (x1, y1, x2, y2))`` cells, left→right, top→bottom (RPG's BREAK order)."""
    out: list[Cell] = []
    y = Fraction(0)
    for r, (h, widths) in enumerate(ratio_grid(split_ratio)):
        x = Fraction(0)
        for c, w in enumerate(widths):
            out.append((r, c, (x, y, x + w, y + h)))
            x += w
        y += h
    return out


def _integers(values: list[Fraction]) -> list[int]:
    scale = 1
    for v in values:
        scale = scale * v.denominator // math.gcd(scale, v.denominator)
    ints = [int(v * scale) for v in values]
    g = 0
    for i in ints:
        g = math.gcd(g, i)
    return [i // (g or 1) for i in ints]


def grid_split_ratio(rows: list[tuple[Fraction | int | float, list[Fraction | int | float]]]) -> str:
    """``[(height, [widths])]`` (any positive numbers) → the smallest-integer RPG split ratio for that grid."""
    if not rows or any(not cells for _, cells in rows):
        raise ValueError("a split ratio needs at least one row with at least one cell")
    fr = [(_frac(h), [_frac(w) for w in cells]) for h, cells in rows]
    if any(h <= 0 for h, _ in fr) or any(w <= 0 for _, cells in fr for w in cells):
        raise ValueError("split-ratio weights must be positive")
    if len(fr) == 1:
        return ",".join(str(i) for i in _integers(fr[0][1]))
    heights = _integers([h for h, _ in fr])
    parts = []
    for h, (_, cells) in zip(heights, fr, strict=True):
        widths = _integers(cells)
        parts.append(str(h) if len(widths) == 1 else ",".join([str(h), *(str(w) for w in widths)]))
    return ";".join(parts)


def _frac(v: Fraction | int | float) -> Fraction:
    return v if isinstance(v, Fraction) else Fraction(v).limit_denominator(10**9)


def split_ratio_from_cells(cells: list[tuple[int, int, tuple[Fraction | float, Fraction | float,
                                                             Fraction | float, Fraction | float]]]) -> str:
    """Inverse of :func:`split_ratio_cells`: cells on a row/column grid → the RPG split ratio."""
    rows: dict[int, list[tuple[int, tuple[Fraction, ...]]]] = {}
    for r, c, box in cells:
        rows.setdefault(r, []).append((c, tuple(_frac(v) for v in box)))
    grid = []
    for r in sorted(rows):
        row = sorted(rows[r])
        heights = {b[3] - b[1] for _, b in row}
        if len(heights) != 1:
            raise ValueError(f"row {r}: cells of one row must share their height")
        grid.append((heights.pop(), [b[2] - b[0] for _, b in row]))
    return grid_split_ratio(grid)  # type: ignore[arg-type]
