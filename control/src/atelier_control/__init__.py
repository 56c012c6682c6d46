"""Atelier's control plane, used by the API and the orchestrator only: the database (:mod:`.db`, :mod:`.models`),
jobs (:mod:`.jobs`), tenants and API keys (:mod:`.auth`), job events (:mod:`.events`) and the SSRF guard
(:mod:`.ssrf`). Stage workers never import it."""
