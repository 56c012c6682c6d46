"""Identity conditioning of story scenes: InstantID, else the character sheet as an IP-Adapter reference.

Which path a scene takes depends on the weights configured (nothing is downloaded), and the scene's
output and artifact meta record it (``identity.mode``/``identity.reason``):

``instantid`` (all of ``ATELIER_IDENTITY_FACE_MODEL_DIR``, ``_CONTROLNET_DIR``, ``_IP_ADAPTER_PATH``) — the
InstantID arrangement (Wang et al., 2024):

1. the face analysis model embeds the character sheet's face (an ArcFace ONNX in the face model folder,
   run by ``identity.embedder``; 512-d for antelopev2) and places five keypoints (a YuNet
   ``face_detection_yunet*.onnx`` in the folder when present, else canonical points in the Haar box);
2. the image-projection weights (``ip-adapter.bin``: a Resampler with 16 queries + ``to_k_ip``/``to_v_ip``
   per cross-attention layer) are loaded with diffusers' ``load_ip_adapter``; the Resampler turns the
   embedding into 16 face tokens that the UNet's decoupled cross-attention reads next to the text;
3. IdentityNet (a ControlNet) sees the keypoint image as its condition and the face tokens, not the
   text, as its ``encoder_hidden_states``; its residuals are added to the UNet's.

The loop below is the SDXL denoising loop with those two changes, on the registry's warm pipeline.

``reference`` (``ATELIER_IDENTITY_REFERENCE_ADAPTER_DIR``, an IP-Adapter folder with ``image_encoder/``) —
the character sheet is passed as ``ip_adapter_image`` (the usual IP-Adapter image prompt).

``none`` — neither is configured: the scene is generated from its prompt alone and says so; the identity
gate then measures, and best-of-N regeneration is the only lever.

A gate's regeneration (``StageTask.regeneration``) offsets the layout's seed (``scene_seed``) and writes the
scene under a new name (``s2.r1``), so every attempt stays an artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atelier_shared.errors import StageError
from atelier_shared.settings import Settings
from atelier_shared.stage_runner import StageContext
from atelier_shared.tasks import S_CHARACTER_SHEET
from PIL import Image, ImageDraw

REGENERATION_SEED_STEP = 7919  # a prime: regenerated seeds never collide with other scenes' layout seeds
MODES = ("instantid", "reference", "none")


def scene_seed(layout_seed: int, regeneration: int) -> int:
    """The seed of a scene's n-th regeneration (0: the layout's own seed)."""
    return (layout_seed + REGENERATION_SEED_STEP * regeneration) % 2**32


def scene_name(item: str, regeneration: int) -> str:
    """Artifact name of an attempt: ``s2`` first, then ``s2.r1``, ``s2.r2``..."""
    return item if not regeneration else f"{item}.r{regeneration}"


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
                    "ATELIER_IDENTITY_CONTROLNET_DIR and ATELIER_IDENTITY_IP_ADAPTER_PATH; the reference fallback "
                    "needs ATELIER_IDENTITY_REFERENCE_ADAPTER_DIR; the scene follows its prompt only")


def _sheets(ctx: StageContext, cast: list[str]) -> dict[str, Image.Image]:
    import io

    out = ctx.task.upstream.get(S_CHARACTER_SHEET) or {}
    sheets = {}
    for cid in cast:
        entry = out.get(cid) if isinstance(out, dict) else None
        if isinstance(entry, dict) and entry.get("sheet_key"):
            img = Image.open(io.BytesIO(ctx.get(entry["sheet_key"])))
            img.load()
            sheets[cid] = img.convert("RGB")
    return sheets


def generate_scene(ctx: StageContext, *, generate: Callable[..., tuple[Image.Image, dict[str, Any]]], prompt: str,
                   negative_prompt: str, target: tuple[int, int], seed: int, cast: list[str]
                   ) -> tuple[Image.Image, dict[str, Any]]:
    """Generate one scene on the identity path the settings allow; ``info['identity']`` says which it was."""
    mode, reason = identity_mode(ctx.settings)
    record: dict[str, Any] = {"mode": mode, "reason": reason, "characters": cast,
                              "regeneration": ctx.task.regeneration}
    if mode == "none" or not cast:
        if not cast:
            record.update(mode="none", reason="no characters in this scene")
        image, info = generate(ctx, prompt=prompt, negative_prompt=negative_prompt, target=target, seed=seed)
        return image, {**info, "identity": record}
    from ..tasks import registry  # the worker's warm pipelines (lazy: tasks imports this module)
    from .text_to_image import generation_size

    sheets = _sheets(ctx, cast)
    if not sheets:
        record.update(mode="none", reason="the cast has no character sheets upstream")
        image, info = generate(ctx, prompt=prompt, negative_prompt=negative_prompt, target=target, seed=seed)
        return image, {**info, "identity": record}
    reg = registry(ctx.res)
    model_id = ctx.task.spec.get("model") or ctx.settings.default_model
    spec = reg.spec(model_id)
    if spec.family != "sdxl":
        raise StageError(f"identity conditioning ({mode}) needs an SDXL model; {model_id} is {spec.family}",
                         retryable=False, field="model")
    steps = ctx.settings.gen_steps or spec.steps
    width, height = generation_size(target[0], target[1], min(ctx.settings.gen_max_side,
                                                              spec.max_side or ctx.settings.gen_max_side))
    pipe = reg.load(model_id)
    first = next(iter(sheets.values()))
    started = time.perf_counter()
    try:
        if mode == "reference":
            image = run_reference(pipe, Path(ctx.settings.identity_reference_adapter_dir or "."),
                                  reference=first, prompt=prompt, negative_prompt=negative_prompt, width=width,
                                  height=height, steps=steps, guidance=spec.guidance, seed=seed, on_step=ctx.progress)
        else:
            assets = _instantid_assets(ctx)
            face = assets.face_of(first)
            if face is None:
                raise StageError("InstantID: no face found on the character sheet", retryable=False)
            embedding, kps = face
            image = run_instantid(pipe, assets.controlnet, Path(ctx.settings.identity_ip_adapter_path or "."),
                                  face_embedding=embedding, kps_image=draw_kps((width, height), kps, first.size),
                                  prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                                  steps=steps, guidance=spec.guidance, seed=seed, on_step=ctx.progress)
    finally:
        ctx.gpu_seconds += time.perf_counter() - started
    record["reference_character"] = next(iter(sheets))
    return image, {"width": width, "height": height, "seed": seed, "model": model_id, "steps": steps,
                   "identity": record}


def put_scene(ctx: StageContext, image: Image.Image, *, info: dict[str, Any], prompt: str) -> str:
    """Store one attempt of a scene under its own name (``scene_name``) and return the key."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    rec = ctx.put(name=scene_name(ctx.task.item, ctx.task.regeneration), data=buf.getvalue(), ext="png",
                  content_type="image/png", kind="scene", width=image.width, height=image.height,
                  meta={**info, "prompt": prompt})
    return rec.key


# --- IP-Adapter reference fallback ----------------------------------------------------------------

def run_reference(pipe: Any, folder: Path, *, reference: Image.Image, prompt: str, negative_prompt: str, width: int,
                  height: int, steps: int, guidance: float, seed: int, scale: float = 0.6,
                  on_step: Callable[[int, int], None] | None = None) -> Image.Image:
    """SDXL text-to-image with the character sheet as IP-Adapter image prompt; the adapter is unloaded after."""
    import torch

    weights = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights or not (folder / "image_encoder").is_dir():
        raise StageError(f"{folder} needs IP-Adapter weights (*.safetensors/*.bin) and an image_encoder/ folder",
                         retryable=False)
    pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weights[0], image_encoder_folder="image_encoder",
                         local_files_only=True)
    try:
        pipe.set_ip_adapter_scale(scale)

        def on_step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, steps)
            return {}

        out = pipe(prompt=prompt, negative_prompt=negative_prompt or None, ip_adapter_image=reference, width=width,
                   height=height, num_inference_steps=steps, guidance_scale=float(guidance),
                   generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=on_step_end)
        return out.images[0].convert("RGB")
    finally:
        pipe.unload_ip_adapter()


# --- InstantID ------------------------------------------------------------------------------------

class InstantIDAssets:
    """IdentityNet + the face analysis model, loaded once per worker."""

    def __init__(self, settings: Settings) -> None:
        from diffusers import ControlNetModel

        from ..identity.embedder import Embedder
        from ..identity.faces import FaceDetector

        folder = Path(settings.identity_face_model_dir or ".")
        onnx = sorted(folder.glob("*.onnx"))
        yunet = [p for p in onnx if "yunet" in p.name.lower()]
        recognisers = [p for p in onnx if p not in yunet and "det" not in p.name.lower()]
        if not recognisers:
            raise StageError(f"{folder} has no face recognition ONNX (e.g. antelopev2's glintr100.onnx)",
                             retryable=False)
        self.embedder = Embedder(recognisers[0])
        self.yunet = yunet[0] if yunet else None
        self.detector = FaceDetector(settings.identity_cascade_path)
        self.controlnet = ControlNetModel.from_pretrained(str(settings.identity_controlnet_dir), local_files_only=True)

    def face_of(self, image: Image.Image) -> tuple[Any, list[tuple[float, float]]] | None:
        """(embedding, five keypoints) of the largest face, or None (YuNet's landmarks when it is in the folder)."""
        from ..identity.faces import Face, crop_face

        if self.yunet is not None:
            import cv2
            import numpy as np

            bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
            det = cv2.FaceDetectorYN.create(str(self.yunet), "", (image.width, image.height))
            _, found = det.detect(bgr)
            if found is not None and len(found):
                f = max(found, key=lambda r: r[2] * r[3])
                face = Face(int(f[0]), int(f[1]), int(f[2]), int(f[3]), 1)
                kps = [(float(f[4 + 2 * i]), float(f[5 + 2 * i])) for i in range(5)]
                return self.embedder.embed([crop_face(image, face)])[0], kps
        faces = self.detector.detect(image)
        if not faces:
            return None
        return self.embedder.embed([crop_face(image, faces[0])])[0], faces[0].keypoints()


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


def run_instantid(pipe: Any, controlnet: Any, ip_adapter_path: Path, *, face_embedding: Any, kps_image: Image.Image,
                  prompt: str, negative_prompt: str, width: int, height: int, steps: int, guidance: float, seed: int,
                  controlnet_scale: float = 0.8, ip_scale: float = 0.8,
                  on_step: Callable[[int, int], None] | None = None) -> Image.Image:
    """The SDXL loop with face tokens in the UNet (IP-Adapter attention) and IdentityNet residuals.

    Args:
        pipe: a loaded ``StableDiffusionXLPipeline`` (the registry's warm one; the adapter is unloaded after).
        controlnet: IdentityNet (``ControlNetModel``).
        ip_adapter_path: InstantID's image-projection weights (``ip-adapter.bin``).
        face_embedding: the sheet face's embedding (1-D, the Resampler's input width).
        kps_image: ``draw_kps`` of the face keypoints at ``width`` x ``height``.
    """
    import numpy as np
    import torch

    pipe.load_ip_adapter(str(ip_adapter_path.parent), subfolder="", weight_name=ip_adapter_path.name,
                         image_encoder_folder=None, local_files_only=True)
    try:
        pipe.set_ip_adapter_scale(ip_scale)
        unet, scheduler, vae = pipe.unet, pipe.scheduler, pipe.vae
        device, dtype = unet.device, unet.dtype
        controlnet.to(device=device, dtype=dtype)
        cfg = guidance > 1.0
        prompt_embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=negative_prompt or None)
        face = torch.as_tensor(np.asarray(face_embedding, dtype=np.float32), device=device, dtype=dtype).reshape(1, 1, 1, -1)
        # the Resampler that load_ip_adapter installed turns the embedding into the face tokens
        face_tokens = unet.encoder_hid_proj([face])[0].reshape(1, -1, unet.config.cross_attention_dim)
        add_time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
        cond = torch.from_numpy(np.asarray(kps_image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        cond = cond.to(device=device, dtype=dtype)
        if cfg:
            prompt_embeds = torch.cat([neg_embeds, prompt_embeds])
            pooled = torch.cat([neg_pooled, pooled])
            face = torch.cat([torch.zeros_like(face), face])
            face_tokens = torch.cat([unet.encoder_hid_proj([face[:1]])[0].reshape(1, -1, face_tokens.shape[-1]),
                                     face_tokens])
            add_time_ids = torch.cat([add_time_ids, add_time_ids])
            cond = torch.cat([cond, cond])
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn((1, unet.config.in_channels, height // pipe.vae_scale_factor,
                               width // pipe.vae_scale_factor), generator=generator, dtype=torch.float32)
        latents = latents.to(device=device, dtype=dtype)
        scheduler.set_timesteps(steps, device=device)
        latents = latents * scheduler.init_noise_sigma
        added = {"text_embeds": pooled, "time_ids": add_time_ids}
        with torch.inference_mode():
            for i, t in enumerate(scheduler.timesteps):
                model_in = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
                down, mid = controlnet(model_in, t, encoder_hidden_states=face_tokens, controlnet_cond=cond,
                                       conditioning_scale=controlnet_scale, added_cond_kwargs=added, return_dict=False)
                noise = unet(model_in, t, encoder_hidden_states=prompt_embeds,
                             added_cond_kwargs={**added, "image_embeds": [face]},
                             down_block_additional_residuals=down, mid_block_additional_residual=mid,
                             return_dict=False)[0]
                if cfg:
                    uncond, text = noise.chunk(2)
                    noise = uncond + guidance * (text - uncond)
                latents = scheduler.step(noise, t, latents, return_dict=False)[0]
                if on_step is not None:
                    on_step(i + 1, len(scheduler.timesteps))
            image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")[0].convert("RGB")
    finally:
        pipe.unload_ip_adapter()
