"""Prompt encoding that never truncates silently: weighted, chunked prompt embeddings through compel.

CLIP reads 77 tokens; a story scene prompt is 86–138 of them, so the pipelines' own encoding cut every scene's
backdrop and style off and read ``(word:1.3)`` as characters. Here prompts go through compel instead:

* **SDXL** (``CompelForSDXL``): both CLIP encoders' penultimate hidden states, a prompt longer than the window
  encoded in 75-token chunks and concatenated (nothing dropped), the pooled embedding from the second encoder's
  first chunk; negative prompts padded to the same length.
* **FLUX** (``CompelForFlux``): T5 up to its tokenizer's length, CLIP's pooled embedding from the first 77 tokens.
  T5's window (512 tokens) is the one place words can still be dropped: those words are returned, and the stage
  says so in a ``job.warning`` — never silently.
* **Weights**: the planners write the papers' A1111 notation, ``(text:1.3)``; :func:`to_compel` turns it into
  compel's ``(text)1.3`` (parentheses without a weight carry none, where A1111 gives them 1.1).

Other families (SD3, PixArt) keep their pipelines' own encoding (T5 windows of 256–300 tokens); the counts are
recorded for them too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from compel import CompelForFlux, CompelForSDXL

COMPEL_FAMILIES = ("sdxl", "flux")
_A1111_WEIGHT_END = re.compile(r":\s*([0-9]*\.?[0-9]+)\s*\)")  # the ":1.3)" that closes an A1111 weighted group


def _opening(prompt: str, close: int) -> int | None:
    """The index of the "(" that the ")" at ``close`` closes; None when there is none (then it is text)."""
    depth = 0
    for i in range(close - 1, -1, -1):
        if prompt[i] == ")":
            depth += 1
        elif prompt[i] == "(":
            if depth == 0:
                return i
            depth -= 1
    return None


def to_compel(prompt: str) -> str:
    """``(a, b:1.3)`` → ``(a, b)1.3``, innermost groups first; everything else as written.

    As in A1111, a weighted group's text may hold colons and plain parentheses (``(Onam: flower carpets,
    a set-mundu (mundu and neriyathu):1.1)``): the group is the one whose ")" follows ``:weight``."""
    while True:
        for m in _A1111_WEIGHT_END.finditer(prompt):
            start = _opening(prompt, m.end() - 1)
            if start is not None:
                inner = prompt[start + 1:m.start()].strip()
                prompt = f"{prompt[:start]}({inner}){m.group(1)}{prompt[m.end():]}"
                break
        else:
            return prompt


def words_of(prompt: str) -> str:
    """The words of ``prompt`` without its weighting syntax: what the tokenizers count (``(a, b:1.3) c`` → ``a, b c``)."""
    return re.sub(r"\)(?:\d*\.?\d+)?", "", to_compel(prompt)).replace("(", "")


@dataclass
class Encoded:
    """What to pass the pipeline instead of ``prompt``/``negative_prompt``, and what the encoding saw."""

    kwargs: dict[str, Any]
    tokens: dict[str, int] = field(default_factory=dict)  # per tokenizer: the longest prompt's token count
    dropped: list[str] = field(default_factory=list)  # words past an encoder's window (FLUX's T5 only)

    def report(self) -> dict[str, Any]:
        """What an artifact records of its prompt's encoding (and a stage's warning when words were dropped)."""
        out: dict[str, Any] = {"encoder": "compel", "tokens": dict(self.tokens)}
        if self.dropped:
            out["dropped_words"] = list(self.dropped)
        return out


def _ids(tokenizer: Any, text: str) -> list[int]:
    # verbose=False: counting a long prompt is the point here, not a mistake to warn about
    return list(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)


def _count(tokenizer: Any, text: str) -> int:
    return len(_ids(tokenizer, text))


def _dropped_words(tokenizer: Any, text: str, window: int) -> list[str]:
    """The words of ``text`` past the first ``window`` tokens (none when it fits)."""
    ids = _ids(tokenizer, text)
    if len(ids) <= window:
        return []
    kept = tokenizer.decode(ids[:window], skip_special_tokens=True)
    words, kept_words = text.split(), kept.split()
    return words[len(kept_words):] or words[-1:]


def words_past(tokenizer: Any, texts: list[str], window: int) -> list[str]:
    """The words of ``texts`` an encoder with a ``window``-token input never sees (sorted, each once)."""
    plain = [re.sub(r"\)(?:\d*\.?\d+)?", "", to_compel(t)).replace("(", "") for t in texts]
    return sorted({w for t in plain for w in _dropped_words(tokenizer, t, window)})


def _expect_long_prompts(pipe: Any) -> None:
    """compel tokenizes whole prompts before it chunks them: the tokenizers' one-time "longer than the maximum
    sequence length … indexing errors" warning would be false here, so it is marked as given."""
    for name in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, name, None)
        warned = getattr(tok, "deprecation_warnings", None)
        if isinstance(warned, dict):
            warned["sequence-length-is-longer-than-the-specified-maximum"] = True


def token_counts(pipe: Any, prompts: list[str]) -> dict[str, int]:
    """The longest of ``prompts`` in tokens, per tokenizer the pipeline has (``tokenizer``, ``tokenizer_2``…)."""
    out: dict[str, int] = {}
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tok = getattr(pipe, name, None)
        if tok is not None:
            out[name] = max(_count(tok, p) for p in prompts)
    return out


def encode(pipe: Any, family: str, prompts: list[str], negative_prompt: str | None, *,
           count: bool = False) -> Encoded | None:
    """The pipeline's prompt embeddings for ``prompts`` (one per image) and ``negative_prompt`` (SDXL; an empty one
    is left to the pipeline, which zeroes it as SDXL was trained), or None for a family compel does not encode.
    ``count``: also count each tokenizer's tokens (for an artifact's record; the recipes that keep none skip it)."""
    if family not in COMPEL_FAMILIES:
        return None
    _expect_long_prompts(pipe)
    parsed = [to_compel(p) for p in prompts]
    plain = [words_of(p) for p in prompts]
    tokens = token_counts(pipe, plain) if count else {}
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None)
    if family == "sdxl":
        negative = [to_compel(negative_prompt)] * len(parsed) if negative_prompt else None
        cond = CompelForSDXL(pipe, device=device)(parsed, negative_prompt=negative)
        kwargs = {"prompt_embeds": cond.embeds, "pooled_prompt_embeds": cond.pooled_embeds}
        if negative is not None:
            kwargs.update(negative_prompt_embeds=cond.negative_embeds,
                          negative_pooled_prompt_embeds=cond.negative_pooled_embeds)
        return Encoded(kwargs=kwargs, tokens=tokens)
    cond = CompelForFlux(pipe, device=device)(parsed)
    window = int(pipe.tokenizer_2.model_max_length)
    dropped = sorted({w for p in plain for w in _dropped_words(pipe.tokenizer_2, p, window)})
    return Encoded(kwargs={"prompt_embeds": cond.embeds, "pooled_prompt_embeds": cond.pooled_embeds},
                   tokens=tokens, dropped=dropped)
