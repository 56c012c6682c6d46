"""Atelier GPU workers: model registry, diffusion recipes and the invisible watermark.

Importing this package is cheap: torch and diffusers load only inside the submodules that need them
(``atelier_gpu.registry``, ``atelier_gpu.recipes``, ``atelier_gpu.tasks``).
"""

__version__ = "0.1.0"
