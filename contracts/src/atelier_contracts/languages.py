"""Which story languages (and cultures) the offline planner writes, and how a language tag is read.

The ``rules`` planner backend writes stories from its own templates (English and Hindi in the planner's
``data/story_beats.json``, every other language in its own ``data/story_lang/<code>.json``; a test keeps
``RULES_LANGUAGES`` equal to the languages those files hold). A story in any other
language needs an LLM planner: with ``ATELIER_PLANNER_BACKEND=rules`` the API refuses it at submit (422 on
``spec.language``, naming the languages it can write) instead of writing English under another label.
"""

from __future__ import annotations

# primary subtags the rules templates are written in
RULES_LANGUAGES: tuple[str, ...] = ("en", "hi", "es", "fr", "pt", "sw", "ar", "ta")
NAMES: dict[str, str] = {"en": "English", "hi": "Hindi", "es": "Spanish", "fr": "French", "ar": "Arabic",
                         "pt": "Portuguese", "sw": "Swahili", "ta": "Tamil"}
# cultures with a curated lexicon in the rules planner (places, food, festivals, names, dress); any other culture
# string is accepted and planned from the generic lexicon (a test keeps this equal to the planner's cultures.json)
CURATED_CULTURES: tuple[str, ...] = ('Kerala, India', 'Punjab, India', 'Japan', 'Mexico', 'Yorubaland, Nigeria',
                                     'Egypt', 'the Andes of Peru', 'Bahia, Brazil', 'Sicily, Italy', 'the west of Ireland',
                                     'the Swahili coast of Kenya', 'Hội An, Vietnam', 'Korea', 'Jamaica')
# scripts written right to left: the storybook sets their narration right-aligned, right to left
RTL: frozenset[str] = frozenset({"ar", "he", "fa", "ur", "yi", "ps", "sd", "ug"})


def primary(tag: str) -> str:
    """``"pt-BR"`` → ``"pt"``."""
    return tag.split("-")[0].lower()


def is_rtl(tag: str) -> bool:
    return primary(tag) in RTL


def rules_can_write(tag: str) -> bool:
    return primary(tag) in RULES_LANGUAGES


def unsupported_message(tag: str) -> str:
    """Why the rules planner refuses ``tag``, naming what it can write."""
    can = ", ".join(f"{code} ({NAMES.get(code, code)})" for code in RULES_LANGUAGES)
    return (f"the offline (rules) planner cannot write {tag!r}; it writes {can}. Configure an LLM planner "
            "(ATELIER_PLANNER_BACKEND=openai, transformers or vllm) to write other languages")
