"""The TypeScript client (clients/typescript) is generated from a committed OpenAPI document: that document must be
the API's, and the client's npm tools pinned. (``make ts-check`` type-checks the client itself.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"
EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def test_the_committed_openapi_document_is_the_apis(tmp_path: Path) -> None:
    fresh = tmp_path / "openapi.json"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ATELIER_")}
    subprocess.run([sys.executable, str(CLIENT / "dump_openapi.py"), str(fresh)], check=True, env=env,
                   cwd=tmp_path, capture_output=True, timeout=120)
    committed = (CLIENT / "openapi.json").read_text(encoding="utf-8")
    document = json.loads(committed)
    assert "/v1/jobs" in document["paths"], "clients/typescript/openapi.json lacks the jobs API"
    assert fresh.read_text(encoding="utf-8") == committed, (
        "clients/typescript/openapi.json differs from the API's OpenAPI document: run `make ts-client` "
        "(regenerates it and src/schema.d.ts) and commit both")


def test_the_clients_npm_packages_are_pinned_exactly() -> None:
    package = json.loads((CLIENT / "package.json").read_text())
    lock = json.loads((CLIENT / "package-lock.json").read_text())
    pins = {**package["dependencies"], **package["devDependencies"]}
    assert {"openapi-fetch", "openapi-typescript", "typescript"} <= pins.keys()
    for name, version in pins.items():
        assert EXACT_VERSION.match(version), f"{name} is pinned as {version!r}: use an exact version"
        locked = lock["packages"][f"node_modules/{name}"]["version"]
        assert locked == version, f"package-lock.json has {name} {locked}, package.json {version}: run npm install"
