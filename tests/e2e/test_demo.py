"""The embedded default, exactly as `make demo` runs it: one process, SQLite, local store, in-process worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

BIN = Path(sys.executable).parent


def test_atelier_demo_runs_campaign_and_story(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    proc = subprocess.run([str(BIN / "atelier"), "demo", "--out", str(out), "--home", str(tmp_path / "home")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    kinds = {j["kind"]: j for j in summary["jobs"]}
    assert set(kinds) == {"campaign", "story"}
    assert all(j["status"] == "succeeded" for j in summary["jobs"])
    campaign_assets = [a for a in kinds["campaign"]["artifacts"] if a["kind"] == "asset"]
    assert len(campaign_assets) == 6  # 3 sizes x 2 variants
    assert {(a["width"], a["height"]) for a in campaign_assets} == {(1080, 1080), (1200, 628), (1080, 1920)}
    story_assets = [a for a in kinds["story"]["artifacts"] if a["kind"] == "asset"]
    assert len(story_assets) == 4
    for a in campaign_assets + story_assets:
        with Image.open(a["path"]) as img:
            assert img.size == (a["width"], a["height"])
    for j in summary["jobs"]:
        assert all(s["status"] == "succeeded" and s["seconds"] is not None for s in j["stages"])
    assert "Atelier demo" in proc.stdout
    # the story ran its identity gate, and every delivered image verifies (watermark + trusted C2PA)
    assert any(s["name"].startswith("gate.identity[") for s in kinds["story"]["stages"])
    from atelier_provenance.verify import verify_image
    from atelier_runtime.settings import Settings

    settings = Settings(home=tmp_path / "home")
    for a in campaign_assets + story_assets:
        report = verify_image(Path(a["path"]).read_bytes(), settings=settings)
        assert report["watermark"]["detected"] and report["c2pa"]["state"] == "trusted", (a["path"], report)
    cli = subprocess.run([str(BIN / "atelier"), "verify", story_assets[0]["path"]], capture_output=True, text=True,
                         env={**env, "ATELIER_HOME": str(tmp_path / "home")}, timeout=120)
    assert cli.returncode == 0 and "made by Atelier" in cli.stdout, cli.stdout + cli.stderr
