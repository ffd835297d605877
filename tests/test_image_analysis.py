"""Image analysis: facts and sentences measured from synthetic pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from worldgen.tools import ProceduralRenderer, analyse_image, describe_image


def _split(top: tuple[int, int, int], bottom: tuple[int, int, int], size=(512, 512), at: float = 0.5) -> Image.Image:
    im = Image.new("RGB", size, top)
    ImageDraw.Draw(im).rectangle([0, int(size[1] * at), size[0], size[1]], fill=bottom)
    return im


def _circle_on_black() -> Image.Image:
    im = Image.new("RGB", (512, 512), "black")
    ImageDraw.Draw(im).ellipse([370, 40, 470, 140], fill="white")
    return im


def test_all_black_is_dark() -> None:
    im = Image.new("RGB", (512, 512), "black")
    f = analyse_image(im)
    assert f.brightness == 0 and f.brightness_label == "dark"
    assert f.colours == {"black": 1.0}
    assert f.horizon is None and f.round_blob is None and f.bright_region is None
    text = describe_image(im)
    assert "512×512" in text and "dark" in text and "black" in text


def test_blue_over_green_has_a_horizon() -> None:
    im = _split((0, 0, 255), (0, 128, 0))
    f = analyse_image(im)
    assert f.horizon == pytest.approx(0.5, abs=0.03)
    assert (f.above_horizon, f.below_horizon) == ("blue", "green")
    assert set(f.colours) == {"blue", "green"}
    text = describe_image(im)
    assert "horizon" in text and "blue above and green below" in text


def test_horizon_position_follows_the_split() -> None:
    f = analyse_image(_split((130, 190, 235), (120, 80, 40), at=0.7))
    assert f.horizon == pytest.approx(0.7, abs=0.03)
    assert "low down" in describe_image(_split((130, 190, 235), (120, 80, 40), at=0.7))


def test_no_horizon_for_left_right_split_or_smooth_gradient() -> None:
    lr = Image.new("RGB", (256, 256), (0, 0, 255))
    ImageDraw.Draw(lr).rectangle([128, 0, 256, 256], fill=(255, 0, 0))
    ramp = np.linspace(0, 255, 256, dtype=np.float32)[:, None, None].repeat(256, 1).repeat(3, 2)
    assert analyse_image(lr).horizon is None
    assert analyse_image(Image.fromarray(ramp.astype(np.uint8))).horizon is None


def test_white_circle_top_right_is_a_bright_round_shape() -> None:
    im = _circle_on_black()
    f = analyse_image(im)
    assert f.bright_region == "top right" and f.round_blob_region == "top right"
    x, y, r = f.round_blob
    assert x == pytest.approx(420 / 512, abs=0.02) and y == pytest.approx(90 / 512, abs=0.02)
    assert r == pytest.approx(50 / 512, abs=0.02)
    text = describe_image(im)
    assert "bright round shape" in text and "top right" in text


def test_a_square_is_bright_but_not_round() -> None:
    im = Image.new("RGB", (512, 512), "black")
    ImageDraw.Draw(im).rectangle([40, 400, 240, 430], fill="white")  # a bar, bottom left
    f = analyse_image(im)
    assert f.round_blob is None and f.bright_region == "bottom left"


def test_temperature_contrast_and_detail() -> None:
    warm, cool = analyse_image(Image.new("RGB", (64, 64), (240, 130, 40))), analyse_image(Image.new("RGB", (64, 64), (40, 90, 220)))
    assert (warm.temperature, cool.temperature) == ("warm", "cool")
    assert analyse_image(Image.new("RGB", (64, 64), "white")).brightness_label == "bright"
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    busy, flat = analyse_image(noise), analyse_image(Image.new("RGB", (256, 256), "grey"))
    assert busy.detail.startswith("busy") and flat.detail.startswith("smooth")
    assert busy.edge_density > 0.3 and flat.edge_density == 0
    assert analyse_image(_split((0, 0, 0), (255, 255, 255))).contrast_label == "high"


def test_orientation_and_modes() -> None:
    assert analyse_image(Image.new("RGB", (300, 100))).orientation == "landscape"
    assert analyse_image(Image.new("L", (100, 300))).orientation == "portrait"
    f = analyse_image(Image.new("RGBA", (10, 10), (255, 0, 0, 255)))
    assert f.orientation == "square" and list(f.colours) == ["red"]


def test_accepts_a_path(tmp_path: Path) -> None:
    im = _circle_on_black()
    path = tmp_path / "circle.png"
    im.save(path)
    assert analyse_image(path) == analyse_image(im)
    assert describe_image(str(path)) == describe_image(im)
    with pytest.raises(TypeError):
        analyse_image(42)  # type: ignore[arg-type]


def test_describes_pixels_not_prompts() -> None:
    im = ProceduralRenderer()("a castle at night", seed=1)
    text = describe_image(im)
    assert "castle" not in text and "dark" in text
    assert text.count(".") <= 3 and text[0].isupper()
