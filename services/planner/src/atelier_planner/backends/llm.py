"""The LLM backends (``openai``, ``transformers``, ``vllm``): one planner over three engines, rules as fallback.

Every stage tries its LLM task (:mod:`atelier_planner.llm`); when the engine fails or the answer does not
validate after the repair pass, the stage (or, for per-size / per-scene work, that item) is planned by the
rules backend instead, and the output's ``planner`` says so::

    {"backend": "rules", "engine": "rules", "model": "rules-v1", "prompt_version": "rules-1",
     "fallback": {"from": "openai", "model": "atelier-llm", "prompt_version": "kahani.story/v1",
                  "error": "EngineError: ... timed out ...", "problems": [...], "attempts": 3}}

With ``fallback=False`` (``ATELIER_PLANNER_FALLBACK=false``) the error propagates and the stage fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from atelier_contracts.catalogue import S_AD_PROMPTS
from atelier_contracts.layouts import SceneLayout
from atelier_contracts.placements import parse_size
from atelier_contracts.plans import Box, LayoutPlan, PlannerInfo, RegionalPlan, StoryPlan
from atelier_contracts.specs import CampaignSpec, StorySpec
from atelier_contracts.stage_io import AdPromptsOutput, CharactersOutput, CultureOutput, StoryOutput, as_output
from atelier_runtime.settings import Settings

from .. import kahani, paid
from ..common import RULES_PLANNER, derived_seed, plan_id_for, seed_for
from ..layout import aspect_class, safe_zone_for
from ..llm import designer as llm_designer
from ..llm import kahani as llm_kahani
from ..llm import paid as llm_paid
from ..llm import rpg as llm_rpg
from ..llm.client import ChatClient
from ..llm.engines import Engine, OpenAIEngine, TransformersEngine, VLLMEngine
from ..llm.errors import EngineUnavailable, LLMError
from ..llm.images import data_url
from ..llm.prompts import load_prompt
from ..llm.runner import Result, run_task
from ..llm.schema import Limits
from ..metrics import layout_metrics, regional_metrics
from .base import Planned
from .rules import RulesBackend, layout_output, rules_run, scenes_metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class LLMBackend:
    """PAID, KAHANI, RPG and CreatiLayout on an LLM engine (and a VLM for PAID prompts), rules as fallback."""

    def __init__(self, engine: Engine, *, vlm: Engine | None = None, fallback: bool = True, limits: Limits | None = None,
                 allow_occlude: bool = False, vlm_max_image_side: int = 768) -> None:
        self.engine = engine
        self.vlm = vlm
        self.name = engine.kind
        self.fallback = fallback
        self.limits = limits or Limits()
        self.allow_occlude = allow_occlude
        self.vlm_max_image_side = vlm_max_image_side
        self.rules = RulesBackend(allow_occlude=allow_occlude)
        self.info = PlannerInfo(backend="llm", model=f"{engine.kind}:{engine.model}", prompt_version="")

    # ------------------------------------------------------------ provenance

    def plan_info(self, *prompt_ids: str, engine: Engine | None = None) -> PlannerInfo:
        """What an LLM plan records: backend ``llm``, ``<engine>:<model>`` and the prompt version(s)."""
        e = engine or self.engine
        return PlannerInfo(backend="llm", model=f"{e.kind}:{e.model}",
                           prompt_version="+".join(load_prompt(p).version_label for p in prompt_ids))

    @staticmethod
    def run_of(result: Result[Any], engine: Engine) -> dict[str, Any]:
        return {"backend": "llm", "engine": engine.kind, "model": engine.model, "prompt_version": result.prompt_version,
                "attempts": result.attempts, "repair_pass": result.repair_pass, "warnings": result.warnings,
                "notes": result.notes, "fallback": None}

    def fallback_run(self, exc: Exception, prompt_id: str, engine: Engine) -> dict[str, Any]:
        """The run record of a rules plan made because the LLM failed (re-raises without fallback)."""
        if not self.fallback:
            raise exc
        log.warning("LLM planning with %s failed (%s: %s); falling back to rules", prompt_id, type(exc).__name__, exc,
                    exc_info=not isinstance(exc, LLMError))
        return rules_run(fallback={
            "from": engine.kind, "model": engine.model, "prompt_version": load_prompt(prompt_id).version_label,
            "error": f"{type(exc).__name__}: {exc}"[:1000], "problems": list(getattr(exc, "problems", []))[:10],
            "attempts": int(getattr(exc, "attempts", 0))})

    def attempt(self, prompt_id: str, call: Callable[[], Result[T]], engine: Engine | None = None,
                ) -> tuple[Result[T] | None, dict[str, Any]]:
        e = engine or self.engine
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - any failure of the LLM path falls back to rules, recorded
            return None, self.fallback_run(exc, prompt_id, e)
        return result, self.run_of(result, e)

    @staticmethod
    def summarize(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """One run record for per-item work (sizes, scenes): the LLM's if any item used it, items listed."""
        llm = [r for r in runs.values() if r["backend"] == "llm"]
        if not llm:
            base = dict(next(iter(runs.values()))) if runs else rules_run()
        else:
            base = dict(llm[0])
            base["attempts"] = sum(int(r.get("attempts", 0)) for r in llm)
            base["repair_pass"] = any(r.get("repair_pass") for r in llm)
            base["warnings"] = [w for r in llm for w in r.get("warnings", [])]
            base["notes"] = [n for r in llm for n in r.get("notes", [])]
            base["fallback"] = None
        base["items"] = runs
        return base

    # ------------------------------------------------------------ RPG and the designer

    def recaption(self, prompt: str, *, plan_id: str, seed: int, width: int, height: int,
                  negative_prompt: str = "") -> Planned[RegionalPlan]:
        info = self.plan_info("rpg.recaption")
        res, run = self.attempt("rpg.recaption", lambda: llm_rpg.recaption(
            self.engine, prompt, limits=self.limits, plan_id=plan_id, seed=seed, width=width, height=height,
            negative_prompt=negative_prompt, planner=info))
        if res is None:
            return Planned(self.rules.recaption(prompt, plan_id=plan_id, seed=seed, width=width, height=height,
                                                negative_prompt=negative_prompt).value, run)
        return Planned(res.value, run, res.notes)

    def design_layout(self, prompt: str, *, width: int = 1024, height: int = 1024,
                      points: list[dict[str, Any]] | None = None, boxes: list[Box] | None = None,
                      plan_id: str = "design", seed: int = 0) -> Planned[LayoutPlan]:
        info = self.plan_info("creatilayout.design")
        res, run = self.attempt("creatilayout.design", lambda: run_task(self.engine, llm_designer.design_task(
            prompt, width=width, height=height, points=points, boxes=boxes, plan_id=plan_id, seed=seed, planner=info,
            limits=self.limits)))
        if res is None:
            fb = self.rules.design_layout(prompt, width=width, height=height, points=points, boxes=boxes,
                                          plan_id=plan_id, seed=seed)
            return Planned(fb.value, run, fb.notes)
        plan, notes = res.value
        return Planned(plan, run, notes)

    # ------------------------------------------------------------ PAID

    def ad_prompts(self, spec: CampaignSpec, *, job_id: str, product_image: bytes | None = None) -> dict[str, Any]:
        rules_out = paid.ad_prompts(spec, job_id=job_id)
        use_vlm = self.vlm is not None and product_image is not None
        engine = self.vlm if use_vlm and self.vlm is not None else self.engine
        images = [data_url(product_image, max_side=self.vlm_max_image_side)] if use_vlm and product_image else None
        res, run = self.attempt("paid.ad_prompts", lambda: run_task(engine, llm_paid.prompts_task(
            spec, limits=self.limits, images=images)), engine)
        if res is None:
            return {**self.rules.ad_prompts(spec, job_id=job_id), "planner": run}
        v = res.value
        run["product_photo"] = bool(images)
        seed = seed_for(job_id, spec.seed)
        w, h = parse_size(spec.sizes[0])
        regional = self.recaption(v["background"], plan_id=plan_id_for(job_id, S_AD_PROMPTS), seed=seed, width=w,
                                  height=h, negative_prompt=rules_out["negative_prompt"])
        run["regional"] = regional.run
        return {"prompts": {"foreground": v["foreground"], "background": v["background"]},
                "negative_prompt": rules_out["negative_prompt"], "regional": regional.value.model_dump(mode="json"),
                "background_objects": v["background_objects"] or rules_out["background_objects"],
                "category": v["category"], "planner": run,
                "metrics": {"regional": regional_metrics(regional.value)}}

    def ad_layout(self, spec: CampaignSpec, *, job_id: str,
                  prompts_output: AdPromptsOutput | dict[str, Any] | None) -> dict[str, Any]:
        if spec.layout is not None:  # the caller's own layout: no model draws it, the repair fits it to each size
            return self.rules.ad_layout(spec, job_id=job_id,
                                        prompts_output=prompts_output or self.ad_prompts(spec, job_id=job_id))
        prompts, negative, objects_out = paid.captions_of(prompts_output or self.ad_prompts(spec, job_id=job_id))
        seed = seed_for(job_id, spec.seed)
        scene = paid.pick_scene(spec, seed)
        objects = [str(o) for o in objects_out or scene.objects]
        colours = paid.choose_colours(list(spec.brand.palette), scene.tone)
        occlude = paid.allow_occlude_of(spec, self.allow_occlude)
        info_llm = self.plan_info("paid.ad_layout")
        variants, infos, runs = [], {}, {}
        for size in spec.sizes:
            w, h = parse_size(size)
            safe = safe_zone_for(w, h)
            align = "center" if aspect_class(w, h) == "portrait" else "left"

            def assemble(drafts: list[Any], size: str = size, safe: Any = safe,
                         align: str = align) -> tuple[Any, dict[str, Any]]:
                return paid.assemble_variant(spec, size=size, drafts=drafts, colours=colours, align=align,
                                             job_id=job_id, seed=seed, prompts=prompts, negative=negative,
                                             planner=info_llm, safe=safe, allow_occlude=occlude)

            task = llm_paid.layout_task(spec, size=size, background=prompts.background, objects=objects, safe=safe,
                                        allow_occlude=occlude, underlay=colours.underlay is not None,
                                        limits=self.limits, assemble=assemble)
            res, run = self.attempt("paid.ad_layout", lambda task=task: run_task(self.engine, task))  # type: ignore[misc]
            if res is None:
                variant, info = paid.layout_variant(spec, size=size, job_id=job_id, seed=seed, prompts=prompts,
                                                    scene=scene, negative=negative, planner=RULES_PLANNER,
                                                    objects=objects, allow_occlude=occlude)
            else:
                variant, info = res.value  # type: ignore[misc]
                info["arrangement"] = "llm"
                variant.mirror_odd = info["mirror_odd"] = paid.mirror_ok(w, h, safe)
            info["planner"] = run
            variants.append(variant)
            infos[size] = info
            runs[size] = run
        summary = self.summarize(runs)
        plan = paid.ad_plan(spec, job_id=job_id, seed=seed, scene=scene, prompts=prompts, negative=negative,
                            planner=info_llm if summary["backend"] == "llm" else RULES_PLANNER, variants=variants)
        return layout_output(plan.model_dump(mode="json"), infos, summary)

    # ------------------------------------------------------------ KAHANI

    def culture(self, spec: StorySpec, *, job_id: str) -> dict[str, Any]:
        rules_out = kahani.culture_stage(spec, job_id=job_id)
        res, run = self.attempt("kahani.culture", lambda: run_task(self.engine, llm_kahani.culture_task(
            spec, rules_out["culture"], limits=self.limits)))
        if res is None:
            return {**rules_out, "planner": run}
        return {"culture_notes": res.value, "culture": rules_out["culture"], "planner": run}

    def story(self, spec: StorySpec, *, job_id: str, culture_output: CultureOutput | dict[str, Any] | None
              ) -> dict[str, Any]:
        co = as_output(CultureOutput, culture_output or self.culture(spec, job_id=job_id))
        assert co is not None
        notes = [str(n) for n in co.culture_notes]
        res, run = self.attempt("kahani.story", lambda: run_task(self.engine, llm_kahani.story_task(
            spec, notes, limits=self.limits)))
        if res is None:
            return {**self.rules.story(spec, job_id=job_id, culture_output=co), "planner": run}
        return {**res.value, "planner": run, "metrics": llm_kahani.story_metrics(res.value["story"], spec.language)}

    @staticmethod
    def _by_rules(output: StoryOutput) -> bool:
        return (output.planner or {}).get("backend") == "rules"

    def characters(self, spec: StorySpec, *, job_id: str, story_output: StoryOutput | dict[str, Any] | None,
                   culture_output: CultureOutput | dict[str, Any] | None) -> dict[str, Any]:
        story = as_output(StoryOutput, story_output or self.story(spec, job_id=job_id, culture_output=culture_output))
        assert story is not None
        if self._by_rules(story):
            # a rules story names its cast from the premise; the rules characters are exactly that cast
            out = self.rules.characters(spec, job_id=job_id, story_output=story, culture_output=culture_output)
            return {**out, "planner": rules_run(follows="the story was planned by rules")}
        culture = kahani.culture_from(culture_output, spec, job_id)
        seed = seed_for(job_id, spec.seed)
        res, run = self.attempt("kahani.characters", lambda: run_task(self.engine, llm_kahani.characters_task(
            spec, story, culture, seed=seed, limits=self.limits)))
        if res is None:
            return {**self.rules.characters(spec, job_id=job_id, story_output=story, culture_output=culture_output),
                    "planner": run}
        return {"characters": [c.model_dump(mode="json") for c in res.value], "planner": run}

    def scenes(self, spec: StorySpec, *, job_id: str, story_output: StoryOutput | dict[str, Any] | None,
               characters_output: CharactersOutput | dict[str, Any] | None,
               culture_output: CultureOutput | dict[str, Any] | None) -> dict[str, Any]:
        co = as_output(CultureOutput, culture_output or self.culture(spec, job_id=job_id))
        story = as_output(StoryOutput, story_output or self.story(spec, job_id=job_id, culture_output=co))
        chars = as_output(CharactersOutput, characters_output or self.characters(
            spec, job_id=job_id, story_output=story, culture_output=co))
        assert co is not None and story is not None and chars is not None
        if self._by_rules(story):
            out = self.rules.scenes(spec, job_id=job_id, story_output=story, characters_output=chars,
                                    culture_output=co)
            return {**out, "planner": rules_run(follows="the story was planned by rules")}
        characters = chars.characters[:kahani.MAX_CHARACTERS]
        notes = [str(n) for n in co.culture_notes]
        seed = seed_for(job_id, spec.seed)
        info = self.plan_info("kahani.scenes")
        res, run = self.attempt("kahani.scenes", lambda: run_task(self.engine, llm_kahani.scenes_task(
            spec, job_id=job_id, seed=seed, story=story, characters=characters, notes=notes, planner=info,
            limits=self.limits)))
        if res is None:
            out = self.rules.scenes(spec, job_id=job_id, story_output=story, characters_output=chars,
                                    culture_output=co)
            return {**out, "planner": run}
        return {"plan": res.value.model_dump(mode="json"), "planner": run,
                "metrics": {"scenes": scenes_metrics(res.value)}}

    def scene_layouts(self, plan: StoryPlan, *, sheets: dict[str, str], job_id: str,
                      require_sheets: bool = True, pages: dict[int, SceneLayout] | None = None) -> dict[str, Any]:
        rules_layouts = kahani.scene_layouts(plan, sheets=sheets, job_id=job_id, planner=RULES_PLANNER,
                                             require_sheets=require_sheets, pages=pages)
        names = {c.id: c.name for c in plan.characters}
        looks = {c.id: c.description for c in plan.characters}
        info = self.plan_info("creatilayout.scene")
        layouts, runs = [], {}
        for n, (scene, fallback) in enumerate(zip(sorted(plan.scenes, key=lambda s: s.index), rules_layouts,
                                                  strict=True)):
            key = f"s{scene.index}"
            if not scene.cast:
                layouts.append(fallback)
                runs[key] = rules_run(follows="a scene without cast needs no designer")
                continue
            if pages and n in pages:
                layouts.append(fallback)
                runs[key] = rules_run(follows="the story's own layout for this page (spec.layouts)")
                continue
            task = llm_designer.scene_task(
                scene, names=names, looks=looks, sheets={m.character_id: sheets.get(m.character_id) for m in scene.cast},
                width=kahani.SCENE_WIDTH, height=kahani.SCENE_HEIGHT, plan_id=fallback.plan_id,
                seed=derived_seed(plan.seed, "scene", scene.index), negative_prompt=plan.negative_prompt, planner=info,
                limits=self.limits)
            res, run = self.attempt("creatilayout.scene", lambda task=task: run_task(self.engine, task))  # type: ignore[misc]
            if res is None:
                layouts.append(fallback)
            else:
                layout, notes = res.value
                run["notes"] = [*run.get("notes", []), *notes]
                layouts.append(layout)
            runs[key] = run
        return {"layouts": [lp.model_dump(mode="json") for lp in layouts], "planner": self.summarize(runs),
                "metrics": [layout_metrics(lp.boxes) for lp in layouts]}


# ---------------------------------------------------------------- construction from settings


def openai_client(settings: Settings, *, base_url: str | None = None, model: str | None = None, **kwargs: Any) -> ChatClient:
    url = base_url or settings.llm_base_url
    name = model or settings.llm_model
    if not url or not name:
        raise EngineUnavailable("the openai backend needs ATELIER_LLM_BASE_URL and ATELIER_LLM_MODEL")
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return ChatClient(url, model=name, api_key=key, timeout_s=settings.llm_timeout_s,
                      max_retries=settings.llm_max_retries, backoff_s=settings.llm_retry_backoff_s,
                      structured=settings.llm_structured_output, temperature=settings.llm_temperature,
                      max_tokens=settings.llm_max_tokens, **kwargs)


def vlm_engine(settings: Settings, **kwargs: Any) -> OpenAIEngine | None:
    """The VLM (an OpenAI-compatible vision-language model), or None when ``vlm_model`` is unset."""
    if not settings.vlm_model:
        return None
    url = settings.vlm_base_url or settings.llm_base_url
    if not url:
        raise EngineUnavailable("ATELIER_VLM_MODEL is set but neither ATELIER_VLM_BASE_URL nor ATELIER_LLM_BASE_URL")
    return OpenAIEngine(openai_client(settings, base_url=url, model=settings.vlm_model, **kwargs), supports_images=True)


class _Unavailable:
    """An engine that could not be built: every call raises the reason (so each stage falls back, recorded)."""

    supports_images = False

    def __init__(self, kind: str, model: str, error: EngineUnavailable) -> None:
        self.kind, self.model, self.error = kind, model, error

    def generate(self, request: Any) -> Any:
        raise self.error


def llm_backend(name: str, settings: Settings, *, transport: Any = None, limits: Limits | None = None,
                engine: Engine | None = None) -> LLMBackend:
    """The ``openai`` / ``transformers`` / ``vllm`` backend from settings (``transport`` for tests' HTTP)."""
    extra = {"transport": transport} if transport is not None else {}
    vlm: Engine | None = None
    if engine is None:
        try:
            if name == "openai":
                engine = OpenAIEngine(openai_client(settings, **extra),
                                      supports_images=bool(settings.vlm_model and settings.vlm_model == settings.llm_model))
            elif name == "transformers":
                if settings.transformers_model_dir is None:
                    raise EngineUnavailable("the transformers backend needs ATELIER_TRANSFORMERS_MODEL_DIR")
                engine = TransformersEngine(settings.transformers_model_dir, device=settings.transformers_device,
                                            max_new_tokens=settings.transformers_max_new_tokens)
            elif name == "vllm":
                if settings.vllm_model_dir is None:
                    raise EngineUnavailable("the vllm backend needs ATELIER_VLLM_MODEL_DIR")
                VLLMEngine.import_vllm()
                engine = VLLMEngine(settings.vllm_model_dir, gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
                                    max_tokens=settings.llm_max_tokens, temperature=settings.llm_temperature)
            else:
                raise ValueError(f"{name!r} is not an LLM backend")
        except EngineUnavailable as exc:
            if not settings.planner_fallback:
                raise
            log.error("planner backend %s is unavailable (%s); every stage will fall back to rules", name, exc)
            engine = _Unavailable(name, settings.llm_model or "unconfigured", exc)
    try:
        vlm = vlm_engine(settings, **extra)
    except EngineUnavailable as exc:
        log.error("VLM unavailable: %s", exc)
    return LLMBackend(engine, vlm=vlm, fallback=settings.planner_fallback, limits=limits,
                      allow_occlude=settings.planner_allow_occlude, vlm_max_image_side=settings.vlm_max_image_side)
