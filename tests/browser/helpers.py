"""Plain helpers for the browser tests (fixtures are in conftest.py)."""

from __future__ import annotations

import io
import time
from pathlib import Path

from PIL import Image, ImageDraw
from playwright.sync_api import Page, expect


def png_bytes() -> bytes:
    """A bottle on a transparent background, standing in for a product photo."""
    img = Image.new("RGBA", (120, 240), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((30, 70, 90, 230), radius=15, fill=(59, 36, 22, 255))
    d.rectangle((47, 20, 73, 75), fill=(59, 36, 22, 255))
    d.rectangle((45, 10, 75, 25), fill=(200, 16, 46, 255))
    d.rectangle((35, 125, 85, 175), fill=(245, 230, 211, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def sign_in(page: Page, base_url: str, key: str) -> None:
    page.goto(f"{base_url}/dashboard/login")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base_url}/dashboard/jobs")


def shoot(page: Page, folder: Path, name: str, *, full_page: bool = False) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 0
    return path


def wait_until(page: Page, script: str, *, timeout: float = 30.0) -> None:
    """Poll ``script`` (a JS function source) until it returns true. ``page.wait_for_function`` would
    evaluate a string with ``new Function``, which the dashboard's Content-Security-Policy forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout} s: {script}")
        time.sleep(0.1)
