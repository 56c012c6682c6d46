"""Generated documentation: the README's "where is it" table, from the stage catalogue.

    python -m atelier.docs            # rewrite the table in README.md
    python -m atelier.docs --check    # exit 1 when README.md's table differs from the catalogue

The table sits between the ``<!-- stages:begin -->`` and ``<!-- stages:end -->`` markers; everything else in
the README is written by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from atelier_contracts.catalogue import where_is_it

BEGIN, END = "<!-- stages:begin -->", "<!-- stages:end -->"


def handler_path(module: str, root: Path) -> str:
    """The file of ``module``, relative to the repository ``root`` (the packages are installed editable)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"stage handler module {module} is not importable")
    return Path(spec.origin).resolve().relative_to(root.resolve()).as_posix()


def stages_table(root: Path) -> str:
    return where_is_it(lambda module: handler_path(module, root))


def with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``; ValueError without the markers."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {BEGIN} ... {END} section")
    return readme[:start + len(BEGIN)] + "\n" + table + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atelier.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when they differ")
    args = parser.parse_args(argv)
    root = args.readme.resolve().parent
    text = args.readme.read_text()
    updated = with_table(text, stages_table(root))
    if args.check:
        if updated != text:
            print(f"{args.readme}: the stage table differs from the catalogue; run `python -m atelier.docs`")
            return 1
        return 0
    args.readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
