"""Few-step scheduler presets: the scheduler, step count, guidance and timesteps each distilled model expects.

Name one in ``models.yaml`` (``preset: sdxl-lightning``); keys written next to it (``steps``,
``guidance``, ``scheduler``) win over the preset's. Values follow the model cards as collected in
METHODS.md "Few-step presets":

| preset | scheduler | steps | guidance | notes |
|---|---|---|---|---|
| ``hyper-sd`` | DDIM, trailing spacing | 4 (the LoRA's N) | 0 | Hyper-SDXL N-step LoRA |
| ``hyper-sd-tcd`` | TCD, eta 1.0 | 1 | 0 | Hyper-SDXL 1-step unified LoRA |
| ``hyper-sd-unet`` | LCM, timesteps [800] | 1 | 0 | Hyper-SDXL 1-step UNet |
| ``sdxl-lightning`` | Euler, trailing spacing | 4 | 0 | SDXL-Lightning 2/4/8-step |
| ``dmd2`` | LCM, timesteps [999, 749, 499, 249] | 4 | 0 | DMD2 4-step UNet/LoRA |
| ``lcm`` | LCM | 4 | 1.5 | LCM-LoRA / LCM-SDXL (CFG 1-2) |
| ``tcd`` | TCD, eta 0.3 | 4 | 0 | TCD-LoRA |
| ``flux-schnell`` | the saved FlowMatch Euler | 4 | 0 | FLUX.1-schnell |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    families: tuple[str, ...]
    scheduler: dict[str, Any] | None
    steps: int
    guidance: float
    timesteps: tuple[int, ...] | None = None
    eta: float | None = None  # TCD's gamma / DDIM's eta, passed to the pipeline call
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "hyper-sd": Preset(("sdxl",), {"class": "DDIMScheduler", "timestep_spacing": "trailing"}, 4, 0.0,
                       note="Hyper-SDXL N-step LoRA: DDIM trailing, N steps, CFG 0"),
    "hyper-sd-tcd": Preset(("sdxl",), {"class": "TCDScheduler"}, 1, 0.0, eta=1.0,
                           note="Hyper-SDXL 1-step unified LoRA: TCD with eta 1.0"),
    "hyper-sd-unet": Preset(("sdxl",), {"class": "LCMScheduler"}, 1, 0.0, timesteps=(800,),
                            note="Hyper-SDXL 1-step UNet: LCM scheduler, timestep 800"),
    "sdxl-lightning": Preset(("sdxl",), {"class": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}, 4, 0.0,
                             note="SDXL-Lightning: Euler trailing, CFG 0"),
    "dmd2": Preset(("sdxl",), {"class": "LCMScheduler"}, 4, 0.0, timesteps=(999, 749, 499, 249),
                   note="DMD2: LCM scheduler with timesteps 999/749/499/249"),
    "lcm": Preset(("sdxl",), {"class": "LCMScheduler"}, 4, 1.5, note="LCM-LoRA: LCM 4 steps, CFG 1-2"),
    "tcd": Preset(("sdxl",), {"class": "TCDScheduler"}, 4, 0.0, eta=0.3, note="TCD-LoRA: TCD eta 0.3"),
    "flux-schnell": Preset(("flux",), None, 4, 0.0, note="FLUX.1-schnell: 4 steps, no guidance"),
}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
