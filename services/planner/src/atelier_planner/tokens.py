"""How long every prompt a planner writes is, in the text encoders' tokens: a plan's ``prompt_tokens`` (issue 14).

CLIP reads a prompt 75 tokens at a time (the GPU worker encodes a longer one in chunks, ``atelier_gpu.
prompt_encoding``); a story scene is 80–170 of them. The planning stages record each prompt's count, so a plan
says how long its prompts are before any GPU runs, in the same numbers the GPU's artifacts record::

    "prompt_tokens": {"plan.scenes[1].scene_prompt": {"clip": 138}, "plan.negative_prompt": {"clip": 33}, ...}

* **clip** — OpenAI CLIP's byte-level BPE (49,408 tokens), which SDXL's two encoders and FLUX's CLIP encoder all
  use; counted on the prompt's words, its ``(text:1.3)`` weights left out (they are weights, not tokens), without
  the start and end tokens. The merges are read from the file the ``open_clip_torch`` wheel ships
  (``make venv`` installs it ``--no-deps``; ``open_clip`` itself is never imported: it needs torchvision). The
  BPE is OpenAI's ``simple_tokenizer`` algorithm, normalised as transformers' ``CLIPTokenizer`` does (NFC,
  whitespace folded, lower case), so the ids are the ones the GPU worker's tokenizers give.
* **t5** (FLUX's long encoder) is not counted: no installable package ships T5's vocabulary.

Without the BPE file the counts are left out (and the log says so once).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterator
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from atelier_runtime.clip_vocab import CLIP_BPE_FILE, bytes_to_unicode, clip_bpe_file, clip_vocabulary

log = logging.getLogger(__name__)

# CLIP's pre-tokenizer (<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+)
_PIECES = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")
_WEIGHT_END = re.compile(r":\s*[0-9]*\.?[0-9]+\s*\)")  # the ":1.3)" closing an A1111 weighted group
# the output fields that hold prompts, and the prompt fields inside them (plans, regions, boxes, characters, scenes)
PROMPT_ROOTS = ("prompts", "negative_prompt", "regional", "plan", "characters", "layouts")
PROMPT_KEYS = frozenset({"prompt", "base_prompt", "negative_prompt", "global_caption", "caption", "foreground",
                         "background", "sheet_prompt", "scene_prompt", "scene_captions"})
# what sits beside the prompts in those fields and holds none (product facts, taglines, text colours, sizes)
_NOT_PROMPTS = frozenset({"product", "taglines", "text_styles", "target", "planner", "culture"})
# boxes the renderer draws (their captions name them, no diffusion model reads them)
_RENDERED_ROLES = frozenset({"logo", "tagline", "cta", "underlay"})


def _pieces(text: str) -> Iterator[str]:
    """CLIP's pre-tokenization of (normalised) ``text``. Python's ``\\w`` counts numeric symbols (``½``, ``²``, ``Ⅻ``)
    as letters where CLIP's ``\\p{N}`` makes each a piece of its own: a letter run holding one is split."""
    for piece in _PIECES.findall(text):
        if piece.isascii() or not any(unicodedata.category(c)[0] == "N" for c in piece):
            yield piece
            continue
        run = ""
        for c in piece:
            if unicodedata.category(c)[0] == "N":
                if run:
                    yield run
                run = ""
                yield c
            else:
                run += c
        if run:
            yield run


class ClipBPE:
    """OpenAI CLIP's BPE over its merges file: :meth:`encode` gives CLIP's token ids (no start/end tokens)."""

    def __init__(self, path: Path) -> None:
        self.vocab, merges = clip_vocabulary(Path(path))
        self.byte_chars = bytes_to_unicode()
        self.ranks = {tuple(m.split()): i for i, m in enumerate(merges)}
        self._bpe = lru_cache(maxsize=20_000)(self._word)

    def _word(self, piece: str) -> tuple[str, ...]:
        word = (*piece[:-1], piece[-1] + "</w>")
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:], strict=False) if (a, b) in self.ranks}
            if not pairs:
                break
            first, second = min(pairs, key=self.ranks.__getitem__)
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list[int]:
        text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip().lower()
        out: list[int] = []
        for piece in _pieces(text):
            if piece in ("<|startoftext|>", "<|endoftext|>"):
                out.append(self.vocab[piece])
                continue
            out.extend(self.vocab[t] for t in self._bpe("".join(self.byte_chars[b] for b in piece.encode("utf-8"))))
        return out


@cache
def clip_bpe() -> ClipBPE | None:
    """The process's CLIP BPE (read once), or None without open_clip_torch's file."""
    path = clip_bpe_file()
    if path is None:
        log.warning("no CLIP vocabulary (%s from open_clip_torch): plans carry no prompt token counts", CLIP_BPE_FILE)
        return None
    return ClipBPE(path)


def prompt_words(prompt: str) -> str:
    """``prompt`` without its A1111 weighting syntax: ``(a, b:1.3) c`` → ``a, b c`` (what the tokenizers read)."""
    return _WEIGHT_END.sub(")", prompt).replace("(", "").replace(")", "")


def clip_tokens(prompt: str) -> int | None:
    """``prompt``'s length in CLIP tokens (its words, weights left out, no start/end tokens); None without the
    vocabulary."""
    bpe = clip_bpe()
    return None if bpe is None else len(bpe.encode(prompt_words(prompt)))


def _prompts(value: Any, path: str, key: str | None = None) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        if value.get("role") in _RENDERED_ROLES:
            return
        for k, v in value.items():
            if k not in _NOT_PROMPTS:
                yield from _prompts(v, f"{path}.{k}" if path else str(k), str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _prompts(v, f"{path}[{i}]", key)
    elif isinstance(value, str) and key in PROMPT_KEYS and value.strip():
        yield path, value


def prompt_tokens(output: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Every prompt in a planning stage's output (JSON), by its place (``plan.scenes[1].scene_prompt``): its
    counts per vocabulary (``{"clip": n}``); empty without a vocabulary to count with."""
    if clip_bpe() is None:
        return {}
    out: dict[str, dict[str, int]] = {}
    for root in PROMPT_ROOTS:
        for path, prompt in _prompts(output.get(root), root, root):
            n = clip_tokens(prompt)
            if n is not None:
                out[path] = {"clip": n}
    return out


def with_prompt_tokens(output: dict[str, Any]) -> dict[str, Any]:
    """``output`` with its ``prompt_tokens`` (:func:`prompt_tokens`), when it has any prompt to count."""
    counts = prompt_tokens(output)
    return {**output, "prompt_tokens": counts} if counts else output
