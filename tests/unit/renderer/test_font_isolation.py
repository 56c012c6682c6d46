"""Brand fonts are per job and per tenant: an uploaded font never takes over a family name in the process.

The security finding this guards: tenant A uploads a font and names it "NotoSans"; tenant B's next ordinary
campaign with ``brand.font: "NotoSans"`` must still be drawn in the installed Noto Sans, not in A's file.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from atelier_contracts.errors import StageError
from atelier_contracts.keys import font_key
from atelier_renderer import fonts
from atelier_renderer.brand import fetch_brand_font
from atelier_renderer.compose import compose_ad_with_report
from atelier_renderer.stages.render_ad import render_ad
from atelier_runtime.stage_runner import StageContext
from PIL import Image

from .test_tasks import SPEC, ad_plan

MakeCtx = Callable[..., StageContext]
UPLOAD = Path("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf")  # tenant A's "brand font"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _system_noto(bold: bool) -> Path:
    p = fonts.font_path("Hello", bold=bold, family="NotoSans")
    if p is None or not p.name.startswith("NotoSans") or not str(p).startswith("/usr/"):
        pytest.skip("Noto Sans (fonts-noto-core) is not installed")
    return p


@pytest.fixture(autouse=True)
def _needs_fonts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not UPLOAD.is_file():
        pytest.skip("DejaVu Serif (fonts-dejavu-core) is not installed")
    _system_noto(False)
    # the fetched-font cache lives under the temp dir: give each test its own
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()


def _render(make_ctx: MakeCtx, *, tenant: str, job: str, brand: dict[str, Any],
            font_upload: tuple[str, bytes] | None = None) -> dict[str, Any]:
    """Run ``render.ad`` for one tenant's job on the shared local store; the render artifact's meta."""
    spec = {**SPEC, "brand": {**SPEC["brand"], **brand}}
    ctx = make_ctx(stage="render.ad", kind="campaign", spec=spec, item="1080x1080-v0", tenant_id=tenant, job_id=job)
    ctx.store.put(f"tenants/{tenant}/uploads/up-1.png", _png(Image.new("RGBA", (50, 100), (200, 30, 30, 255))),
                  "image/png")
    ctx.store.put(f"tenants/{tenant}/uploads/logo-1.png", _png(Image.new("RGB", (60, 30), (0, 180, 0))), "image/png")
    if font_upload is not None:
        ctx.store.put(font_key(tenant, font_upload[0]), font_upload[1], "font/ttf")
    bg_key = f"tenants/{tenant}/jobs/{job}/gpu.background/1080x1080-v0.png"
    ctx.store.put(bg_key, _png(Image.new("RGB", (64, 64), (240, 240, 240))), "image/png")
    ctx.task.upstream = {"plan.ad_layout": {"plan": ad_plan().model_dump(mode="json")},
                         "gpu.background": {"background_key": bg_key}}
    render_ad.stage_fn(ctx)
    (rec,) = [a for a in ctx.artifacts if a.kind == "render"]
    return dict(rec.meta)


def test_another_tenants_upload_never_replaces_an_installed_family(make_ctx: MakeCtx) -> None:
    data = UPLOAD.read_bytes()
    a_font = f"{hashlib.sha256(data).hexdigest()}.font"
    noto_bold = _system_noto(True).name  # the headline and the CTA are bold

    # tenant A: its own upload, under the family name of an installed font
    meta_a = _render(make_ctx, tenant="tA", job="job-a", brand={"font": "NotoSans", "font_artifact": "art_fontA"},
                     font_upload=("art_fontA", data))
    assert {t["font"] for t in meta_a["texts"]} == {a_font}  # A's ads are drawn in A's file
    assert meta_a["brand_font"] == {"artifact": "art_fontA", "sha256": hashlib.sha256(data).hexdigest()}

    # tenant B, same process, an ordinary campaign asking for the installed Noto Sans
    meta_b = _render(make_ctx, tenant="tB", job="job-b", brand={"font": "NotoSans"})
    fonts_b = {t["font"] for t in meta_b["texts"]}
    assert a_font not in fonts_b
    assert fonts_b == {noto_bold}
    assert "brand_font" not in meta_b

    # the process-wide lookup by name still answers the installed file, for anyone
    assert fonts.font_path("Hello", family="NotoSans") == _system_noto(False)
    assert fonts.font_path("Hello", bold=True, family="notosans").name == noto_bold  # type: ignore[union-attr]


def test_the_upload_only_serves_the_job_that_names_it(make_ctx: MakeCtx) -> None:
    """Even tenant A's own next job without ``font_artifact`` gets the installed family: nothing is remembered."""
    data = UPLOAD.read_bytes()
    a_font = f"{hashlib.sha256(data).hexdigest()}.font"
    _render(make_ctx, tenant="tA", job="job-a1", brand={"font": "NotoSans", "font_artifact": "art_fontA"},
            font_upload=("art_fontA", data))
    meta = _render(make_ctx, tenant="tA", job="job-a2", brand={"font": "NotoSans"})
    assert {t["font"] for t in meta["texts"]} == {_system_noto(True).name} != {a_font}
    # and A's upload again, later: its own file again
    meta = _render(make_ctx, tenant="tA", job="job-a3", brand={"font": "NotoSans", "font_artifact": "art_fontA"})
    assert {t["font"] for t in meta["texts"]} == {a_font}


def test_b_is_drawn_in_noto_even_before_and_between_a_s_renders(make_ctx: MakeCtx) -> None:
    data = UPLOAD.read_bytes()
    a_font = f"{hashlib.sha256(data).hexdigest()}.font"
    seen_b: set[str] = set()
    for i in range(2):
        seen_b |= {t["font"] for t in _render(make_ctx, tenant="tB", job=f"job-b{i}", brand={"font": "NotoSans"})["texts"]}
        meta_a = _render(make_ctx, tenant="tA", job=f"job-a{i}", brand={"font": "NotoSans", "font_artifact": "art_fontA"},
                         font_upload=("art_fontA", data))
        assert {t["font"] for t in meta_a["texts"]} == {a_font}
    assert seen_b == {_system_noto(True).name}


def test_a_font_artifact_of_another_tenant_is_not_found_under_the_job_s_tenant(make_ctx: MakeCtx) -> None:
    """A spec that names A's artifact id in B's job (past the API check) fetches under B's tenant: no font."""
    data = UPLOAD.read_bytes()
    _render(make_ctx, tenant="tA", job="job-a", brand={"font": "NotoSans", "font_artifact": "art_fontA"},
            font_upload=("art_fontA", data))
    with pytest.raises(StageError, match="art_fontA not found") as exc:
        _render(make_ctx, tenant="tB", job="job-b", brand={"font": "NotoSans", "font_artifact": "art_fontA"})
    assert exc.value.retryable is False


def test_fetch_is_keyed_by_content_and_heals_a_tampered_cache(make_ctx: MakeCtx) -> None:
    data = UPLOAD.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    ctx = make_ctx(stage="render.ad", kind="campaign", spec=SPEC, item="1080x1080-v0", tenant_id="tA")
    ctx.store.put(font_key("tA", "art_fontA"), data, "font/ttf")
    # a file planted at the cache path with other bytes (another local user, a torn write) is not trusted
    cache = Path(tempfile.gettempdir()) / "atelier-fonts"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"{sha}.font").write_bytes(Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").read_bytes())
    font = fetch_brand_font(ctx, {"font": "NotoSans", "font_artifact": "art_fontA"})
    assert font is not None and font.artifact_id == "art_fontA" and font.sha256 == sha
    assert font.path == cache / f"{sha}.font" and font.path.read_bytes() == data
    assert fetch_brand_font(ctx, {"font": "NotoSans"}) is None  # no upload named: nothing fetched


def test_font_path_prefers_the_call_s_file_only_when_it_covers_the_text() -> None:
    dejavu_serif = UPLOAD
    assert fonts.font_path("Hello", family="NotoSans", font_file=dejavu_serif) == dejavu_serif
    # a Latin-only file never draws tofu: Devanagari falls back to the script's Noto font
    hindi = fonts.font_path("धीरे से", family="NotoSans", font_file=dejavu_serif)
    assert hindi is not None and hindi.name.startswith("NotoSansDevanagari")
    # without the file, the same call resolves the installed family
    assert fonts.font_path("Hello", family="NotoSans") == _system_noto(False)
    assert not hasattr(fonts, "register_font_file")  # no process-wide family table to poison


def test_concurrent_composes_of_two_tenants_keep_their_own_fonts() -> None:
    """Renders interleaved on threads (one worker process, many tasks): each ad only ever sees its own font."""
    plan = ad_plan()
    variant = plan.variants[1]
    noto = {_system_noto(True).name}

    def one(i: int) -> tuple[str, set[str]]:
        tenant = "A" if i % 2 == 0 else "B"
        _img, report = compose_ad_with_report(
            background=Image.new("RGB", (64, 64), (240, 240, 240)), product=None, variant=variant,
            taglines=plan.taglines, brand={"font": "NotoSans", "palette": ["#1F2937", "#F9FAFB"]},
            font_file=UPLOAD if tenant == "A" else None)
        return tenant, {t.font for t in report.texts}

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(12)))
    assert {f for tenant, got in results if tenant == "A" for f in got} == {UPLOAD.name}
    assert {f for tenant, got in results if tenant == "B" for f in got} == noto
