"""Atelier's contracts: what services agree on, with pydantic as the only dependency.

Job specs (:mod:`.specs`), plans (:mod:`.plans`), the stage catalogue (:mod:`.catalogue`) and the stage inputs and
outputs (:mod:`.stage_io`), task payloads and queue names (:mod:`.tasks`), errors (:mod:`.errors`), storage keys
(:mod:`.keys`), item ids (:mod:`.items`) and colour contrast (:mod:`.colors`).
"""

__version__ = "0.1.0"
