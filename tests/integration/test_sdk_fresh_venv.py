"""The SDK installs into a fresh virtual environment on its own (issue 17): only httpx and pydantic come with it —
no server package, web framework, database layer or torch — and it imports and verifies a webhook there."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVER = {"atelier", "atelier-api", "atelier-control", "atelier-contracts", "atelier-runtime", "atelier-orchestrator",
          "atelier-planner", "atelier-renderer", "atelier-gpu", "atelier-provenance", "atelier-migrations", "fastapi",
          "starlette", "uvicorn", "sqlalchemy", "celery", "torch", "diffusers", "minio", "redis"}


def test_the_sdk_installs_alone_and_verifies_a_webhook(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT / "sdk")],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                            timeout=120, check=True)
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert "atelier-sdk" in names and {"httpx", "pydantic"} <= names
    assert not names & SERVER, names & SERVER
    code = ("import time, atelier_sdk as s\n"
            "secret = 'whsec_' + __import__('base64').b64encode(b'k' * 24).decode()\n"
            "ts = int(time.time()); body = b'{\"type\": \"webhook.test\", \"data\": {}}'\n"
            "sig = s.sign_webhook(secret, 'msg_1', ts, body)\n"
            "h = {'webhook-id': 'msg_1', 'webhook-timestamp': str(ts), 'webhook-signature': sig}\n"
            "assert s.verify_webhook(secret, h, body)['type'] == 'webhook.test'\n"
            "assert s.AtelierClient and s.AsyncAtelierClient\n"
            "import sys; assert not [m for m in sys.modules if m.startswith(('atelier_api', 'fastapi', 'sqlalchemy'))]\n"
            "print('ok')\n")
    run = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
    assert sys.executable != str(py)
