"""Atelier's shared contracts: settings, database models, plans, task payloads, storage, events."""

__version__ = "0.1.0"
