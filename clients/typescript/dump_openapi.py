"""Write the API's OpenAPI document to clients/typescript/openapi.json (what the TypeScript client is generated from).

    .venv/bin/python clients/typescript/dump_openapi.py [OUTPUT]

The app is built in-process and its lifespan is never entered, so no server, database, broker or store is
needed: ``create_app`` only builds those in the lifespan. ``ATELIER_*`` variables and secret files are ignored,
so the document is the same on every machine. Keys are sorted and indented by two, so diffs stay readable.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "openapi.json"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of an app built with default settings (none read from the environment)."""
    for name in [n for n in os.environ if n.upper().startswith("ATELIER_")]:
        del os.environ[name]
    # imported here, after the environment is cleaned, in case anything reads it at import
    from atelier_api import create_app
    from atelier_runtime.settings import Settings

    with tempfile.TemporaryDirectory(prefix="atelier-openapi-") as home:
        app = create_app(Settings(home=Path(home), secrets_dir=None))
        return app.openapi()


def render(document: dict[str, Any]) -> str:
    """The committed file's text: sorted keys, indent 2, one trailing newline."""
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    output = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT
    output.write_text(render(openapi_document()), encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
