"""Atelier renderer: CPU compositing — ads (PAID stage 4), storybook pages, delivery manifests."""

__version__ = "0.1.0"
