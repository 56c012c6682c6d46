"""POST /v1/verify with a hostile C2PA manifest: a bad claimed size is a 422 naming the field, a huge one costs
well under a second of CPU (it used to be a 500 and tens of seconds to gigabytes of memory)."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
from atelier_provenance import manifests as pv
from atelier_provenance import watermark as wm
from atelier_runtime.settings import Settings
from PIL import Image


def signed_png(settings: Settings, width: Any, height: Any) -> bytes:
    """A ~4.4 KB PNG (40x36 noise) with a manifest trusted by the API (its own development CA)."""
    arr = np.random.default_rng(0).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return pv.sign_asset(buf.getvalue(), "image/png", credentials=pv.load_credentials(settings), title="x.png",
                         generation={"job_id": "job_1", "watermark": {"method": wm.METHOD, "payload_hex": "00" * 6,
                                                                      "width": width, "height": height}})


def post(client: Any, tenant: Any, data: bytes) -> Any:
    return client.post("/v1/verify", files={"file": ("x.png", data, "image/png")}, headers=tenant.headers)


@pytest.mark.parametrize("width,height,name", [(-300, -300, "width"), (512, 0, "height"), (512, "big", "height")])
def test_a_non_positive_or_non_integer_claimed_size_is_a_422_naming_the_field(client, tenant, settings, width,
                                                                             height, name):
    r = post(client, tenant, signed_png(settings, width, height))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 422 and body["title"] == "Invalid input"
    assert [e["field"] for e in body["errors"]] == ["file"]
    assert f"watermark.{name}" in body["detail"] and f"watermark.{name}" in body["errors"][0]["message"]


def test_a_20000_square_claim_is_answered_in_well_under_a_second_of_cpu(client, tenant, settings):
    data = signed_png(settings, 20000, 20000)
    assert len(data) < 10_000
    t0 = time.process_time()  # the app runs in this process (TestClient): its threads count here
    r = post(client, tenant, data)
    cpu = time.process_time() - t0
    assert r.status_code == 200, r.text
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"
    body = r.json()
    assert body["c2pa"]["state"] == "trusted" and body["watermark"]["detected"] is False
    claim = body["watermark"]["claimed_size"]
    assert (claim["width"], claim["height"], claim["used"]) == (20000, 20000, False)
    assert "more than 4x" in claim["reason"]
