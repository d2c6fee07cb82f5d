"""How output and reference sizes are chosen."""

import pytest

from model.resolution import (
    ASPECT_RATIOS,
    PREFERRED_KONTEXT_RESOLUTIONS,
    aspect_ratio_size,
    scaled,
    output_size,
    preferred_resolution,
    reference_size,
)


def test_preferred_resolutions_are_about_one_megapixel_and_multiples_of_16() -> None:
    for w, h in PREFERRED_KONTEXT_RESOLUTIONS + list(ASPECT_RATIOS.values()):
        assert w % 16 == 0 and h % 16 == 0 and 4000 <= (w // 16) * (h // 16) <= 4200


@pytest.mark.parametrize(
    "size,expected",
    [((1024, 1024), (1024, 1024)), ((512, 512), (1024, 1024)), ((1920, 1080), (1392, 752)),
     ((1080, 1920), (752, 1392)), ((300, 200), (1248, 832)), ((4000, 100), (1568, 672))],
)
def test_preferred_resolution_is_the_closest_aspect_ratio(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert preferred_resolution(*size) == expected


def test_aspect_ratios_use_replicates_table_then_the_closest_preferred() -> None:
    assert aspect_ratio_size("16:9") == (1328, 800)
    assert aspect_ratio_size("9:21") == (672, 1568)
    assert aspect_ratio_size("2:1") == (1456, 720)
    for bad in ("wide", "16x9", "0:1", "-1:2"):
        with pytest.raises(ValueError, match="aspect ratio"):
            aspect_ratio_size(bad)


def test_reference_size_auto_resizes_or_keeps_its_own_size() -> None:
    assert reference_size(300, 200) == (1248, 832)
    assert reference_size(300, 200, auto_resize=False) == (288, 192)
    with pytest.raises(ValueError, match="too small"):
        reference_size(8, 200, auto_resize=False)


def test_output_size_rules() -> None:
    assert output_size(1000, 777) == (992, 768)  # explicit sizes are honoured, only rounded down to 16
    assert output_size(2048, 512, reference=(1024, 1024)) == (2048, 512)
    assert output_size(aspect_ratio="4:3") == (1184, 880)
    assert output_size(aspect_ratio="match_input_image", reference=(880, 1184)) == (880, 1184)
    assert output_size(reference=(1248, 832)) == (1248, 832)
    assert output_size() == (1024, 1024)
    with pytest.raises(ValueError, match="both width and height"):
        output_size(width=512)
    with pytest.raises(ValueError, match="not both"):
        output_size(512, 512, aspect_ratio="1:1")


def test_megapixels_scales_table_sizes_only() -> None:
    assert scaled((1024, 1024), 0.0625) == (256, 256)
    assert scaled((1328, 800), 0.25) == (656, 400)
    assert reference_size(300, 200, megapixels=0.25) == (624, 416)
    assert output_size(aspect_ratio="16:9", megapixels=0.25) == (656, 400)
    assert output_size(megapixels=0.0625) == (256, 256)
    assert output_size(1000, 777, megapixels=0.25) == (992, 768)  # explicit sizes are never rescaled
    with pytest.raises(ValueError, match="positive"):
        scaled((1024, 1024), 0)
