"""Versioned prompt templates (package data) and how customer text is kept as data.

A template is ``prompts/<id>.v<N>.md``::

    <!-- prompt: paid.ad_prompts  version: 1 -->
    # system
    ... {{schema}} ...
    # user
    ... {{data}} ...

with its few-shot examples beside it in ``prompts/<id>.v<N>.examples.json`` (``[{"data": ..., "output":
...}]``, rendered as user/assistant turns). Its version string (``paid.ad_prompts/v1``) is recorded in
every plan it makes; a prompt is changed by adding ``v2`` files and bumping :data:`VERSIONS`.

Customer text (product descriptions, premises, captions) never becomes part of the instructions: the
whole input goes in one ``<data>...</data>`` block as JSON, with ``<`` and ``>`` escaped as ``\\u003c`` /
``\\u003e`` — still the same JSON value, but nothing inside can close the block or open another — and
every system prompt says that instructions inside the block are data to describe, never to follow. The
schema-constrained answer and its validation do the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

# the prompt version each LLM task uses now
VERSIONS: dict[str, int] = {
    "rpg.recaption": 1,
    "paid.ad_prompts": 1,
    "paid.ad_layout": 1,
    "kahani.culture": 1,
    "kahani.story": 1,
    "kahani.characters": 1,
    "kahani.scenes": 1,
    "creatilayout.scene": 1,
    "creatilayout.design": 1,
    "critic.region": 1,
}
_HEADER = re.compile(r"^<!--\s*prompt:\s*(?P<id>[\w.]+)\s+version:\s*(?P<v>\d+)\s*-->\s*$", re.M)
_SECTION = re.compile(r"^# (system|user)\s*$", re.M)
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
OPEN, CLOSE = "<data>", "</data>"


def data_json(data: Any) -> str:
    """``data`` as JSON that cannot break out of a ``<data>`` block (``<``/``>`` as unicode escapes)."""
    text = json.dumps(data, ensure_ascii=False, indent=1, sort_keys=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e")


def data_block(data: Any) -> str:
    return f"{OPEN}\n{data_json(data)}\n{CLOSE}"


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    version: int
    system: str
    user: str
    examples: tuple[dict[str, Any], ...]

    @property
    def version_label(self) -> str:
        return f"{self.id}/v{self.version}"

    def _fill(self, text: str, values: dict[str, str]) -> str:
        def sub(m: re.Match[str]) -> str:
            key = m.group(1)
            if key not in values:
                raise KeyError(f"prompt {self.version_label} needs {{{{{key}}}}}")
            return values[key]

        return _PLACEHOLDER.sub(sub, text)

    def render(self, data: dict[str, Any], *, schema: dict[str, Any] | None = None,
               images: list[str] | None = None, **values: str) -> list[dict[str, Any]]:
        """Chat messages: system, the few-shot turns, then the user turn with ``data`` in its block.

        ``images`` are data URLs attached to the last user turn (OpenAI multimodal content parts)."""
        fill = {"schema": json.dumps(schema, separators=(",", ":")) if schema else "", **values}
        messages: list[dict[str, Any]] = [{"role": "system", "content": self._fill(self.system, fill).strip()}]
        for ex in self.examples:
            messages.append({"role": "user", "content": self._fill(self.user, {**fill, "data": data_block(ex["data"])}).strip()})
            messages.append({"role": "assistant", "content": json.dumps(ex["output"], ensure_ascii=False)})
        text = self._fill(self.user, {**fill, "data": data_block(data)}).strip()
        if images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
            parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": "user", "content": text})
        return messages


@cache
def load_prompt(prompt_id: str, version: int | None = None) -> PromptTemplate:
    """The template ``prompts/<id>.v<version>.md`` (default: the version in :data:`VERSIONS`) and its examples."""
    v = VERSIONS[prompt_id] if version is None else version
    folder = resources.files("atelier_planner.llm").joinpath("prompts")
    text = folder.joinpath(f"{prompt_id}.v{v}.md").read_text(encoding="utf-8")
    m = _HEADER.search(text)
    if not m or m.group("id") != prompt_id or int(m.group("v")) != v:
        raise ValueError(f"prompts/{prompt_id}.v{v}.md must start with <!-- prompt: {prompt_id}  version: {v} -->")
    parts = _SECTION.split(text[m.end():])
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    if set(sections) != {"system", "user"}:
        raise ValueError(f"prompts/{prompt_id}.v{v}.md needs a '# system' and a '# user' section")
    ex_file = folder.joinpath(f"{prompt_id}.v{v}.examples.json")
    examples = tuple(json.loads(ex_file.read_text(encoding="utf-8"))) if ex_file.is_file() else ()
    return PromptTemplate(id=prompt_id, version=v, system=sections["system"], user=sections["user"], examples=examples)
