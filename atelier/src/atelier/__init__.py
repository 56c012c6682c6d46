"""Atelier's composition root: the ``atelier`` CLI (:mod:`.cli`), worker processes (:mod:`.workers`), the embedded
mode (:mod:`.embedded`) and the demo (:mod:`.demo`). The only package that depends on all the others."""

__version__ = "0.1.0"
