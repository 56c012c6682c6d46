"""Deterministic ids, seeds and small text helpers every planner module uses."""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from importlib import resources
from typing import Any

from atelier_contracts.plans import PlannerInfo

RULES_PLANNER = PlannerInfo(backend="rules", model="rules-v1", prompt_version="rules-1")
SEED_MODULUS = 2**31


def _digest(*parts: object) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).hexdigest()


def plan_id_for(job_id: str, stage: str, *parts: object) -> str:
    """First 16 hex digits of sha256(job_id:stage[:parts]) — the same job always gets the same id."""
    return _digest(job_id, stage, *parts)[:16]


def seed_for(job_id: str, spec_seed: int | None) -> int:
    """The spec's seed when given, else a stable function of the job id (in 0..2**31-1)."""
    if spec_seed is not None:
        return int(spec_seed)
    return int(hashlib.sha256(job_id.encode("utf-8")).hexdigest(), 16) % SEED_MODULUS


def derived_seed(seed: int, *parts: object) -> int:
    """A sub-seed (per character, per scene) that depends only on the plan seed and a label."""
    return int(_digest(seed, *parts), 16) % SEED_MODULUS


def stable_index(n: int, *parts: object) -> int:
    """Deterministic choice of one of ``n`` options from labels (no global RNG state)."""
    if n <= 0:
        raise ValueError("cannot choose from an empty list")
    return int(_digest(*parts), 16) % n


@cache
def load_data(name: str) -> Any:
    """A JSON file shipped in ``atelier_planner/data`` (package data)."""
    text = resources.files("atelier_planner").joinpath("data", name).read_text(encoding="utf-8")
    return json.loads(text)


_WS = re.compile(r"[^\S\u00a0\u202f]+")  # runs of whitespace; no-break spaces (French « », :, !) stay


def clean_text(text: str) -> str:
    return _WS.sub(" ", text).strip()


def word_count(text: str) -> int:
    return len(text.split())


def truncate_words(text: str, max_words: int) -> str:
    words = text.split()
    if len(words) <= max_words:
        return text.strip()
    return " ".join(words[:max_words]).rstrip(",;:") + "…"


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (Latin, Devanagari or Arabic full stops), without its final stop."""
    text = clean_text(text)
    m = re.search(r"(.+?[.!?।؟])(\s|$)", text)
    sentence = m.group(1) if m else text
    return sentence.rstrip(".!?।؟ ")


def contains_word(text: str, words: list[str] | tuple[str, ...]) -> str | None:
    """The first of ``words`` that occurs in ``text`` as a whole word (case-insensitive), else None."""
    low = text.lower()
    for w in words:
        if re.search(rf"\b{re.escape(w.lower())}\b", low):
            return w
    return None
