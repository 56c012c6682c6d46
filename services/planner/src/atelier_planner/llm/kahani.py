"""KAHANI on an LLM: culture notes → story → characters → scenes.

* Culture: specific notes (place, dress, food, festivals, architecture, names, everyday objects),
  grounded on the curated lexicon entry when the culture is one of its 14; generic phrasing ("traditional
  clothes") is sent back once for something specific. The lexicon entry and its picks stay in the output
  for the rules fallback of later stages.
* Story: bounded length (250 words; characters for scripts without spaces), in the requested language
  (its script is checked), at the audience's reading level (Flesch-Kincaid grade for English, asked once
  to simplify when it is too high).
* Characters: at most 3, described by what can be drawn only (age, skin, hair, clothing); the
  description and sheet prompt are written by the same template as the rules backend.
* Scenes: exactly ``pages`` scenes, narration (<= 100 words), backdrop and cast with pose and expression;
  the cast can only name the story's characters (an enum in the schema).
"""

from __future__ import annotations

import re
from typing import Any

from atelier_contracts.catalogue import S_SCENES
from atelier_contracts.plans import CastMember, Character, PlannerInfo, Scene, StoryPlan
from atelier_contracts.specs import StorySpec
from atelier_contracts.stage_io import StoryOutput, as_output

from .. import kahani
from ..common import load_data, plan_id_for, truncate_words
from .runner import Problem, Task
from .schema import Limits, array, enum, integer, obj, string

MAX_NARRATION_WORDS = 100
READING_GRADE = 5
ROLES = ("girl", "boy", "woman", "man", "grandmother", "grandfather")
GENERIC = ("traditional clothing", "traditional clothes", "traditional dress", "traditional food", "local food",
           "local dish", "traditional house", "local festival", "typical", "ethnic")
# scripts of languages whose text is easy to check; others are not checked
SCRIPTS: dict[str, tuple[str, str]] = {
    "hi": ("Devanagari", "\u0900-\u097f"), "mr": ("Devanagari", "\u0900-\u097f"), "ne": ("Devanagari", "\u0900-\u097f"),
    "bn": ("Bengali", "\u0980-\u09ff"), "pa": ("Gurmukhi", "\u0a00-\u0a7f"), "gu": ("Gujarati", "\u0a80-\u0aff"),
    "ta": ("Tamil", "\u0b80-\u0bff"), "te": ("Telugu", "\u0c00-\u0c7f"), "kn": ("Kannada", "\u0c80-\u0cff"),
    "ml": ("Malayalam", "\u0d00-\u0d7f"), "th": ("Thai", "\u0e00-\u0e7f"), "ar": ("Arabic", "\u0600-\u06ff"),
    "ur": ("Arabic", "\u0600-\u06ff"), "fa": ("Arabic", "\u0600-\u06ff"), "he": ("Hebrew", "\u0590-\u05ff"),
    "el": ("Greek", "\u0370-\u03ff"), "ru": ("Cyrillic", "\u0400-\u04ff"), "uk": ("Cyrillic", "\u0400-\u04ff"),
    "ja": ("Japanese", "\u3040-\u30ff\u4e00-\u9fff"), "zh": ("Chinese", "\u4e00-\u9fff"), "ko": ("Hangul", "\uac00-\ud7af"),
}
LATIN = ("en", "es", "fr", "de", "it", "pt", "nl", "sw", "yo", "id", "ms", "tl", "vi", "tr", "pl", "sv", "da", "no", "fi",
         "ga", "qu")
NO_SPACES = ("ja", "zh", "th")


# ---------------------------------------------------------------- measures


def primary(language: str) -> str:
    return language.split("-")[0].lower()


def story_length(text: str, language: str) -> int:
    """Words, or characters / 2.5 for scripts written without spaces (a 250-word bound either way)."""
    if primary(language) in NO_SPACES:
        return round(len(re.sub(r"\s", "", text)) / 2.5)
    return len(text.split())


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?।。！？])\s*", text) if s.strip()]


def _syllables(word: str) -> int:
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return 0
    groups = re.findall(r"[aeiouy]+", w)
    n = len(groups) - (1 if w.endswith("e") and not w.endswith(("le", "ee")) and len(groups) > 1 else 0)
    return max(1, n)


def reading_grade(text: str) -> float | None:
    """Flesch-Kincaid grade level of English text (None when it has no words)."""
    words = re.findall(r"[A-Za-z']+", text)
    if not words:
        return None
    n_sent = max(1, len(sentences(text)))
    syll = sum(_syllables(w) for w in words)
    return round(0.39 * len(words) / n_sent + 11.8 * syll / len(words) - 15.59, 2)


def script_share(text: str, ranges: str) -> float:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    pattern = re.compile(f"[{ranges}]")
    return sum(1 for c in letters if pattern.match(c)) / len(letters)


def story_metrics(text: str, language: str) -> dict[str, Any]:
    return {"words": story_length(text, language), "sentences": len(sentences(text)),
            "reading_grade": reading_grade(text) if primary(language) == "en" else None}


# ---------------------------------------------------------------- culture


def culture_schema(limits: Limits) -> dict[str, Any]:
    s = string(limits.long)
    return obj({"setting": s, "dress": s, "food": s, "festivals": s, "architecture": s, "everyday_objects": s,
                "names": array(string(limits.short), 2, max(2, limits.list_items * 3))})


def lexicon_reference(entry: dict[str, Any]) -> dict[str, Any] | None:
    if entry.get("key") == "generic":
        return None
    return {"label": entry["label"], "language": entry["language"],
            "places": [p["scene"] for p in entry["places"]], "dress": entry["dress"],
            "food": [f["en"] for f in entry["food"]],
            "festivals": [f"{f['name']}: {f['desc']}" for f in entry["festivals"]],
            "architecture": entry["architecture"], "everyday_objects": entry["details"],
            "names": [n["en"] for role in entry["names"].values() for n in role]}


def culture_task(spec: StorySpec, entry: dict[str, Any], *, limits: Limits) -> Task[list[str]]:
    def build(a: dict[str, Any]) -> list[str]:
        notes = [f"Setting: {a['setting']}", f"Dress: {a['dress']}", f"Food: {a['food']}",
                 f"Festivals: {a['festivals']}", f"Architecture: {a['architecture']}",
                 f"Everyday objects: {a['everyday_objects']}", "Names: " + ", ".join(dict.fromkeys(a["names"]))]
        if spec.audience:
            notes.append(f"Audience: {spec.audience}; keep the words simple (reading grade {READING_GRADE} or below).")
        return notes

    def check(notes: list[str]) -> list[Problem]:
        return [Problem(f"note {n.split(':')[0]!r} is generic ({g!r}): name the specific garment, dish, festival "
                        "or building", "warning")
                for n in notes for g in GENERIC if g in n.lower()]

    data = {"culture": spec.culture, "premise": spec.premise, "language": spec.language, "audience": spec.audience,
            "reference": lexicon_reference(entry)}
    return Task(prompt_id="kahani.culture", data=data, schema=culture_schema(limits), build=build, check=check)


# ---------------------------------------------------------------- story


def story_schema(limits: Limits) -> dict[str, Any]:
    return obj({"title": string(limits.short), "story": string(limits.story)})


def story_task(spec: StorySpec, notes: list[str], *, limits: Limits) -> Task[dict[str, Any]]:
    lang = primary(spec.language)
    max_words = kahani.MAX_STORY_WORDS

    def build(a: dict[str, Any]) -> dict[str, Any]:
        return {"title": a["title"], "story": re.sub(r"\s+", " ", a["story"]).strip(), "language": spec.language,
                "template_language": None}

    def check(v: dict[str, Any]) -> list[Problem]:
        problems = []
        n = story_length(v["story"], spec.language)
        if n > max_words:
            problems.append(Problem(f"the story has {n} words; at most {max_words}"))
        if lang in SCRIPTS:
            name, ranges = SCRIPTS[lang]
            if script_share(v["story"], ranges) < 0.5:
                problems.append(Problem(f"the story must be written in {spec.language} ({name} script)"))
        elif lang in LATIN and script_share(v["story"], "A-Za-z\u00c0-\u024f\u1e00-\u1eff") < 0.7:
            problems.append(Problem(f"the story must be written in {spec.language} (Latin script)"))
        grade = reading_grade(v["story"]) if lang == "en" else None
        if grade is not None and grade > READING_GRADE + 2:
            problems.append(Problem(f"the story reads at grade {grade:.1f}; use shorter sentences and simpler words "
                                    f"(grade {READING_GRADE} or below)", "warning"))
        if len(sentences(v["story"])) < spec.pages:
            problems.append(Problem(f"the story has fewer sentences than its {spec.pages} pages", "warning"))
        return problems

    def last_resort(v: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        kept: list[str] = []
        for s in sentences(v["story"]):
            if story_length(" ".join([*kept, s]), spec.language) > max_words:
                break
            kept.append(s)
        text = " ".join(kept) or truncate_words(v["story"], max_words)
        return {**v, "story": text}, [f"story cut to {story_length(text, spec.language)} words at a sentence end"]

    data = {"premise": spec.premise, "culture": spec.culture, "culture_notes": notes, "language": spec.language,
            "audience": spec.audience or "children 5-8", "max_words": max_words, "reading_grade": READING_GRADE,
            "pages": spec.pages}
    return Task(prompt_id="kahani.story", data=data, schema=story_schema(limits), build=build, check=check,
                last_resort=last_resort)


# ---------------------------------------------------------------- characters


def characters_schema(limits: Limits) -> dict[str, Any]:
    person = obj({"name": string(limits.short), "role": enum(ROLES), "age": integer(3, 95),
                  "skin": string(limits.short), "hair": string(limits.short), "clothing": string(limits.long)})
    return obj({"characters": array(person, 1, kahani.MAX_CHARACTERS)})


def _story_text(story: StoryOutput | dict[str, Any]) -> str:
    """The story's text from ``plan.story``'s output (typed or its JSON)."""
    told = as_output(StoryOutput, story)
    if told is None or told.story is None:
        raise ValueError("the plan.story output has no story")
    return told.story


def characters_task(spec: StorySpec, story: StoryOutput | dict[str, Any], culture: dict[str, Any], *, seed: int,
                    limits: Limits) -> Task[list[Character]]:
    text_of_story = _story_text(story)

    def build(a: dict[str, Any]) -> list[Character]:
        out: list[Character] = []
        seen: set[str] = set()
        for c in a["characters"][:kahani.MAX_CHARACTERS]:
            if c["name"].lower() in seen:  # the same character listed twice is kept once
                continue
            seen.add(c["name"].lower())
            out.append(kahani.make_character(index=len(out), name=c["name"], role=c["role"], age=int(c["age"]),
                                             skin=c["skin"], hair=c["hair"], dress=c["clothing"],
                                             place=culture["label"], style=kahani.style_for(spec), seed=seed))
        return out

    def check(chars: list[Character]) -> list[Problem]:
        text = text_of_story.lower()
        return [Problem(f"{c.name!r} does not appear in the story: use the story's own characters", "warning")
                for c in chars if c.name.split()[0].lower() not in text]

    data = {"story": text_of_story, "culture": culture["label"], "max_characters": kahani.MAX_CHARACTERS,
            "reference_dress": culture.get("dress"), "reference_skin": culture.get("skin")}
    return Task(prompt_id="kahani.characters", data=data, schema=characters_schema(limits), build=build, check=check)


# ---------------------------------------------------------------- scenes


def scenes_schema(names: list[str], pages: int, limits: Limits) -> dict[str, Any]:
    member = obj({"character": enum(names), "pose": string(limits.short), "expression": string(limits.short)})
    scene = obj({"narration": string(limits.long), "backdrop": string(limits.long),
                 "cast": array(member, 1, min(kahani.MAX_CHARACTERS, len(names)))})
    return obj({"scenes": array(scene, pages, pages)})


def scenes_task(spec: StorySpec, *, job_id: str, seed: int, story: StoryOutput | dict[str, Any], characters: list[Character],
                notes: list[str], planner: PlannerInfo, limits: Limits) -> Task[StoryPlan]:
    told = as_output(StoryOutput, story)
    assert told is not None
    text_of_story = _story_text(told)
    by_name = {c.name: c for c in characters}
    style = kahani.style_for(spec)

    def build(a: dict[str, Any]) -> StoryPlan:
        scenes = []
        for index, s in enumerate(a["scenes"]):
            cast: list[tuple[Character, str, str]] = []
            for m in s["cast"]:
                ch = by_name[m["character"]]
                if all(c.id != ch.id for c, _, _ in cast):  # a character appears once per scene
                    cast.append((ch, m["pose"], m["expression"]))
            boxes = kahani.cast_boxes(cast)
            scenes.append(Scene(index=index, narration=s["narration"], backdrop=s["backdrop"],
                                cast=[CastMember(character_id=ch.id, pose=p, expression=e, box=b)
                                      for (ch, p, e), b in zip(cast, boxes, strict=True)],
                                scene_prompt=kahani.scene_prompt(cast, s["backdrop"], style)))
        return StoryPlan(plan_id=plan_id_for(job_id, S_SCENES), seed=seed, width=kahani.SCENE_WIDTH,
                         height=kahani.SCENE_HEIGHT, negative_prompt=str(load_data("story_beats.json")["negative_prompt"]),
                         planner=planner, title=str(told.title), story=text_of_story, culture_notes=notes,
                         language=spec.language, characters=characters, scenes=scenes)

    def check(plan: StoryPlan) -> list[Problem]:
        return [Problem(f"scene {s.index} narration has {story_length(s.narration, spec.language)} words; "
                        f"at most {MAX_NARRATION_WORDS}")
                for s in plan.scenes if story_length(s.narration, spec.language) > MAX_NARRATION_WORDS]

    def last_resort(plan: StoryPlan) -> tuple[StoryPlan, list[str]]:
        scenes = [s.model_copy(update={"narration": truncate_words(s.narration, MAX_NARRATION_WORDS)})
                  for s in plan.scenes]
        return plan.model_copy(update={"scenes": scenes}), [f"narration cut to {MAX_NARRATION_WORDS} words"]

    data = {"story": text_of_story, "pages": spec.pages, "language": spec.language,
            "characters": [{"name": c.name, "looks": c.description} for c in characters], "culture_notes": notes}
    return Task(prompt_id="kahani.scenes", data=data, schema=scenes_schema(list(by_name), spec.pages, limits),
                build=build, check=check, last_resort=last_resort)

