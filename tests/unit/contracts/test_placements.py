"""Ad placements: names and WxH accepted, stored as WxH; what cannot carry legible text is a 422 at submit."""

from __future__ import annotations

import pytest
from atelier_contracts import placements
from atelier_contracts.specs import CampaignSpec
from pydantic import ValidationError

BASE = {"brand": {"name": "B"}, "product": {"name": "P", "description": "d"}, "taglines": ["t"]}
STANDARD = {"300x250", "728x90", "320x50", "160x600", "300x600", "970x250", "320x100",
            "1080x1080", "1080x1350", "1080x1920", "1200x628", "1600x900"}


def test_every_standard_placement_is_accepted_by_name_and_by_size() -> None:
    assert {p.size for p in placements.PLACEMENTS.values()} == STANDARD
    by_name = CampaignSpec.model_validate({**BASE, "sizes": list(placements.PLACEMENTS)})
    assert set(by_name.sizes) == STANDARD
    by_size = CampaignSpec.model_validate({**BASE, "sizes": sorted(STANDARD)})
    assert sorted(by_size.sizes) == sorted(STANDARD)
    assert CampaignSpec.model_validate({**BASE, "sizes": ["Instagram-Story", " leaderboard "]}).sizes == ["1080x1920", "728x90"]


def test_named_placements_carry_their_channel_and_minimum_text() -> None:
    assert placements.placement("1080x1920").channel == "vertical-fullscreen"
    assert placements.placement("160x600").channel == "display"  # tall, but no app UI covers a skyscraper
    assert placements.placement("728x90").channel == "banner"
    assert placements.placement("300x250").max_bytes == 150_000
    custom = placements.placement("640x480")
    assert custom.name is None and custom.channel is None and custom.min_text_px == placements.DISPLAY_MIN_TEXT_PX


@pytest.mark.parametrize(("size", "says"), [
    ("skyscraper-xl", "neither WIDTHxHEIGHT nor a known placement name"),
    ("88x31", "each side must be between"),
    ("120x60", "a tagline needs at least"),
    ("2000x100", "at most 12:1"),
    ("1080", "neither WIDTHxHEIGHT"),
])
def test_sizes_that_cannot_carry_legible_text_are_refused_naming_the_entry(size: str, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        CampaignSpec.model_validate({**BASE, "sizes": ["1080x1080", size]})
    (e,) = err.value.errors()
    assert e["loc"] == ("sizes",) and "sizes[1]" in e["msg"] and says in e["msg"], e["msg"]


def test_a_name_and_its_size_are_one_size() -> None:
    with pytest.raises(ValidationError, match="must not repeat .*300x250"):
        CampaignSpec.model_validate({**BASE, "sizes": ["iab-medium-rectangle", "300x250"]})


def test_an_unknown_name_suggests_close_ones() -> None:
    with pytest.raises(ValueError, match="did you mean .*iab-leaderboard"):
        placements.resolve("leaderboar")
