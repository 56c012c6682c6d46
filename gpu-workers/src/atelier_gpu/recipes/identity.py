"""Identity conditioning of story scenes: InstantID, else an IP-Adapter reference, else reference-only attention.

Which path a scene takes depends on the weights configured (nothing is downloaded), and the scene's
output and artifact meta record it (``identity.mode``/``identity.reason``):

``instantid`` (all of ``ATELIER_IDENTITY_FACE_MODEL_DIR``, ``_CONTROLNET_DIR``, ``_IP_ADAPTER_PATH``) — the
InstantID arrangement (Wang et al., 2024):

1. the face analysis model embeds the character sheet's face (an ArcFace ONNX in the face model folder,
   antelopev2's ``glintr100.onnx``, or a TorchScript ``.pt``; run by ``identity.embedder``; its raw 512-d
   output, as InstantID feeds insightface's ``face.embedding``) and places five keypoints (a YuNet
   ``face_detection_yunet*.onnx`` in the folder when present, else the eyes inside the Haar box, else
   canonical points in it);
2. the image-projection weights (``ip-adapter.bin``: a Resampler with 16 queries + ``to_k_ip``/``to_v_ip``
   per cross-attention layer) are loaded with diffusers' ``load_ip_adapter`` (which reads the Resampler as
   an IP-Adapter Plus projection); the Resampler turns the embedding into 16 face tokens that the UNet's
   decoupled cross-attention reads next to the text;
3. IdentityNet (a ControlNet) sees the keypoint image as its condition and the face tokens, not the
   text, as its ``encoder_hidden_states``; its residuals are added to the UNet's.

The loop below is the SDXL denoising loop with those two changes, on the registry's warm pipeline; the
adapter is unloaded after the call and the UNet gets its own attention processors back. Every character of the
cast takes part (``instantid_faces``): with the layout's boxes, each face's keypoints are placed at the top of
its character's box (``place_keypoints``: the sheet's landmarks aligned to the ArcFace template, scaled into
``face_square``), and with two or more characters each face's tokens act only inside its box (IP-Adapter
attention masks) and IdentityNet runs once per character with its residuals kept to that box; the cast's
per-character prompts act in their boxes in the same loop (regional prompting), with the prompt encoded whole
by compel and the preset's scheduler and steps. The sheet face is aligned onto the ArcFace template before it is
embedded (``identity.align``), as insightface's pipeline does.
``atelier_gpu.tiny.init_tiny_instantid`` (``atelier models init-tiny --identity``) writes random weights in
these formats for the tiny SDXL, so the path runs without the real ones.

``reference`` (``ATELIER_IDENTITY_REFERENCE_ADAPTER_DIR``, an IP-Adapter folder with ``image_encoder/``) —
the character sheets are passed as ``ip_adapter_image`` (the usual IP-Adapter image prompt), one image each,
and with the layout's boxes each sheet acts only inside its character's box (IP-Adapter attention masks).

``reference_only`` — no identity weights configured (the default): the weight-free fallback of
``recipes.reference_attn``. The scene is still made by the layout recipe (``generate``), but every
self-attention layer of the UNet also attends over the character sheets' tokens (ControlNet's
``reference_only``), each sheet only inside its character's layout box (matched by the box's
``ref_artifact``, the sheet key), or everywhere when a box is missing. It carries colours, clothes and hair;
it does not carry a face the way InstantID does.

``none`` — no cast, no readable character sheet, or a model the fallback cannot hook (not SDXL): the scene
follows its prompt alone and says why; the identity gate then measures, and best-of-N regeneration is the
only lever.

Every path holds the registry's ``call_lock`` around its pipeline work: the warm pipeline (its adapters and
attention processors, which these paths change for one call) is shared with the worker's other threads.
The record names the path twice: ``identity.mode`` (the names above) and ``identity.method`` /
``identity_method`` (``instantid`` | ``ip_adapter`` | ``reference_only`` | ``none``) for the gate and the dashboard.

A gate's regeneration (``StageTask.regeneration``) offsets the layout's seed (``scene_seed``) and writes the
scene under a new name (``s2.r1``), so every attempt stays an artifact.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from atelier_contracts import items
from atelier_contracts.errors import NotFound, StageError
from atelier_contracts.plans import Box, LayoutPlan
from atelier_contracts.stage_io import SceneInputs
from atelier_runtime.images import png_bytes
from atelier_runtime.settings import Settings
from atelier_runtime.stage_runner import StageContext
from PIL import Image, ImageDraw

from .. import prompt_encoding
from ..attention import RegionalState, SDXLRegionalProcessor, installed, sdxl_cross_attention_names
from ..generation import registry
from ..identity.align import FaceFinder, YuNetDetector, align_face, alignment_matrix, apply
from ..identity.embedder import Embedder
from ..identity.faces import FaceDetector
from .reference_attn import reference_attention
from .regional import box_masks, parse_regions
from .text_to_image import generation_size

REGENERATION_SEED_STEP = 7919  # a prime: regenerated seeds never collide with other scenes' layout seeds
MODES = ("instantid", "reference", "reference_only", "none")
METHODS = {"instantid": "instantid", "reference": "ip_adapter", "reference_only": "reference_only", "none": "none"}
# reference-only attention knobs (ControlNet's "Balanced" mode; every self-attention layer; no AdaIN)
REFERENCE_STYLE_FIDELITY = 0.5
REFERENCE_ATTENTION_WEIGHT = 1.0


def scene_seed(layout_seed: int, regeneration: int) -> int:
    """The seed of a scene's n-th regeneration (0: the layout's own seed)."""
    return (layout_seed + REGENERATION_SEED_STEP * regeneration) % 2**32


def scene_name(item: str, regeneration: int) -> str:
    """Artifact name of an attempt: ``s2`` first, then ``s2.r1``, ``s2.r2``..."""
    return items.attempt_name(item, regeneration)


def identity_mode(settings: Settings) -> tuple[str, str]:
    """(mode, why) from the configured weights; a configured path that does not exist is an error."""
    instantid = {"ATELIER_IDENTITY_FACE_MODEL_DIR": settings.identity_face_model_dir,
                 "ATELIER_IDENTITY_CONTROLNET_DIR": settings.identity_controlnet_dir,
                 "ATELIER_IDENTITY_IP_ADAPTER_PATH": settings.identity_ip_adapter_path}
    for name, path in (*instantid.items(), ("ATELIER_IDENTITY_REFERENCE_ADAPTER_DIR",
                                            settings.identity_reference_adapter_dir)):
        if path is not None and not Path(path).exists():
            raise StageError(f"{name}={path} does not exist", retryable=False, field=name)
    if all(instantid.values()):
        return "instantid", "InstantID: IdentityNet + face tokens from the character sheet's face"
    if settings.identity_reference_adapter_dir is not None:
        missing = ", ".join(k for k, v in instantid.items() if v is None)
        return "reference", f"IP-Adapter with the character sheet as reference image (InstantID needs {missing})"
    return "none", ("no identity weights configured: InstantID needs ATELIER_IDENTITY_FACE_MODEL_DIR, "
                    "ATELIER_IDENTITY_CONTROLNET_DIR and ATELIER_IDENTITY_IP_ADAPTER_PATH; the IP-Adapter fallback "
                    "needs ATELIER_IDENTITY_REFERENCE_ADAPTER_DIR; scenes use the weight-free reference-only "
                    "attention on the character sheets")


def _sheet_keys(ctx: StageContext, cast: list[str]) -> dict[str, str]:
    """Character id → sheet key, for the cast members with a ``gpu.character_sheet`` output upstream."""
    sheets = ctx.inputs(SceneInputs).sheets
    return {cid: sheets[cid].sheet_key for cid in cast if cid in sheets}


def _read_sheet(ctx: StageContext, key: str) -> Image.Image:
    img = Image.open(io.BytesIO(ctx.get(key)))
    img.load()
    return img.convert("RGB")


def _sheets(ctx: StageContext, cast: list[str]) -> dict[str, Image.Image]:
    return {cid: _read_sheet(ctx, key) for cid, key in _sheet_keys(ctx, cast).items()}


def _finish(info: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """``info`` with the identity record; ``identity_method`` sits at the top too (artifact meta, gate, dashboard)."""
    record["method"] = METHODS[record["mode"]]
    return {**info, "identity": record, "identity_method": record["method"]}


def generate_scene(ctx: StageContext, *, generate: Callable[..., tuple[Image.Image, dict[str, Any]]], prompt: str,
                   negative_prompt: str, target: tuple[int, int], seed: int, cast: list[str],
                   layout: LayoutPlan | None = None, regions: Sequence[dict[str, Any]] | None = None,
                   base_ratio: float = 0.5) -> tuple[Image.Image, dict[str, Any]]:
    """Generate one scene on the identity path the settings allow; ``info['identity']`` says which it was.

    ``generate`` is the scene's prompt-only generator (the layout recipe); ``layout`` (the scene's plan) gives
    each character's box (reference-only attention and InstantID's faces act in it); ``regions`` (the cast's
    per-character prompts, ``{box, prompt}``) are regional prompts in InstantID's loop, at ``base_ratio``.
    """
    mode, reason = identity_mode(ctx.settings)
    record: dict[str, Any] = {"mode": mode, "reason": reason, "characters": cast,
                              "regeneration": ctx.task.regeneration}

    def prompt_only(why: str) -> tuple[Image.Image, dict[str, Any]]:
        record.update(mode="none", reason=why)
        image, info = generate(ctx, prompt=prompt, negative_prompt=negative_prompt, target=target, seed=seed)
        return image, _finish(info, record)

    if not cast:
        return prompt_only("no characters in this scene")
    if mode == "none":
        return _reference_only_scene(ctx, generate=generate, prompt_only=prompt_only, record=record, prompt=prompt,
                                     negative_prompt=negative_prompt, target=target, seed=seed, cast=cast,
                                     layout=layout)
    sheets = _sheets(ctx, cast)
    if not sheets:
        return prompt_only("the cast has no character sheets upstream")
    reg = registry(ctx.res)
    model_id = ctx.task.spec.get("model") or ctx.settings.default_model
    spec = reg.spec(model_id)
    if spec.family != "sdxl":
        raise StageError(f"identity conditioning ({mode}) needs an SDXL model; {model_id} is {spec.family}",
                         retryable=False, field="model")
    steps = ctx.settings.gen_steps or spec.steps
    width, height = generation_size(target[0], target[1], min(ctx.settings.gen_max_side,
                                                              spec.max_side or ctx.settings.gen_max_side))
    first = next(iter(sheets.values()))
    assets = _instantid_assets(ctx) if mode == "instantid" else None
    faces: list[FaceCondition] = []
    if assets is not None:
        keys = _sheet_keys(ctx, cast)
        faces = instantid_faces(assets, sheets, reference_regions(layout, {c: keys[c] for c in sheets}),
                                (width, height))
    with reg.call_lock:  # adapters are loaded into the shared warm pipeline for this call only
        pipe = reg.load(model_id)
        started = time.perf_counter()
        try:
            if mode == "reference":
                keys = _sheet_keys(ctx, cast)
                boxes = reference_regions(layout, {c: keys[c] for c in sheets}) if len(sheets) > 1 else None
                refs = list(sheets.values()) if boxes is not None else [first]
                image = run_reference(pipe, Path(ctx.settings.identity_reference_adapter_dir or "."),
                                      references=refs, boxes=boxes, prompt=prompt, negative_prompt=negative_prompt,
                                      width=width, height=height, steps=steps, guidance=spec.guidance, seed=seed,
                                      on_step=ctx.progress)
                record.update(references=list(sheets) if boxes is not None else [next(iter(sheets))],
                              face_region="boxes" if boxes is not None else "global")
            else:
                assert assets is not None
                cast_prompts = list(regions or []) if len(faces) > 1 else []
                image = run_instantid(pipe, assets.controlnet, Path(ctx.settings.identity_ip_adapter_path or "."),
                                      faces=faces, prompt=prompt, negative_prompt=negative_prompt, width=width,
                                      height=height, steps=steps, guidance=spec.guidance, seed=seed,
                                      on_step=ctx.progress, regions=cast_prompts, base_ratio=base_ratio)
                record.update(references=[f.character_id for f in faces],
                              face_region="boxes" if any(f.mask is not None for f in faces) else "global",
                              keypoints={f.character_id: f.placed for f in faces},
                              regional={"regions": len(cast_prompts), "base_ratio": base_ratio} if cast_prompts
                              else None)
        finally:
            ctx.gpu_seconds += time.perf_counter() - started
    record["reference_character"] = faces[0].character_id if faces else next(iter(sheets))
    return image, _finish({"width": width, "height": height, "seed": seed, "model": model_id, "steps": steps},
                          record)


def reference_regions(layout: LayoutPlan | None, sheet_keys: dict[str, str]) -> list[Box] | None:
    """Each referenced character's layout box, in ``sheet_keys`` order, or None unless every one has a box.

    The layout planner marks a character's box with its sheet key (``Box.ref_artifact``); that is the link.
    """
    if layout is None:
        return None
    by_sheet = {b.ref_artifact: b for b in layout.boxes if b.role == "character" and b.ref_artifact}
    boxes = [by_sheet.get(key) for key in sheet_keys.values()]
    return [b for b in boxes if b is not None] if all(b is not None for b in boxes) else None


def _reference_only_scene(ctx: StageContext, *, generate: Callable[..., tuple[Image.Image, dict[str, Any]]],
                          prompt_only: Callable[[str], tuple[Image.Image, dict[str, Any]]], record: dict[str, Any],
                          prompt: str, negative_prompt: str, target: tuple[int, int], seed: int, cast: list[str],
                          layout: LayoutPlan | None) -> tuple[Image.Image, dict[str, Any]]:
    """The weight-free path: ``generate`` runs with reference-only attention on the cast's sheets installed."""
    weights = "no identity weights configured (InstantID needs its face model, IdentityNet and image projection)"
    keys = _sheet_keys(ctx, cast)
    sheets: dict[str, Image.Image] = {}
    missing: list[str] = [cid for cid in cast if cid not in keys]
    for cid, key in keys.items():
        try:
            sheets[cid] = _read_sheet(ctx, key)
        except NotFound:  # the fallback is best effort: a lost sheet costs its reference, not the scene
            missing.append(cid)
    if missing:
        record["missing_sheets"] = missing
    if not sheets:
        return prompt_only(f"{weights}, and no character sheet of the cast could be read "
                           f"({', '.join(missing)}); the scene follows its prompt only")
    reg = registry(ctx.res)
    model_id = ctx.task.spec.get("model") or ctx.settings.default_model
    spec = reg.spec(model_id)
    if spec.family != "sdxl":
        return prompt_only(f"{weights}; the reference-only fallback hooks an SDXL UNet and {model_id} is "
                           f"{spec.family}; the scene follows its prompt only")
    keys = {cid: keys[cid] for cid in sheets}
    regions = reference_regions(layout, keys)
    with reg.call_lock:  # the processors are swapped on the shared warm pipeline for this call only
        pipe = reg.load(model_id)
        cfg = spec.guidance > 1.0 and pipe.unet.config.time_cond_proj_dim is None
        with reference_attention(pipe, list(sheets.values()), cfg=cfg, seed=seed, regions=regions,
                                 style_fidelity=REFERENCE_STYLE_FIDELITY,
                                 attention_weight=REFERENCE_ATTENTION_WEIGHT) as state:
            image, info = generate(ctx, prompt=prompt, negative_prompt=negative_prompt, target=target, seed=seed)
    if state.writes == 0:  # the generator ran on another model or pipeline: say so rather than claim the method
        record.update(mode="none", reason=f"{weights}; the scene's pipeline call never reached the reference hook")
        return image, _finish(info, record)
    where = "each inside its character's layout box" if regions is not None else "everywhere in the scene"
    record.update(mode="reference_only",
                  reason=f"{weights}: reference-only attention on the character sheet(s), {where} "
                         "(approximate consistency: colours, clothes, hair)",
                  reference_character=next(iter(sheets)), references=list(sheets),
                  reference_region="boxes" if regions is not None else "global",
                  style_fidelity=REFERENCE_STYLE_FIDELITY, attention_weight=REFERENCE_ATTENTION_WEIGHT,
                  reference_steps=state.writes)
    return image, _finish(info, record)


def put_scene(ctx: StageContext, image: Image.Image, *, info: dict[str, Any], prompt: str) -> str:
    """Store one attempt of a scene under its own name (``scene_name``) and return the key."""
    rec = ctx.put(name=scene_name(ctx.task.item, ctx.task.regeneration), data=png_bytes(image), ext="png",
                  content_type="image/png", kind="scene", width=image.width, height=image.height,
                  meta={**info, "prompt": prompt})
    return rec.key


# --- IP-Adapter reference fallback ----------------------------------------------------------------

def run_reference(pipe: Any, folder: Path, *, prompt: str, negative_prompt: str, width: int, height: int,
                  steps: int, guidance: float, seed: int, reference: Image.Image | None = None,
                  references: Sequence[Image.Image] = (), boxes: Sequence[Box] | None = None, scale: float = 0.6,
                  on_step: Callable[[int, int], None] | None = None) -> Image.Image:
    """SDXL text-to-image with the character sheets as IP-Adapter image prompts; the adapter is unloaded after.

    ``references`` (or one ``reference``): the cast's sheets, one image each for the one adapter; with ``boxes``
    (one per reference, normalised) each sheet conditions only its character's box (diffusers' IP-Adapter
    attention masks, ``IPAdapterMaskProcessor``), else every sheet acts everywhere. The prompt is encoded whole
    (``prompt_encoding``: compel, weighted, never cut at 77 tokens).
    """
    import torch  # heavy (torch): loaded on first use
    from diffusers.image_processor import IPAdapterMaskProcessor  # heavy (diffusers): loaded on first use

    images = list(references) or ([reference] if reference is not None else [])
    if not images:
        raise ValueError("run_reference needs at least one reference image")
    if boxes is not None and len(boxes) != len(images):
        raise ValueError(f"{len(boxes)} boxes for {len(images)} references")
    weights = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")) \
        if folder.is_dir() else []
    if not weights or not (folder / "image_encoder").is_dir():
        raise StageError(f"{folder} needs IP-Adapter weights (*.safetensors/*.bin) and an image_encoder/ folder",
                         retryable=False, field="ATELIER_IDENTITY_REFERENCE_ADAPTER_DIR")
    call: dict[str, Any] = {}
    if boxes is not None and len(images) > 1:
        masks = []
        for b in boxes:
            m = Image.new("L", (width, height), 0)
            x1, y1, x2, y2 = b.bbox
            m.paste(255, (round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)))
            masks.append(m)
        tensor = IPAdapterMaskProcessor().preprocess(masks, height=height, width=width)
        call["cross_attention_kwargs"] = {"ip_adapter_masks": [tensor.reshape(1, len(masks), *tensor.shape[2:])]}
    with _ip_adapter(pipe, folder, weights[0], "image_encoder"):
        # one scale per image with masks (diffusers' masked path), else one for the adapter's concatenated tokens
        pipe.set_ip_adapter_scale([[scale] * len(images)] if "cross_attention_kwargs" in call else scale)

        def on_step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, steps)
            return {}

        encoded = prompt_encoding.encode(pipe, "sdxl", [prompt], negative_prompt or None)
        assert encoded is not None
        out = pipe(**encoded.kwargs, ip_adapter_image=[images] if len(images) > 1 else images[0], width=width,
                   height=height, num_inference_steps=steps, guidance_scale=float(guidance),
                   generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=on_step_end, **call)
        return out.images[0].convert("RGB")


# --- InstantID ------------------------------------------------------------------------------------

RECOGNISER_SUFFIXES = (".onnx", ".pt", ".ts", ".jit", ".torchscript")  # what identity.embedder.Embedder loads
# insightface's packs (antelopev2, buffalo_l) ship their detector, landmark and attribute models beside the
# recogniser: none of these is a recogniser
_NOT_RECOGNISERS = ("yunet", "det", "scrfd", "genderage", "1k3d68", "2d106", "landmark")
_RECOGNISER_HINTS = ("glintr100", "w600k", "arcface", "recognition", "sface", "r100", "r50", "r34", "r18")


def face_model_files(folder: Path) -> tuple[Path, Path | None]:
    """(the face recogniser, a YuNet detector or None) in a face model folder.

    The recogniser is an ArcFace-style ONNX (antelopev2's ``glintr100.onnx``, buffalo_l's ``w600k_r50.onnx``) or
    a TorchScript module (``identity.tiny``'s ``recognition.pt``); a model named like a known recogniser wins
    over any other file, and the pack's detection/landmark/attribute models are never taken for one.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RECOGNISER_SUFFIXES) \
        if folder.is_dir() else []
    yunet = [p for p in files if p.suffix.lower() == ".onnx" and "yunet" in p.name.lower()]
    candidates = [p for p in files if not any(part in p.name.lower() for part in _NOT_RECOGNISERS)]
    named = [p for p in candidates if any(hint in p.name.lower() for hint in _RECOGNISER_HINTS)]
    if not candidates:
        raise StageError(f"ATELIER_IDENTITY_FACE_MODEL_DIR={folder} has no face recognition model (antelopev2's "
                         "glintr100.onnx, or a TorchScript .pt)", retryable=False,
                         field="ATELIER_IDENTITY_FACE_MODEL_DIR")
    return (named or candidates)[0], (yunet[0] if yunet else None)


class InstantIDAssets:
    """IdentityNet + the face analysis model, loaded once per worker."""

    def __init__(self, settings: Settings) -> None:
        from diffusers import ControlNetModel  # heavy (diffusers): loaded on first use

        recogniser, self.yunet = face_model_files(Path(settings.identity_face_model_dir or "."))
        self.embedder = Embedder(recogniser)
        self.finder = FaceFinder(FaceDetector(settings.identity_cascade_path),
                                 yunet=YuNetDetector(self.yunet) if self.yunet is not None else None)
        self.controlnet = ControlNetModel.from_pretrained(str(settings.identity_controlnet_dir), local_files_only=True)

    def face_of(self, image: Image.Image) -> tuple[Any, list[tuple[float, float]]] | None:
        """(embedding, five keypoints) of the largest face, or None.

        The keypoints are YuNet's landmarks when it is in the folder, else the eyes the eye cascade finds in the
        Haar box, else canonical points in the box (``identity.align.FaceFinder``); the face is aligned onto the
        ArcFace template with them before it is embedded, as insightface does. The embedding is the recogniser's
        raw output, not L2-normalised: InstantID's Resampler was trained on insightface's ``face.embedding``.
        """
        faces = self.finder.detect(image)
        if not faces:
            return None
        marks = self.finder.landmarks(image, faces[0])
        return self.embedder.embed([align_face(image, marks)], normalise=False)[0], list(marks.points)


@dataclass
class FaceCondition:
    """One character's face for the InstantID loop.

    ``embedding``: the recogniser's output for the sheet's face; ``kps_image``: IdentityNet's keypoint image at
    the scene's size; ``mask``: the latent-grid (H/8, W/8) region the face conditions (face tokens and IdentityNet
    residuals), None for the whole frame; ``placed``: where the keypoints came from (``layout``: in the
    character's box; ``sheet``: where the face sat on the sheet).
    """

    character_id: str
    embedding: Any
    kps_image: Image.Image
    mask: Any = None
    placed: str = "sheet"


FACE_WIDTH_SHARE, FACE_HEIGHT_SHARE, FACE_TOP = 0.42, 0.26, 0.08  # a face at the top of a character's box


def face_square(box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float]:
    """(x, y, side) in pixels of where a character's face goes in their (normalised) box: a square at most
    ``FACE_WIDTH_SHARE`` of the box's width and ``FACE_HEIGHT_SHARE`` of its height, centred, near its top."""
    x1, y1, x2, y2 = box[0] * size[0], box[1] * size[1], box[2] * size[0], box[3] * size[1]
    side = min(FACE_WIDTH_SHARE * (x2 - x1), FACE_HEIGHT_SHARE * (y2 - y1))
    return (x1 + x2) / 2 - side / 2, y1 + FACE_TOP * (y2 - y1), side


def place_keypoints(kps: Sequence[tuple[float, float]], box: Sequence[float],
                    size: tuple[int, int]) -> list[tuple[float, float]]:
    """The sheet face's five keypoints moved into a character's box: aligned to the ArcFace template (the
    sheet's proportions kept, its tilt and scale removed) and scaled into ``face_square``."""
    aligned = apply(alignment_matrix(list(kps)), list(kps))  # in a 112 x 112 crop
    x, y, side = face_square(box, size)
    return [(x + px * side / 112.0, y + py * side / 112.0) for px, py in aligned]


def instantid_faces(assets: InstantIDAssets, sheets: dict[str, Image.Image], boxes: list[Box] | None,
                    size: tuple[int, int]) -> list[FaceCondition]:
    """Every cast member's face condition: with the layout's boxes (``boxes``, in ``sheets`` order) each face's
    keypoints go to the top of its character's box and, with two or more characters, its face tokens and
    IdentityNet act only inside that box; without them the first character's face conditions the whole frame,
    its keypoints where they sat on the sheet."""
    out: list[FaceCondition] = []
    ids = list(sheets) if boxes is not None else list(sheets)[:1]
    masks = box_masks(list(boxes), size[0], size[1]) if boxes is not None and len(ids) > 1 else None
    for i, cid in enumerate(ids):
        found = assets.face_of(sheets[cid])
        if found is None:
            raise StageError(f"InstantID: no face found on the character sheet of {cid}", retryable=False)
        embedding, kps = found
        if boxes is not None:
            kps_image = draw_kps(size, place_keypoints(kps, boxes[i].bbox, size), size)
        else:
            kps_image = draw_kps(size, kps, sheets[cid].size)
        out.append(FaceCondition(cid, embedding, kps_image, None if masks is None else masks[i],
                                 "layout" if boxes is not None else "sheet"))
    return out


def _instantid_assets(ctx: StageContext) -> InstantIDAssets:
    key = "atelier_gpu.identity.instantid"
    assets = ctx.res.extras.get(key)
    if assets is None:
        with ctx.res.lock:
            assets = ctx.res.extras.get(key) or InstantIDAssets(ctx.settings)
            ctx.res.extras[key] = assets
    return assets


def draw_kps(size: tuple[int, int], kps: list[tuple[float, float]], source_size: tuple[int, int]) -> Image.Image:
    """InstantID's keypoint image: five coloured points joined to the nose, on black, scaled to ``size``."""
    sx, sy = size[0] / source_size[0], size[1] / source_size[1]
    pts = [(x * sx, y * sy) for x, y in kps]
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    img = Image.new("RGB", size, (0, 0, 0))
    d = ImageDraw.Draw(img)
    r = max(2, round(min(size) / 100))
    for i in (0, 1, 3, 4):
        d.line([pts[i], pts[2]], fill=tuple(c // 2 for c in colors[i]), width=r * 2)
    for (x, y), c in zip(pts, colors, strict=True):
        d.ellipse([x - r * 2, y - r * 2, x + r * 2, y + r * 2], fill=c)
    return img


@contextmanager
def _ip_adapter(pipe: Any, folder: Path, weight_name: str, image_encoder_folder: str | None) -> Iterator[None]:
    """IP-Adapter weights loaded into ``pipe`` for one call (InstantID's face projection or a plain image prompt).

    ``load_ip_adapter`` installs an image projection as ``unet.encoder_hid_proj`` and an IP-Adapter attention
    processor on every cross-attention layer. On the way out ``unload_ip_adapter`` removes them, and the UNet gets
    back its very own processor objects (diffusers' unload puts fresh default instances in their place), its
    previous ``encoder_hid_proj`` and the pipeline's ``image_encoder``/``feature_extractor`` (which unload clears):
    the warm pipeline is left as it was found, also when loading fails halfway.
    """
    unet = pipe.unet
    processors = dict(unet.attn_processors)
    hid_proj, hid_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    components = {name: getattr(pipe, name) for name in ("image_encoder", "feature_extractor")
                  if getattr(pipe, name, None) is not None}
    try:
        pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weight_name,
                             image_encoder_folder=image_encoder_folder, local_files_only=True)
        yield
    finally:
        if unet.encoder_hid_proj is not hid_proj or any(
                unet.attn_processors.get(n) is not p for n, p in processors.items()):
            pipe.unload_ip_adapter()
            unet.set_attn_processor(processors)
            unet.encoder_hid_proj = hid_proj
            unet.config.encoder_hid_dim_type = hid_type
        if components:
            pipe.register_modules(**components)


@contextmanager
def _face_adapter(pipe: Any, ip_adapter_path: Path) -> Iterator[Any]:
    """InstantID's image projection loaded into ``pipe`` for one call (see ``_ip_adapter``); yields its Resampler."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection  # heavy (diffusers): loaded on first use

    with _ip_adapter(pipe, ip_adapter_path.parent, ip_adapter_path.name, None):
        resampler = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        if not isinstance(resampler, IPAdapterPlusImageProjection):
            raise StageError(f"ATELIER_IDENTITY_IP_ADAPTER_PATH={ip_adapter_path} is not InstantID's image projection "
                             f"(a Resampler with `latents`); diffusers read it as {type(resampler).__name__}",
                             retryable=False, field="ATELIER_IDENTITY_IP_ADAPTER_PATH")
        yield resampler


def run_instantid(pipe: Any, controlnet: Any, ip_adapter_path: Path, *, prompt: str, negative_prompt: str,
                  width: int, height: int, steps: int, guidance: float, seed: int,
                  faces: Sequence[FaceCondition] | None = None, face_embedding: Any = None,
                  kps_image: Image.Image | None = None, regions: Sequence[dict[str, Any]] = (),
                  base_ratio: float = 0.5, controlnet_scale: float = 0.8, ip_scale: float = 0.8,
                  on_step: Callable[[int, int], None] | None = None) -> Image.Image:
    """The SDXL loop with face tokens in the UNet (IP-Adapter attention) and IdentityNet residuals.

    Args:
        pipe: a loaded ``StableDiffusionXLPipeline`` (the registry's warm one; the adapter is unloaded after).
        controlnet: IdentityNet (``ControlNetModel``) for ``pipe``'s UNet.
        ip_adapter_path: InstantID's image-projection weights (``ip-adapter.bin``).
        faces: every character's ``FaceCondition`` (embedding, keypoint image at ``width`` x ``height``, mask);
            ``face_embedding`` + ``kps_image`` are one face over the whole frame.
        regions: per-character prompts (``{box, prompt}``), each acting inside its box (``attention``'s
            regional rule, at ``base_ratio``) in the same cross-attention layers as the face tokens.
        on_step: called as ``on_step(step, total)`` after every step; what it raises (a cancel) stops the loop.

    The prompt goes through ``prompt_encoding`` (compel: weighted, never cut at 77 tokens). The face tokens (the
    Resampler on each embedding; on zeros for the unconditional half of CFG, as InstantID does) reach the UNet
    through ``added_cond_kwargs["image_embeds"]`` — one image per character — and the IP attention; with masks,
    each character's tokens act only inside their box (``attention.SDXLRegionalProcessor`` with ``faces``).
    IdentityNet runs once per character, with that character's face tokens and keypoint image; its residuals,
    scaled by ``controlnet_scale`` and kept to the character's box, are summed and added to the UNet's. The
    scheduler is the pipeline's (the preset's), with ``steps`` steps.
    """
    import torch  # heavy (torch): loaded on first use
    import torch.nn.functional as F  # noqa: N812 (torch's convention)

    if faces is None:
        if face_embedding is None or kps_image is None:
            raise ValueError("run_instantid needs faces, or face_embedding and kps_image")
        faces = [FaceCondition("face", face_embedding, kps_image)]
    if not faces:
        raise ValueError("run_instantid needs at least one face")
    unet, scheduler, vae = pipe.unet, pipe.scheduler, pipe.vae
    if controlnet.config.cross_attention_dim != unet.config.cross_attention_dim:
        raise StageError(f"ATELIER_IDENTITY_CONTROLNET_DIR: IdentityNet's cross-attention width "
                         f"{controlnet.config.cross_attention_dim} does not match the UNet's "
                         f"{unet.config.cross_attention_dim} (an IdentityNet for another base model?)",
                         retryable=False, field="ATELIER_IDENTITY_CONTROLNET_DIR")
    embeddings = [np.asarray(f.embedding, dtype=np.float32).reshape(-1) for f in faces]
    with _face_adapter(pipe, ip_adapter_path) as resampler:
        for embedding in embeddings:
            if resampler.proj_in.in_features != embedding.size:
                raise StageError(f"the face embedding has {embedding.size} values; the image projection in "
                                 f"{ip_adapter_path} takes {resampler.proj_in.in_features} (antelopev2's "
                                 "recogniser gives 512)", retryable=False, field="ATELIER_IDENTITY_FACE_MODEL_DIR")
        pipe.set_ip_adapter_scale(ip_scale)
        device, dtype = unet.device, unet.dtype
        if controlnet.device != device or controlnet.dtype != dtype:
            controlnet.to(device=device, dtype=dtype)
        # LCM-style UNets take the guidance as an embedding and run without a negative branch (as the SDXL pipeline)
        cfg = guidance > 1.0 and unet.config.time_cond_proj_dim is None
        boxes = parse_regions(list(regions), "instantid") if regions else []
        with torch.inference_mode():
            encoded = prompt_encoding.encode(pipe, "sdxl", [prompt], negative_prompt or None)
            assert encoded is not None
            prompt_embeds, pooled = encoded.kwargs["prompt_embeds"], encoded.kwargs["pooled_prompt_embeds"]
            neg_embeds = encoded.kwargs.get("negative_prompt_embeds")
            neg_pooled = encoded.kwargs.get("negative_pooled_prompt_embeds")
            if cfg and neg_embeds is None:  # an empty negative prompt: zeros, as SDXL was trained (and the pipeline)
                neg_embeds, neg_pooled = torch.zeros_like(prompt_embeds), torch.zeros_like(pooled)
            prompt_embeds, pooled = prompt_embeds.to(device, dtype), pooled.to(device, dtype)
            # [batch, images, sequence, width]: one image per character, of one token
            face = torch.from_numpy(np.stack(embeddings)).to(device=device, dtype=dtype)[None, :, None, :]
            add_time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
            conds = [torch.from_numpy(np.asarray(f.kps_image.convert("RGB"), dtype=np.float32) / 255.0)
                     .permute(2, 0, 1)[None].to(device=device, dtype=dtype) for f in faces]
            if cfg:
                prompt_embeds = torch.cat([neg_embeds.to(device, dtype), prompt_embeds])
                pooled = torch.cat([neg_pooled.to(device, dtype), pooled])
                face = torch.cat([torch.zeros_like(face), face])
                add_time_ids = torch.cat([add_time_ids, add_time_ids])
                conds = [torch.cat([c, c]) for c in conds]
            # the installed Resampler turns each embedding into the 16 face tokens IdentityNet reads
            tokens = unet.encoder_hid_proj([face])[0]  # [batch, characters, 16, width]
            masked = any(f.mask is not None for f in faces)
            processors: dict[str, Any] = {}
            if masked or boxes:
                state = RegionalState(masks=box_masks(boxes, width, height) if boxes
                                      else torch.zeros(0, height // 8, width // 8), base_ratio=float(base_ratio))
                if boxes:
                    state.contexts = prompt_encoding.encode(pipe, "sdxl", [b.caption for b in boxes], None) \
                        .kwargs["prompt_embeds"]
                    state.cfg = cfg
                lat = (height // 8, width // 8)
                face_masks = torch.stack([f.mask.float() if f.mask is not None else torch.ones(lat) for f in faces])
                faces_state = RegionalState(masks=face_masks) if masked else None
                ip_procs = unet.attn_processors
                processors = {name: SDXLRegionalProcessor(state, ip=ip_procs[name], faces=faces_state)
                              for name in sdxl_cross_attention_names(unet)}
            timestep_cond = None
            if unet.config.time_cond_proj_dim is not None:
                timestep_cond = pipe.get_guidance_scale_embedding(
                    torch.tensor([guidance - 1.0]), embedding_dim=unet.config.time_cond_proj_dim
                ).to(device=device, dtype=dtype)
            generator = torch.Generator("cpu").manual_seed(seed)
            latents = torch.randn((1, unet.config.in_channels, height // pipe.vae_scale_factor,
                                   width // pipe.vae_scale_factor), generator=generator, dtype=torch.float32)
            scheduler.set_timesteps(steps, device=device)
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(0)
            latents = latents.to(device=device, dtype=dtype) * scheduler.init_noise_sigma
            added = {"text_embeds": pooled, "time_ids": add_time_ids}
            total = len(scheduler.timesteps)

            def kept(residual: Any, mask: Any) -> Any:
                if mask is None:
                    return residual
                m = F.adaptive_avg_pool2d(mask.float()[None, None], residual.shape[-2:]) \
                    if tuple(mask.shape) != tuple(residual.shape[-2:]) else mask.float()[None, None]
                return residual * m.to(device=residual.device, dtype=residual.dtype)

            with installed(unet, processors):
                for i, t in enumerate(scheduler.timesteps):
                    model_in = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
                    down: list[Any] | None = None
                    mid: Any = None
                    for k, f in enumerate(faces):  # IdentityNet once per character, kept to their box
                        d_k, m_k = controlnet(model_in, t, encoder_hidden_states=tokens[:, k], controlnet_cond=conds[k],
                                              conditioning_scale=controlnet_scale, added_cond_kwargs=added,
                                              return_dict=False)
                        d_k, m_k = [kept(r, f.mask) for r in d_k], kept(m_k, f.mask)
                        down = d_k if down is None else [a + b for a, b in zip(down, d_k, strict=True)]
                        mid = m_k if mid is None else mid + m_k
                    noise = unet(model_in, t, encoder_hidden_states=prompt_embeds, timestep_cond=timestep_cond,
                                 added_cond_kwargs={**added, "image_embeds": [face]},
                                 down_block_additional_residuals=down, mid_block_additional_residual=mid,
                                 return_dict=False)[0]
                    if cfg:
                        uncond, text = noise.chunk(2)
                        noise = uncond + guidance * (text - uncond)
                    latents = scheduler.step(noise, t, latents, return_dict=False)[0]
                    if on_step is not None:
                        on_step(i + 1, total)
            image = _decode(vae, latents)
        return pipe.image_processor.postprocess(image, output_type="pil")[0].convert("RGB")


def _decode(vae: Any, latents: Any) -> Any:
    """The SDXL pipeline's decode: an fp16 VAE that asks for it runs in fp32; latents mean/std when configured."""
    import torch  # heavy (torch): loaded on first use

    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype if upcast else vae.dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        return vae.decode(latents, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
