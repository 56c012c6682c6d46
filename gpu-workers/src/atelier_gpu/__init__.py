"""Atelier GPU workers: the diffusion, identity and watermark stages (``stages/``, one file each), the model
registry, the diffusion recipes (``recipes/``, one file each), batching across tasks, SVDQuant and identity.

Importing this package is cheap: torch and diffusers load only inside the submodules that need them.
"""

from .logs import quiet_known_warnings

__version__ = "0.1.0"

quiet_known_warnings()  # before anything here imports diffusers (and through it torchao)
