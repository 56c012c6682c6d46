"""Work item ids of fanned-out stages: one formatter and one parser per item space.

A fanned-out stage runs once per item; the item id names what it works on and is part of every key it writes:

* ``size_variant`` — ``<width>x<height>-v<variant>``, e.g. ``1080x1080-v0`` (campaigns: one per size and variant);
* ``scene``        — ``s<index>``, e.g. ``s2`` (stories: one per page);
* ``character``    — the character's id from ``plan.characters`` (``c1``), used as it is.

A gate's regeneration stores its attempt under :func:`attempt_name` (``1080x1080-v0.r1``, ``s2.r1``).
"""

from __future__ import annotations

import re

_SIZE_VARIANT = re.compile(r"(\d+x\d+)-v(\d+)")
_SCENE = re.compile(r"s(\d+)")


def size_variant(size: str, variant: int) -> str:
    """``("1080x1080", 0)`` → ``"1080x1080-v0"``."""
    return f"{size}-v{variant}"


def parse_size_variant(item: str) -> tuple[str, int]:
    """``"1080x1080-v0"`` → ``("1080x1080", 0)``; ValueError saying what the item should look like."""
    m = _SIZE_VARIANT.fullmatch(item)
    if not m:
        raise ValueError(f"item {item!r} is not '<size>-v<variant>', e.g. '1080x1080-v0'")
    return m.group(1), int(m.group(2))


def scene(index: int) -> str:
    """``2`` → ``"s2"``."""
    return f"s{index}"


def parse_scene(item: str) -> int:
    """``"s2"`` → ``2``; ValueError saying what the item should look like."""
    m = _SCENE.fullmatch(item)
    if not m:
        raise ValueError(f"item {item!r} is not 's<scene index>', e.g. 's0'")
    return int(m.group(1))


def attempt_name(item: str, regeneration: int) -> str:
    """The name a gate's regeneration ``n`` of ``item`` is stored under: ``item`` itself for the first attempt."""
    return item if not regeneration else f"{item}.r{regeneration}"
