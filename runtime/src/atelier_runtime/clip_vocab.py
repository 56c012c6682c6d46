"""OpenAI CLIP's vocabulary, read offline from the BPE merges file the ``open_clip_torch`` wheel ships.

One reader for the two places that need the real vocabulary: the planners' prompt token counts
(``atelier_planner.tokens``) and the GPU worker's real-vocabulary test tokenizers (``atelier_gpu.tiny``).
``make venv`` installs the wheel ``--no-deps`` for this file alone; ``open_clip`` itself is never imported (it
imports torchvision, which the venv must not have).
"""

from __future__ import annotations

import gzip
from functools import cache
from importlib import metadata
from pathlib import Path

# OpenAI CLIP's BPE merges as the open_clip_torch wheel ships them (1.3 MB, gzip)
CLIP_BPE_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408  # 256 bytes, their 256 word-final variants, 48,894 merges, <|startoftext|>, <|endoftext|>
CLIP_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2


def clip_bpe_file() -> Path | None:
    """Where the installed open_clip_torch keeps OpenAI's BPE merges (found through the distribution's file list,
    never by importing ``open_clip``); None without the package."""
    try:
        files = metadata.files("open_clip_torch") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/") == CLIP_BPE_FILE:
            path = Path(str(f.locate()))
            return path if path.is_file() else None
    return None


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte → printable character table used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


@cache
def clip_vocabulary(path: Path | None = None) -> tuple[dict[str, int], tuple[str, ...]]:
    """OpenAI CLIP's vocabulary (token → id) and merges (``"a b"`` lines), derived from the BPE file (``path``, else
    the installed wheel's) exactly as CLIP's ``simple_tokenizer`` does: the byte characters, the same with
    ``</w>``, one token per merge, then the two specials — 49,408 tokens, ``<|startoftext|>`` = 49406 and
    ``<|endoftext|>`` = 49407. Raises FileNotFoundError without the file."""
    path = path if path is not None else clip_bpe_file()
    if path is None:
        raise FileNotFoundError(f"the real CLIP vocabulary needs {CLIP_BPE_FILE} from open_clip_torch "
                                "(pip install --no-deps open_clip_torch, as `make venv` does)")
    lines = gzip.decompress(Path(path).read_bytes()).decode("utf-8").split("\n")
    merges = tuple(lines[1:1 + CLIP_MERGES])  # line 0 is the file's version header
    chars = list(bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in merges),
              "<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{path}: {len(vocab)} distinct tokens, not CLIP's {CLIP_VOCAB_SIZE}")
    return vocab, merges
