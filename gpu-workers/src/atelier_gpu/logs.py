"""Import-time warnings of third-party libraries that tell an Atelier user nothing, dropped by message.

torchao (the registry's ``torchao-*`` options) is imported by diffusers whenever it is installed, and says on every
process start: that its CUDA-only kernel libraries do not load (true on a host without CUDA, where no CUDA kernel
is wanted), that Triton is missing (the same), that torch deprecated the way it registers two enums, and — through
diffusers 0.42 — that diffusers cannot import torchao 0.18's tensor classes for checkpoints *serialized with
torchao* (this project quantizes at load and never reads such checkpoints). Each filter drops exactly those
messages on exactly the logger that writes them; everything else those loggers say still shows, and on a CUDA host
a kernel library that fails to load is still reported.
"""

from __future__ import annotations

import logging
import re


def _cuda() -> bool:
    import torch  # heavy (torch): already imported by whoever logs these; loaded on first use

    return bool(torch.cuda.is_available())


# logger name -> (message pattern, a condition for dropping it or None)
KNOWN: dict[str, tuple[tuple[str, object], ...]] = {
    "torchao": ((r"^Failed to load .*_C\w*\.(?:abi3\.)?(?:cpython-\d+-[\w-]+\.)?so", "no-cuda"),),
    "torchao.kernel.intmm": ((r"Detected no triton", "no-cuda"),),
    "torch.utils._pytree": ((r"is an Enum subclass and is now natively supported by torch\.compile", None),),
    "diffusers.quantizers.torchao.torchao_quantizer": ((r"Unable to import `torchao` Tensor objects", None),),
}


class _DropKnown(logging.Filter):
    def __init__(self, rules: tuple[tuple[str, object], ...]) -> None:
        super().__init__()
        self.rules = [(re.compile(pattern), when) for pattern, when in rules]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for pattern, when in self.rules:
            if pattern.search(message) and (when is None or (when == "no-cuda" and not _cuda())):
                return False
        return True


def quiet_known_warnings() -> None:
    """Install the filters (once per logger: calling again adds nothing)."""
    for name, rules in KNOWN.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(rules))
