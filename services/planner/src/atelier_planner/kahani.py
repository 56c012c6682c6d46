"""KAHANI offline planner: culture notes → story → characters → scenes, from a curated lexicon.

* Culture: ``data/cultures.json`` holds specific notes (places, dress, food, festivals, architecture,
  names) for 14 cultures on five continents — Kerala and Punjab (India), Japan, Korea, Hội An (Vietnam),
  Yorubaland (Nigeria), Egypt, the Swahili coast (Kenya), Mexico, Jamaica, the Andes (Peru), Bahia
  (Brazil), Sicily (Italy) and the west of Ireland; any other culture string gets the generic entry with
  that string written into every note. Items that share words
  with the premise are preferred; the rest is chosen by the job's seed.
* Story: beat templates in the languages of ``atelier_contracts.languages.RULES_LANGUAGES`` (English and Hindi in
  ``data/story_beats.json``; each other language's templates, morphology and lexicon in
  ``data/story_lang/<code>.json``), at most 250 words. Any other language is refused
  (:class:`UnsupportedLanguage`, naming the languages it can write) — never English under another label; the
  API refuses it at submit when no LLM planner is configured.
* Characters (<= 3): protagonist, helper and an optional friend, with roles read from the premise
  ("a boy and his grandmother", "her best friend", "named Priya"); descriptions are visual only.
* Scenes: exactly ``pages`` scenes; the story's sentences are split into contiguous groups, each
  scene takes its backdrop and its cast (pose, expression) from the beats it narrates; character
  boxes are equal-width, bottom-aligned columns on the 1024x768 scene canvas.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from atelier_contracts.catalogue import S_SCENE_LAYOUT, S_SCENES
from atelier_contracts.languages import NAMES, RULES_LANGUAGES, rules_can_write, unsupported_message
from atelier_contracts.languages import primary as primary_language
from atelier_contracts.layouts import SceneLayout
from atelier_contracts.plans import Box, CastMember, Character, LayoutPlan, PlannerInfo, Scene, StoryPlan
from atelier_contracts.specs import StorySpec
from atelier_contracts.stage_io import CharactersOutput, CultureOutput, StoryOutput, as_output

from .common import (
    RULES_PLANNER,
    clean_text,
    contains_word,
    derived_seed,
    first_sentence,
    load_data,
    plan_id_for,
    seed_for,
    stable_index,
    truncate_words,
    word_count,
)
from .layout import bottom_aligned_columns, full_canvas_box

MAX_STORY_WORDS = 250
MAX_CHARACTERS = 3
SCENE_WIDTH, SCENE_HEIGHT = 1024, 768
TEMPLATE_LANGUAGES = RULES_LANGUAGES  # data/story_beats.json "languages" (a test keeps them equal)


class UnsupportedLanguage(ValueError):
    """The templates are not written in the requested language."""
Z_CHARACTER = 1

ROLE_NOUN = {"girl": "girl", "boy": "boy", "woman": "woman", "man": "man", "grandmother": "grandmother",
             "grandfather": "grandfather"}
ROLE_STORY_NOUN = {"girl": "little girl", "boy": "little boy", "woman": "young woman", "man": "young man",
                   "grandmother": "grandmother", "grandfather": "grandfather"}
ROLE_GENDER = {"girl": "f", "woman": "f", "grandmother": "f", "boy": "m", "man": "m", "grandfather": "m"}
ROLE_AGES = {"girl": (7, 10), "boy": (7, 10), "woman": (30, 44), "man": (30, 46), "grandmother": (66, 78),
             "grandfather": (66, 80)}

# premise words → role (first mention wins); elders before adults so "grandmother" is not read as "mother"
_ROLE_WORDS: list[tuple[str, tuple[str, ...]]] = [
    ("grandmother", ("grandmother", "grandma", "granny", "nani", "dadi", "ammamma", "ammachi", "abuela", "abuelita",
                     "obaachan", "teta", "biji")),
    ("grandfather", ("grandfather", "grandpa", "grandad", "granddad", "abuelo", "ojiichan", "geddo", "appooppan", "bapu")),
    ("girl", ("girl", "daughter", "granddaughter", "niece", "schoolgirl", "sister")),
    ("boy", ("boy", "son", "grandson", "nephew", "schoolboy", "brother")),
    ("woman", ("woman", "mother", "mom", "mum", "aunt", "aunty", "auntie", "lady", "fisherwoman")),
    ("man", ("man", "father", "dad", "uncle", "fisherman", "farmer", "potter", "weaver")),
]
_FRIEND_WORDS = {"sister": "girl", "sisters": "girl", "brother": "boy", "brothers": "boy", "friend": None,
                 "friends": None, "cousin": None, "cousins": None, "classmate": None, "classmates": None,
                 "neighbour": None, "neighbor": None}
_CHILD = ("girl", "boy")
_OLD = re.compile(r"\b(?:old|elderly|aged|grey-haired|white-haired|retired)\s+(?:\w+\s+)?$")
_NAMED = re.compile(r"\b(?:named|called)\s+([A-Z][\w'-]+)")
_WEIGHT_LOOKALIKE = re.compile(r":(?=\s*[0-9]*\.?[0-9]+\s*\))")  # "5:30)" inside a group would read as weight 30


# ---------------------------------------------------------------- languages

# the languages written from their own file in data/story_lang/<code>.json (templates, morphology and the
# culture lexicon in that language); English and Hindi live in data/story_beats.json
PACK_LANGUAGES: tuple[str, ...] = tuple(code for code in RULES_LANGUAGES if code not in ("en", "hi"))
# English function words: a premise with more of these than of the story language's is an English premise
_EN_STOPWORDS = frozenset("""a an the and of to in on at for with his her their its is are was who he she they
from by as but into this that""".split())


@functools.cache
def story_pack(code: str) -> dict[str, Any] | None:
    """The story templates and lexicon of one language (``data/story_lang/<code>.json``), or None."""
    if code not in PACK_LANGUAGES:
        return None
    return load_data(f"story_lang/{code}.json")  # type: ignore[no-any-return]


def premise_in_language(premise: str, pack: dict[str, Any]) -> bool:
    """Whether the premise is written in the pack's language: its script where it has one, else more of its
    function words than of English's (a premise with neither is taken as written in it)."""
    if pack["premise"].get("script"):
        return re.search(pack["premise"]["script"], premise) is not None
    words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", premise.lower())
    own = set(pack["premise"]["stopwords"])
    ours = sum(1 for w in words if w in own)
    english = sum(1 for w in words if w in _EN_STOPWORDS)
    return ours > english or ours == english == 0


def pack_goal(premise: str, pack: dict[str, Any], max_words: int) -> str | None:
    """The premise's action as an infinitive phrase in the pack's language ("Dos hermanos construyen una cometa"
    → "construir una cometa"), from its wish verbs, conjugated-verb table and verb rules; None when no verb is
    found in its first nine words (the story then frames the premise as written)."""
    cfg = pack["premise"].get("goal")
    if not cfg:
        return None
    words = first_sentence(premise).split()
    bare = [re.sub(r"^[^\w]+|[^\w]+$", "", w).lower() for w in words]
    wish, particles = set(cfg.get("wish", ())), set(cfg.get("particles", ()))
    infinitive = re.compile(cfg.get("infinitive") or r"(?!)")
    for i, word in enumerate(bare[:9]):
        if not word:
            continue
        if word in wish:
            j = i + 1
            while j < len(bare) and bare[j] in particles:
                j += 1
            if j < len(bare) and infinitive.fullmatch(bare[j]):
                goal = " ".join(words[j:])
                break
            continue
        base = cfg.get("verbs", {}).get(word)
        if base is None:
            for rule, repl in cfg.get("verb_rules", ()):
                if re.fullmatch(rule, word):
                    base = re.sub(rule, repl, word)
                    break
        if base is not None and i + 1 < len(words):
            goal = " ".join([base, *words[i + 1:]])
            break
    else:
        return None
    return truncate_words(goal.rstrip(".!?…,;:؟।" + " "), max_words).rstrip("…")


# ---------------------------------------------------------------- culture


def _fill(value: Any, culture: str) -> Any:
    if isinstance(value, str):
        return value.replace("{culture}", culture)
    if isinstance(value, list):
        return [_fill(v, culture) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, culture) for k, v in value.items()}
    return value


def _fill_keys(value: Any, culture: str, written: str) -> Any:
    """:func:`_fill` of a language's lexicon: its keys are the English items (filled with ``culture``, as the
    picks are), its values the language's own (filled with ``written``)."""
    if isinstance(value, dict):
        return {_fill(k, culture): _fill_keys(v, culture, written) for k, v in value.items()}
    return _fill(value, written)


def resolve_culture(culture: str) -> dict[str, Any]:
    """The lexicon entry for a culture string (aliases score 3 strong / 1 weak), else the generic one."""
    lex = load_data("cultures.json")
    text = clean_text(culture)
    best: tuple[int, int, dict[str, Any]] | None = None
    for i, candidate in enumerate(lex["cultures"]):
        score = 3 * sum(1 for a in candidate["aliases"]["strong"] if contains_word(text, [a]))
        score += sum(1 for a in candidate["aliases"]["weak"] if contains_word(text, [a]))
        if score > 0 and (best is None or score > best[0]):
            best = (score, -i, candidate)
    entry: dict[str, Any]
    if best is not None:
        entry = {k: v for k, v in best[2].items() if k != "aliases"}
    else:
        # the culture string goes into every generic note; a long one is cut to its first clause
        short = " ".join(text.split(",")[0].split()[:5]) or text
        entry = dict(_fill(lex["generic"], short))
        entry["label"] = short
    entry["requested"] = text
    return entry


_STOP = frozenset("""with from that this these those their there them they then than when where which while what
have has had wants want wanted make makes made named called into onto over under about after before during
every each some very just only also your yours ours will would could should must been being were does did
story little girl boy woman man grandmother grandfather mother father friend friends family day days""".split())


def _premise_words(premise: str) -> set[str]:
    return {w for w in re.findall(r"[a-zà-ÿ]+", premise.lower()) if len(w) >= 4 and w not in _STOP}


def _rank(items: list[Any], premise: str, seed: int, label: str) -> list[Any]:
    """Items sharing words with the premise first, then a seeded order."""
    words = _premise_words(premise)

    def text_of(item: Any) -> str:
        return " ".join(str(v) for v in item.values()) if isinstance(item, dict) else str(item)

    def key(ix: tuple[int, Any]) -> tuple[int, int]:
        i, item = ix
        score = len(words & set(re.findall(r"[a-zà-ÿ]+", text_of(item).lower())))
        return (-score, stable_index(1_000_003, seed, label, i))

    return [item for _, item in sorted(enumerate(items), key=key)]


def pick_culture_items(entry: dict[str, Any], premise: str, seed: int) -> dict[str, Any]:
    places = _rank(entry["places"], premise, seed, "place")
    foods = _rank(entry["food"], premise, seed, "food")
    return {
        "place": places[0], "place2": places[1 % len(places)],
        "food": foods[0], "food2": foods[1 % len(foods)],
        "festival": _rank(entry["festivals"], premise, seed, "festival")[0],
        "architecture": _rank(entry["architecture"], premise, seed, "architecture")[0],
        "detail": _rank(entry["details"], premise, seed, "detail")[0],
    }


def culture_notes(entry: dict[str, Any], picks: dict[str, Any], spec: StorySpec) -> list[str]:
    d, names = entry["dress"], entry["names"]
    fest = picks["festival"]
    foods = [picks["food"]["en"]] + [f["en"] for f in entry["food"] if f["en"] != picks["food"]["en"]]
    notes = [
        f"Setting: {entry['label']} — {picks['place']['scene']}; also {picks['place2']['scene']}.",
        f"Language and community: {entry['language']} is spoken at home. {entry['community']}",
        f"Dress: girls wear {d['girl']}; boys wear {d['boy']}; women wear {d['woman']}; men wear {d['man']}.",
        f"Elders' dress: grandmothers wear {d['grandmother']}; grandfathers wear {d['grandfather']}.",
        f"Food: {', '.join(foods[:-1])} and {foods[-1]}." if len(foods) > 1 else f"Food: {foods[0]}.",
        f"Festival: {fest['name']} — {fest['desc']}.",
        f"Architecture: {picks['architecture']}; also " + "; ".join(a for a in entry["architecture"] if a != picks["architecture"]) + "."
        if len(entry["architecture"]) > 1 else f"Architecture: {picks['architecture']}.",
        f"Everyday objects: {', '.join(entry['details'])}.",
        "Names: children such as " + ", ".join(n["en"] for n in names["girl"] + names["boy"])
        + "; elders are addressed as " + ", ".join(n["en"] for n in names["grandmother"] + names["grandfather"]) + ".",
    ]
    if spec.audience:
        notes.append(f"Audience: {spec.audience}; keep the words simple (reading grade 5 or below).")
    return notes


def culture_stage(spec: StorySpec, *, job_id: str) -> dict[str, Any]:
    """Output of ``plan.culture``: notes and the resolved lexicon entry with this story's picks."""
    seed = seed_for(job_id, spec.seed)
    entry = resolve_culture(spec.culture)
    picks = pick_culture_items(entry, spec.premise, seed)
    return {"culture_notes": culture_notes(entry, picks, spec), "culture": {**entry, "picks": picks}}


def _culture_from(upstream: CultureOutput | dict[str, Any] | None, spec: StorySpec, job_id: str) -> dict[str, Any]:
    """The lexicon entry (with its picks) of ``plan.culture``'s output, or this spec's own when there is none."""
    out = as_output(CultureOutput, upstream)
    if out is not None and isinstance(out.culture, dict) and "picks" in out.culture:
        return out.culture
    return culture_stage(spec, job_id=job_id)["culture"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- cast


@dataclass(frozen=True)
class CastSpec:
    slot: str  # hero | helper | friend
    role: str  # girl | boy | woman | man | grandmother | grandfather
    name: str
    name_hi: str
    age: int
    skin: str
    hair: str
    dress: str

    @property
    def gender(self) -> str:
        return ROLE_GENDER[self.role]


def _mentions(premise: str, pack: dict[str, Any] | None = None) -> list[tuple[int, str]]:
    """(position, role) of every role word in the premise: the English words, and the story language's own
    (``premise.role_words`` of its pack; whole words in Latin script, substrings in others)."""
    low = premise.lower()
    found: list[tuple[int, str]] = []
    taken: list[tuple[int, int]] = []
    lists: list[tuple[str, tuple[str, ...], str]] = []
    if pack is not None:
        pattern = r"\b{w}\b" if not pack["premise"].get("script") else "{w}"
        # the language's elder words first, as in English; longer words before the words inside them
        lists = [(role, tuple(sorted(pack["premise"]["role_words"].get(role, ()), key=len, reverse=True)), pattern)
                 for role, _ in _ROLE_WORDS]
    if pack is None or not premise_in_language(premise, pack):  # English words only in an English premise
        lists += [(role, words, r"\b{w}s?\b") for role, words in _ROLE_WORDS]  # ("son" is French for "his")
    for role, words, pattern in lists:
        for w in words:
            for m in re.finditer(pattern.format(w=re.escape(w.lower())), low):
                if any(a <= m.start() < b or a < m.end() <= b for a, b in taken):
                    continue
                taken.append((m.start(), m.end()))
                if role in ("woman", "man") and _OLD.search(low[max(0, m.start() - 24):m.start()]):
                    role_here = "grandmother" if role == "woman" else "grandfather"
                else:
                    role_here = role
                found.append((m.start(), role_here))
    return sorted(found)


def _friend_word(premise: str, pack: dict[str, Any] | None) -> tuple[str, str | None] | None:
    """The first friend/sibling word of the premise (English or the story language's) and the role it implies."""
    words: dict[str, str | None] = dict(_FRIEND_WORDS)
    if pack is not None:
        own = {k.lower(): v for k, v in pack["premise"]["friend_words"].items()}
        words = own if premise_in_language(premise, pack) else {**own, **words}
        if pack["premise"].get("script"):
            low = premise.lower()
            hit = next((w for w in pack["premise"]["friend_words"] if w.lower() in low), None)
            if hit is not None:
                return hit, words[hit.lower()]
    hit = contains_word(premise, list(words))
    return (hit, words[hit.lower()]) if hit is not None else None


def cast_roles(premise: str, seed: int, language: str = "en") -> list[tuple[str, str]]:
    """(slot, role) for protagonist, helper and optional friend, read from the premise (in English or in the
    story's language)."""
    pack = story_pack(primary_language(language))
    mentions = _mentions(premise, pack)
    children = [r for _, r in mentions if r in _CHILD]
    grown = [r for _, r in mentions if r not in _CHILD]
    if children:
        hero = children[0]
    elif grown:
        hero = grown.pop(0)
    else:
        hero = ("girl", "boy")[stable_index(2, seed, "hero-role")]
    helper = next((r for r in grown if r in ("grandmother", "grandfather", "woman", "man")), None)
    if helper is None:
        helper = ("grandmother", "grandfather")[stable_index(2, seed, "helper-role")]
    out = [("hero", hero), ("helper", helper)]
    friend = _friend_word(premise, pack)
    if friend is not None:
        role = friend[1] or ("boy" if ROLE_GENDER[hero] == "f" else "girl")
        out.append(("friend", role))
    elif len(children) > 1:
        out.append(("friend", children[1]))
    return out[:MAX_CHARACTERS]


def _named(premise: str, language: str) -> str | None:
    """A name the premise gives its hero ("named Priya", or the story language's own way of saying it)."""
    m = _NAMED.search(premise)
    pack = story_pack(primary_language(language))
    if m is None and pack is not None and pack["premise"].get("named"):
        m = re.search(pack["premise"]["named"], premise)
    return m.group(1) if m else None


def cast_for(spec: StorySpec, culture: dict[str, Any], seed: int) -> list[CastSpec]:
    """The story's characters: roles from the premise, names/looks from the culture lexicon."""
    explicit = _named(spec.premise, spec.language)
    used: set[str] = set()
    cast: list[CastSpec] = []
    for slot, role in cast_roles(spec.premise, seed, spec.language):
        options = culture["names"][role]
        if slot == "hero" and explicit:
            name, name_hi = explicit, explicit
        else:
            start = stable_index(len(options), seed, slot, "name")
            pick = next((options[(start + k) % len(options)] for k in range(len(options))
                         if options[(start + k) % len(options)]["en"] not in used), options[start])
            name, name_hi = pick["en"], pick["hi"]
        used.add(name)
        lo, hi = ROLE_AGES[role]
        age = lo + stable_index(hi - lo + 1, seed, slot, "age")
        skins = culture["skin"]
        cast.append(CastSpec(slot=slot, role=role, name=name, name_hi=name_hi, age=age,
                             skin=skins[stable_index(len(skins), seed, slot, "skin")],
                             hair=culture["hair"][role], dress=culture["dress"][role]))
    return cast


# ---------------------------------------------------------------- story


@dataclass
class Sentence:
    text: str
    beat: dict[str, Any]


@dataclass
class StoryDraft:
    title: str
    language: str
    template_language: str
    sentences: list[Sentence] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences)


def template_language(language: str) -> str:
    """The templates that write ``language`` (its primary subtag); UnsupportedLanguage when there are none."""
    if not rules_can_write(language):
        raise UnsupportedLanguage(unsupported_message(language))
    return primary_language(language)


def _slots(lang: str, cast: list[CastSpec], picks: dict[str, Any], premise: str,
           goal: str | None = None) -> dict[str, str]:
    by = {c.slot: c for c in cast}
    hero, helper, friend = by["hero"], by["helper"], by.get("friend")
    if lang == "hi":
        beats = load_data("story_beats.json")
        hm = beats["hi_morph"][hero.role]
        gm = beats["hi_helper"][helper.gender]
        pair = beats["hi_pair"]["ff" if hero.gender == helper.gender == "f" else "other"]
        return {
            "hero": hero.name_hi, "helper": helper.name_hi, "friend": friend.name_hi if friend else "",
            "hero_naam": hm["naam"], "hero_rahta": hm["rahta"], "h_gaya": hm["gaya"], "h_laga": hm["laga"],
            "g_muskuraye": gm["muskuraye"], "g_bole": gm["bole"], "g_dikhata": gm["dikhata"],
            "f_gaya": beats["hi_morph"][friend.role]["gaya"] if friend else "", "pair_gaye": pair,
            "place": picks["place"]["hi"], "place2": picks["place2"]["hi"], "food": picks["food"]["hi"],
            "food2": picks["food2"]["hi"], "festival": picks["festival"]["hi"], "premise": premise,
        }
    return {
        "hero": hero.name, "hero_noun": ROLE_STORY_NOUN[hero.role], "helper": helper.name, "helper_dress": helper.dress,
        "friend": friend.name if friend else "", "place": picks["place"]["en"], "place2": picks["place2"]["en"],
        "food": picks["food"]["en"], "food2": picks["food2"]["en"], "festival": picks["festival"]["name"],
        "festival_title": _title_case(picks["festival"]["name"].removeprefix("the ")), "architecture": picks["architecture"],
        "detail": picks["detail"], "premise": premise, "premise_goal": goal or "",
    }


_DEVANAGARI = re.compile(r"[\u0900-\u097F]")


def _title_case(text: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in text.split())


# verbs a premise's action starts with ("Two brothers build a kite ..."), in their base form
_PREMISE_VERBS = frozenset("""build make find search look help learn cook bake save plant grow paint fix repair mend sew knit
weave win prepare visit rescue catch fly sail climb dance sing write draw carry share open start enter teach return
bring deliver clean collect celebrate decorate chase follow discover explore race train practise practice try want
wish hope dream plan go run walk swim ride play read protect feed care wait get take join lead solve finish design
create invent craft bring set light host throw keep raise restore rebuild renovate""".split())
_WISH_VERBS = frozenset({"want", "wish", "hope", "dream", "plan", "try"})


def _base_verb(word: str) -> str | None:
    w = re.sub(r"[^a-z]", "", word.lower())
    for base in (w, w[:-1] if w.endswith("s") else "", w[:-2] if w.endswith("es") else "",
                 w[:-3] + "y" if w.endswith("ies") else ""):
        if base and base in _PREMISE_VERBS:
            return base
    return None


def premise_goal(premise: str, max_words: int) -> str | None:
    """The premise's action as the hero's goal, in the base form ("Two brothers build a kite for the festival" →
    "build a kite for the festival"; "A girl wants to find her lost cat" → "find her lost cat"), so the story
    tells it rather than quoting the premise; None when no action verb is found in its first words."""
    words = first_sentence(premise).split()
    for i, word in enumerate(words[1:9], start=1):
        base = _base_verb(word)
        if base is None:
            continue
        rest = words[i + 1:]
        if base in _WISH_VERBS and rest[:1] == ["to"] and len(rest) > 1:
            base, rest = rest[1].lower(), rest[2:]
        goal = " ".join([base, *rest]).rstrip(".!?…,;: ")
        return truncate_words(goal, max_words).rstrip("…") if len(rest) else None
    return None


def premise_clause(premise: str, lang: str, max_words: int) -> str:
    """The premise's first sentence, cut to ``max_words``, closed for the template's language.

    A premise not written in the story's script is quoted rather than glued into the sentence."""
    text = truncate_words(first_sentence(premise), max_words)
    if lang == "hi":
        return f"{text}।" if _DEVANAGARI.search(text) else f"“{text.rstrip('.…')}.”"
    return text if text.endswith("…") else f"{text}."


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _pack_slots(pack: dict[str, Any], cast: list[CastSpec], culture: dict[str, Any], premise: str,
                goal: str | None, missing: list[str]) -> dict[str, str]:
    """The slots of a language pack's templates: names in its script, the role morphology of hero (``h_``),
    helper (``g_``) and friend (``f_``), the pair's agreement (``p_``), and the picked places, foods and festival
    in every form the pack declares (``place_in``, ``food_obj``…). A pick the pack has no entry for is written as
    in English and named in ``missing``."""
    by = {c.slot: c for c in cast}
    hero, helper, friend = by["hero"], by["helper"], by.get("friend")
    lexicon = pack["lexicon"]
    # a culture the lexicon does not know is written as the user gave it, without an English leading article
    label = str(culture.get("label", ""))
    lex = _fill_keys(lexicon.get(culture.get("key", "generic"), lexicon["generic"]), label,
                     re.sub(r"^(?:the|a|an)\s+", "", label, flags=re.IGNORECASE))
    names: dict[str, str] = lex.get("names", {})
    morph = pack["morph"]
    pair = "ff" if hero.gender == helper.gender == "f" else "mm" if hero.gender == helper.gender == "m" else "mixed"
    slots: dict[str, str] = {
        "hero": names.get(hero.name, hero.name), "helper": names.get(helper.name, helper.name),
        "friend": names.get(friend.name, friend.name) if friend else "",
        "premise": premise, "premise_goal": goal or "",
        **{f"h_{k}": v for k, v in morph[hero.role].items()},
        **{f"g_{k}": v for k, v in morph[helper.role].items()},
        **{f"f_{k}": v for k, v in (morph[friend.role] if friend else dict.fromkeys(morph["girl"], "")).items()},
        **{f"p_{k}": v for k, v in pack["pair"][pair].items()},
    }
    picks = culture["picks"]
    for slot, kind, form_kind, key in (("place", "places", "place", "en"), ("place2", "places", "place", "en"),
                                       ("food", "food", "food", "en"), ("food2", "food", "food", "en"),
                                       ("festival", "festivals", "festival", "name")):
        english = str(picks[slot][key])
        forms = lex.get(kind, {}).get(english)
        if forms is None:
            missing.append(english)
            forms = dict.fromkeys(pack["forms"][form_kind], english)
        slots.update({f"{slot}_{form}": value for form, value in forms.items()})
    return slots


def pack_premise_clause(premise: str, pack: dict[str, Any], native: bool, max_words: int) -> str:
    """The premise's first sentence closed with the pack's full stop; quoted when it is in another language."""
    text = truncate_words(first_sentence(premise), max_words)
    if native:
        return text if text.endswith("…") else f"{text}{pack['full_stop']}"
    opening, closing = pack["premise"]["quotes"]
    return f"{opening}{text.rstrip('.…')}{closing}{pack['full_stop']}"


def compose_story(spec: StorySpec, culture: dict[str, Any], seed: int) -> StoryDraft:
    """The story as annotated sentences (beat per sentence), <= 250 words, >= ``pages`` sentences."""
    data = load_data("story_beats.json")
    lang = template_language(spec.language)
    pack = story_pack(lang)
    native = pack is not None and premise_in_language(spec.premise, pack)
    cast = cast_for(spec, culture, seed)
    has_friend = any(c.slot == "friend" for c in cast)
    picks = culture["picks"]
    beats = [b for b in data["beats"]
             if b.get("requires") is None or (b["requires"] == "friend") == has_friend]
    missing: list[str] = []

    def templates(beat: dict[str, Any], goal: str | None) -> list[str]:
        if pack is not None:
            own = pack["beats"]
            return own["premise_fallback"] if beat["id"] == "premise" and not goal else own[beat["id"]]  # type: ignore[no-any-return]
        # the premise told as the hero's goal; quoted only when no action could be read from it
        return beat[f"{lang}_fallback"] if f"{lang}_fallback" in beat and not goal else beat[lang]  # type: ignore[no-any-return]

    def render(premise_words: int, drop_optional: int) -> list[Sentence]:
        if pack is None:
            goal = premise_goal(spec.premise, premise_words) if lang == "en" else None
            slots = _slots(lang, cast, picks, premise_clause(spec.premise, lang, premise_words), goal)
        else:
            goal = pack_goal(spec.premise, pack, premise_words) if native else None
            missing.clear()
            slots = _pack_slots(pack, cast, culture, pack_premise_clause(spec.premise, pack, native, premise_words),
                                goal, missing)
        out: list[Sentence] = []
        optional_seen = 0
        for b in beats:
            if b.get("optional") and optional_seen < drop_optional:
                optional_seen += 1
                continue
            variants = templates(b, goal)
            text = variants[stable_index(len(variants), seed, b["id"], lang)].format(**slots)
            text = _cap(text)
            out.append(Sentence(text=clean_text(text), beat=b))
        return out

    n_optional = sum(1 for b in beats if b.get("optional"))
    sentences = render(30, 0)
    for premise_words, drop in ((30, 1), (30, 2), (20, 2), (12, 2), (6, 2)):
        if word_count(" ".join(s.text for s in sentences)) <= MAX_STORY_WORDS:
            break
        drop = min(drop, n_optional, len(beats) - spec.pages)
        sentences = render(premise_words, max(0, drop))
    total = word_count(" ".join(s.text for s in sentences))
    if total > MAX_STORY_WORDS:  # last resort (very long names): cut every sentence to an equal share
        share = MAX_STORY_WORDS // len(sentences)
        sentences = [Sentence(truncate_words(s.text, share), s.beat) for s in sentences]
    warnings = []
    name = NAMES.get(lang, lang)
    if (lang == "hi" and not _DEVANAGARI.search(spec.premise)) or (pack is not None and not native):
        warnings.append(f"plan.story: the premise is not written in {name} and the rules planner cannot translate "
                        "it; it is quoted as written (an LLM planner writes it into the story)")
    if missing:
        warnings.append(f"plan.story: the {name} lexicon has no entry for {', '.join(sorted(set(missing)))}; "
                        "written as in English")
    if pack is not None:
        title_slots = _pack_slots(pack, cast, culture, "", None, [])
        titles = pack["titles"]
    else:
        title_slots = _slots(lang, cast, picks, "")
        titles = data["titles"][lang]
    title = titles[stable_index(len(titles), seed, "title", lang)].format(**title_slots)
    return StoryDraft(title=_cap(title), language=spec.language, template_language=lang, sentences=sentences,
                      warnings=warnings)


def story_stage(spec: StorySpec, *, job_id: str, culture_output: CultureOutput | dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """Output of ``plan.story``."""
    seed = seed_for(job_id, spec.seed)
    draft = compose_story(spec, _culture_from(culture_output, spec, job_id), seed)
    out: dict[str, Any] = {"title": draft.title, "story": draft.text, "language": draft.language,
                           "template_language": draft.template_language}
    if draft.warnings:
        out["warnings"] = draft.warnings
    return out


# ---------------------------------------------------------------- characters


def _style(spec: StorySpec) -> str:
    return spec.style or str(load_data("story_beats.json")["default_style"])


def make_character(*, index: int, name: str, role: str, age: int, skin: str, hair: str, dress: str, place: str,
                   style: str, seed: int) -> Character:
    """A Character with KAHANI's visual-only description and character-sheet prompt (id ``c<index>``)."""
    noun = ROLE_NOUN.get(role, role)
    description = f"{age}-year-old {noun} from {place} with {skin}, {hair}, wearing {dress}"
    g = in_group
    sheet_prompt = (f"(full body:1.5), {g(noun)} from {g(place)}, {age}-year-old, {g(skin)}, in {g(dress)}, "
                    f"{g(hair)}, (standing:1.5), front view, looking at viewer, (plain white background:1.3), "
                    f"({g(style)}:1.2)")
    cid = f"c{index}"
    return Character(id=cid, name=name, description=description, sheet_prompt=sheet_prompt,
                     seed=derived_seed(seed, "character", cid))


def character_for(c: CastSpec, culture: dict[str, Any], spec: StorySpec, seed: int, index: int) -> Character:
    return make_character(index=index, name=c.name, role=c.role, age=c.age, skin=c.skin, hair=c.hair, dress=c.dress,
                          place=culture["label"], style=_style(spec), seed=seed)


def characters_stage(spec: StorySpec, *, job_id: str, culture_output: CultureOutput | dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """Output of ``plan.characters``: <= 3 characters with ids c0, c1, ..."""
    seed = seed_for(job_id, spec.seed)
    culture = _culture_from(culture_output, spec, job_id)
    chars = [character_for(c, culture, spec, seed, i) for i, c in enumerate(cast_for(spec, culture, seed))]
    return {"characters": [c.model_dump(mode="json") for c in chars]}


# ---------------------------------------------------------------- scenes


def figure_height(description: str) -> float:
    """Box height (fraction of the canvas) from the age in a description: children are shorter."""
    m = re.search(r"(\d{1,3})-year-old", description)
    age = int(m.group(1)) if m else 30
    if age < 13:
        return 0.56
    if age >= 60:
        return 0.78
    return 0.82


def backdrop_for(setting: str, picks: dict[str, Any]) -> str:
    if setting == "place":
        return str(picks["place"]["scene"])
    if setting == "place2":
        return f"{picks['place2']['scene']}, with {picks['detail']}"
    if setting == "festival":
        return f"{picks['festival']['name']} celebrations in {picks['place']['en']}: {picks['festival']['desc']}"
    return f"{picks['architecture']} in {picks['place']['en']}"


def split_evenly(n_items: int, n_groups: int) -> list[range]:
    """Contiguous groups whose sizes differ by at most one (earlier groups take the extra)."""
    base, extra = divmod(n_items, n_groups)
    out, start = [], 0
    for g in range(n_groups):
        size = base + (1 if g < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def _sentences(text: str) -> list[str]:
    parts = re.findall(r"[^.!?।؟]+[.!?।؟]+[\"”»]?|[^.!?।؟]+$", text)
    return [clean_text(p) for p in parts if clean_text(p)]


def in_group(text: str) -> str:
    """``text`` as it may stand inside an A1111 weighted group ``(text:1.3)``, the syntax the GPU worker's prompt
    encoding reads: a colon that would read as a weight (``at 5:30)``) becomes a space, and unbalanced parentheses
    are dropped (balanced ones stay: they are read as text). Text a planner writes is unchanged otherwise."""
    text = _WEIGHT_LOOKALIKE.sub(" ", text)
    depth = 0
    for c in text:
        depth += (c == "(") - (c == ")")
        if depth < 0:
            break
    return text if depth == 0 else text.replace("(", "").replace(")", "")


def scene_prompt(cast: list[tuple[Character, str, str]], backdrop: str, style: str) -> str:
    """KAHANI's scene template: ``names, ((name, look:1.3), (pose, expression:1.2)), ..., (backdrop:1.1), style``
    (each piece of text :func:`in_group`)."""
    g = in_group
    names = " and ".join(g(ch.name) for ch, _, _ in cast)
    parts = [f"(({g(ch.name)}, {g(ch.description.split(' with ')[0])}, wearing "
             f"{g(ch.description.split(' wearing ')[-1])}:1.3), ({g(pose)}, {g(expr)}:1.2))" for ch, pose, expr in cast]
    head = f"{names}, " if names else ""
    return f"{head}{', '.join(parts)}{', ' if parts else ''}({g(backdrop)}:1.1), {g(style)}"


def _cast_boxes(cast: list[tuple[Character, str, str]]) -> list[Box]:
    boxes = bottom_aligned_columns([figure_height(ch.description) for ch, _, _ in cast])
    return [Box(bbox=b, caption=f"{ch.name}, {pose}, {expr}", role="character", z=Z_CHARACTER)
            for b, (ch, pose, expr) in zip(boxes, cast, strict=True)]


def scenes_stage(spec: StorySpec, *, job_id: str, story_output: StoryOutput | dict[str, Any] | None = None,
                 characters_output: CharactersOutput | dict[str, Any] | None = None,
                 culture_output: CultureOutput | dict[str, Any] | None = None,
                 planner: PlannerInfo = RULES_PLANNER) -> StoryPlan:
    """Output plan of ``plan.scenes``: a StoryPlan with exactly ``spec.pages`` scenes."""
    seed = seed_for(job_id, spec.seed)
    culture = _culture_from(culture_output, spec, job_id)
    culture_out = as_output(CultureOutput, culture_output)
    notes = (culture_out.culture_notes if culture_out is not None else None) \
        or culture_stage(spec, job_id=job_id)["culture_notes"]
    story = as_output(StoryOutput, story_output) or StoryOutput.model_validate(
        story_stage(spec, job_id=job_id, culture_output=culture_output))
    cast = as_output(CharactersOutput, characters_output) or CharactersOutput.model_validate(
        characters_stage(spec, job_id=job_id, culture_output=culture_output))
    characters = cast.characters[:MAX_CHARACTERS]
    by_slot = dict(zip(("hero", "helper", "friend"), characters, strict=False))
    style = _style(spec)
    draft = compose_story(spec, culture, seed)
    text = story.story or ""
    annotated = draft.text == text
    texts = [s.text for s in draft.sentences] if annotated else _sentences(text)
    pages = spec.pages
    if len(texts) < pages:  # a foreign (LLM) story with fewer sentences than pages: split on commas too
        texts = [p for t in texts for p in re.split(r"(?<=,)\s+", t)]
    groups = split_evenly(len(texts), pages)
    scenes = []
    for index, group in enumerate(groups):
        idx = list(group) or [min(index, len(texts) - 1)]
        narration = " ".join(texts[i] for i in group) if len(group) else texts[idx[0]]
        cast: list[tuple[Character, str, str]] = []
        if annotated:
            beats = [draft.sentences[i].beat for i in idx]
            setting = beats[0]["setting"]
            for slot in ("hero", "helper", "friend"):
                first = next((b["cast"][slot] for b in beats if slot in b["cast"]), None)
                if first is not None and slot in by_slot:
                    cast.append((by_slot[slot], first[0], first[1]))
        else:
            setting = "place"
            cast = [(c, "standing", "smiling") for c in characters]
        if not cast and characters:
            cast = [(characters[0], "standing", "smiling")]
        backdrop = backdrop_for(setting, culture["picks"])
        boxes = _cast_boxes(cast)
        scenes.append(Scene(
            index=index, narration=narration, backdrop=backdrop,
            cast=[CastMember(character_id=ch.id, pose=pose, expression=expr, box=box)
                  for (ch, pose, expr), box in zip(cast, boxes, strict=True)],
            scene_prompt=scene_prompt(cast, backdrop, style)))
    data = load_data("story_beats.json")
    return StoryPlan(plan_id=plan_id_for(job_id, S_SCENES), seed=seed, width=SCENE_WIDTH, height=SCENE_HEIGHT,
                     negative_prompt=str(data["negative_prompt"]), planner=planner, title=str(story.title),
                     story=text, culture_notes=[str(n) for n in notes], language=spec.language,
                     characters=characters, scenes=scenes)


def page_layouts(spec: StorySpec | dict[str, Any] | None) -> dict[int, SceneLayout]:
    """The story's own page layouts (``spec.layouts``) by scene index (page - 1)."""
    if spec is None:
        return {}
    layouts = spec.layouts if isinstance(spec, StorySpec) else StorySpec.model_validate(spec).layouts
    return {layout.page - 1: layout for layout in layouts}


def with_page_layouts(plan: StoryPlan, layouts: dict[int, SceneLayout]) -> StoryPlan:
    """``plan`` with the cast of every page that has its own layout placed in that layout's character boxes, in
    cast order (a cast member beyond them keeps the planner's box)."""
    if not layouts:
        return plan
    scenes = []
    for n, scene in enumerate(sorted(plan.scenes, key=lambda s: s.index)):
        own = layouts.get(n)
        if own is None:
            scenes.append(scene)
            continue
        boxes = [b for b in own.boxes if b.role == "character"]
        cast = [m.model_copy(update={"box": m.box.model_copy(update={"bbox": tuple(boxes[i].bbox)})})
                if i < len(boxes) else m for i, m in enumerate(scene.cast)]
        scenes.append(scene.model_copy(update={"cast": cast}))
    return plan.model_copy(update={"scenes": scenes})


def apply_page_layouts(output: dict[str, Any], spec: StorySpec) -> dict[str, Any]:
    """A ``plan.scenes`` output (either backend's) with the story's own page layouts applied to its plan."""
    layouts = page_layouts(spec)
    if not layouts or not isinstance(output.get("plan"), dict):
        return output
    plan = with_page_layouts(StoryPlan.model_validate(output["plan"]), layouts)
    names = {c.id: c.name for c in plan.characters}
    notes = []
    for n, scene in enumerate(sorted(plan.scenes, key=lambda s: s.index)):
        own = layouts.get(n)
        boxes = sum(b.role == "character" for b in own.boxes) if own is not None else 0
        if own is not None and len(scene.cast) > boxes:
            left = ", ".join(names.get(m.character_id, m.character_id) for m in scene.cast[boxes:])
            notes.append(f"page {n + 1}: {len(scene.cast)} cast members, {boxes} character box(es); "
                         f"{left} keep(s) the planner's box")
    return {**output, "plan": plan.model_dump(mode="json"),
            "page_layouts": {"pages": sorted(n + 1 for n in layouts if n < len(plan.scenes)), "notes": notes}}


def scene_layouts(plan: StoryPlan, *, sheets: dict[str, str], job_id: str,
                  planner: PlannerInfo = RULES_PLANNER, require_sheets: bool = True,
                  pages: dict[int, SceneLayout] | None = None) -> list[LayoutPlan]:
    """One LayoutPlan per scene (index order): a backdrop box plus one character box per cast member,
    whose ``ref_artifact`` is that character's sheet key. Raises KeyError naming a missing sheet, unless
    ``require_sheets`` is false (a preview, before any sheet exists: ``ref_artifact`` stays None). ``pages``: the
    story's own page layouts by scene index (``page_layouts``): their character boxes place the cast, their entity
    boxes are added with their captions."""
    layouts = []
    pages = pages or {}
    plan = with_page_layouts(plan, pages)
    for n, scene in enumerate(sorted(plan.scenes, key=lambda s: s.index)):
        boxes = [full_canvas_box(scene.backdrop)]
        for member in scene.cast:
            if member.character_id not in sheets and require_sheets:
                raise KeyError(f"no character sheet for {member.character_id}")
            boxes.append(member.box.model_copy(update={"ref_artifact": sheets.get(member.character_id)}))
        own = pages.get(n)
        if own is not None:
            boxes += [Box(bbox=tuple(b.bbox), caption=b.caption, role="entity", z=5)
                      for b in own.boxes if b.role == "entity"]
        layouts.append(LayoutPlan(
            plan_id=plan_id_for(job_id, S_SCENE_LAYOUT, scene.index), seed=derived_seed(plan.seed, "scene", scene.index),
            width=SCENE_WIDTH, height=SCENE_HEIGHT, negative_prompt=plan.negative_prompt, planner=planner,
            global_caption=scene.scene_prompt, boxes=boxes))
    return layouts


# public names for the LLM planners, which build on the same templates
style_for = _style
culture_from = _culture_from
cast_boxes = _cast_boxes
