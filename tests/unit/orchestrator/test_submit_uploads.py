"""`atelier submit`: local file paths in a spec become upload ids (product image, logo, control images)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from atelier.delivery_cli import upload_local_files


class Uploads:
    """Records what would be uploaded; answers with ids the way the API does."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def upload(self, path: Path) -> SimpleNamespace:
        self.paths.append(path)
        return SimpleNamespace(id=f"upl_{len(self.paths):08d}")


def test_local_paths_become_upload_ids_and_ids_stay(tmp_path: Path) -> None:
    for name in ("bottle.png", "logo.png", "edges.png"):
        (tmp_path / name).write_bytes(b"\x89PNG")
    spec = {"product": {"name": "p", "image": "bottle.png"}, "brand": {"name": "b", "logo": "logo.png"},
            "control": [{"kind": "canny", "image": "edges.png"}, {"kind": "depth", "image": "upl_existing"}]}
    client = Uploads()
    done = upload_local_files(client, spec, tmp_path)  # type: ignore[arg-type]
    assert [Path(p).name for p in done] == ["bottle.png", "logo.png", "edges.png"]
    assert spec["product"]["image"] == "upl_00000001" and spec["brand"]["logo"] == "upl_00000002"
    assert spec["control"][0]["image"] == "upl_00000003"
    assert spec["control"][1]["image"] == "upl_existing"  # an id is left alone


def test_a_path_that_is_not_a_file_is_left_for_the_api_to_reject(tmp_path: Path) -> None:
    spec = {"product": {"name": "p", "image": "missing.png"}, "control": [{"kind": "canny", "image": "nope/x.png"}]}
    assert upload_local_files(Uploads(), spec, tmp_path) == []  # type: ignore[arg-type]
    assert spec["product"]["image"] == "missing.png" and spec["control"][0]["image"] == "nope/x.png"
