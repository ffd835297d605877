"""Text-to-image: the procedural default, the diffusers backend (tiny random checkpoint), the resolver, the tool."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from langchain_core.messages import ToolMessage
from PIL import Image

from worldgen.tools import (
    DiffusersTextToImage,
    ProceduralRenderer,
    TextToImage,
    analyse_image,
    resolve_text_to_image,
    text_to_image_tool,
)

render = ProceduralRenderer()


# --------------------------------------------------------------------------- procedural


def test_procedural_is_deterministic() -> None:
    a = render("a lighthouse on the sea at dusk", seed=7)
    b = render("a lighthouse on the sea at dusk", seed=7)
    assert a.tobytes() == b.tobytes()


def test_seed_changes_the_image() -> None:
    assert render("a castle in the mountains", seed=1).tobytes() != render("a castle in the mountains", seed=2).tobytes()


def test_no_seed_means_a_seed_derived_from_the_prompt() -> None:
    assert render("a quiet village").tobytes() == render("a quiet village").tobytes()
    assert render("a quiet village").tobytes() != render("a quiet village by a lake").tobytes()


@pytest.mark.parametrize("size", [(320, 200), (64, 96), (512, 512)])
def test_requested_size_is_honoured(size: tuple[int, int]) -> None:
    im = render("a tower on a hill", width=size[0], height=size[1], seed=3)
    assert im.size == size and im.mode == "RGB"


def test_time_words_change_the_palette() -> None:
    for seed in range(3):
        night = analyse_image(render("a meadow at night", seed=seed))
        noon = analyse_image(render("a meadow at noon", seed=seed))
        dusk = analyse_image(render("a meadow at dusk", seed=seed))
        assert night.brightness < 0.5 * noon.brightness
        assert dusk.warmth > noon.warmth


def test_colour_and_biome_words_change_the_palette() -> None:
    fire = analyse_image(render("a land of fire", seed=1))
    snow = analyse_image(render("a land of snow", seed=1))
    assert fire.warmth > snow.warmth
    assert snow.brightness > fire.brightness


def test_palette_param_overrides_time_words() -> None:
    noon = analyse_image(render("a meadow at noon", seed=4))
    forced = analyse_image(render("a meadow at noon", seed=4, palette="night"))
    assert forced.brightness < 0.5 * noon.brightness


def test_style_flat_differs_from_painted() -> None:
    assert render("hills", seed=1, style="flat").tobytes() != render("hills", seed=1).tobytes()


def test_full_moon_is_seen_by_the_analyser() -> None:
    for seed in range(3):
        facts = analyse_image(render("a full moon over the hills at night", seed=seed))
        assert facts.round_blob is not None and facts.round_blob[1] < 0.5


def test_unknown_params_are_ignored_but_bad_values_rejected() -> None:
    plain = render("a forest", seed=5)
    assert render("a forest", seed=5, num_inference_steps=30).tobytes() == plain.tobytes()
    with pytest.raises(ValueError, match="palette"):
        render("a forest", palette="sepia")
    with pytest.raises(ValueError, match="style"):
        render("a forest", style="cubist")
    with pytest.raises(ValueError, match="width"):
        render("a forest", width=0)


def test_label_marks_the_image_as_procedural() -> None:
    im = render("a bright snowy plain at noon", seed=1)
    assert render.name == "procedural" and im.info["renderer"] == "procedural"
    corner = im.crop((0, im.height - 24, 90, im.height)).convert("L")
    lo, hi = corner.getextrema()
    assert lo < 40 and hi > 200  # dark tag with light text


# --------------------------------------------------------------------------- resolver and tool


def test_resolve_text_to_image() -> None:
    assert isinstance(resolve_text_to_image(None), ProceduralRenderer)
    assert isinstance(resolve_text_to_image("procedural"), ProceduralRenderer)
    d = resolve_text_to_image("diffusers:/models/sd")
    assert isinstance(d, DiffusersTextToImage) and d.name == "diffusers:/models/sd"

    def mine(prompt: str, *, width: int = 512, height: int = 512, seed: int | None = None, **params) -> Image.Image:
        return Image.new("RGB", (width, height))

    assert resolve_text_to_image(mine) is mine
    assert isinstance(render, TextToImage)
    for bad in ("dalle", "diffusers:", 42):
        with pytest.raises(ValueError, match="procedural.*diffusers:"):
            resolve_text_to_image(bad)  # type: ignore[arg-type]


def test_tool_schema_and_results() -> None:
    tool = text_to_image_tool(render)
    assert set(tool.args) == {"prompt", "width", "height", "seed"}
    assert tool.invoke({"prompt": "a tower", "width": 64, "height": 64}) == "rendered a 64x64 image with procedural"
    msg = tool.invoke({"type": "tool_call", "id": "c1", "name": tool.name, "args": {"prompt": "a tower", "width": 96, "height": 64, "seed": 1}})
    assert isinstance(msg, ToolMessage) and isinstance(msg.artifact, Image.Image) and msg.artifact.size == (96, 64)


def test_tool_with_save_returns_the_reference() -> None:
    stored: list[Image.Image] = []

    def save(im: Image.Image) -> str:
        stored.append(im)
        return f"artifact://image/{len(stored)}"

    tool = text_to_image_tool("procedural", save=save)
    assert tool.invoke({"prompt": "a village", "width": 64, "height": 64}) == "artifact://image/1"
    assert stored[0].size == (64, 64)


# --------------------------------------------------------------------------- diffusers (tiny random checkpoint)




def test_diffusers_renders_deterministically_and_loads_once(tiny_sd: Path, pool) -> None:
    r = resolve_text_to_image(f"diffusers:{tiny_sd}")
    assert isinstance(r, DiffusersTextToImage) and r.loads == 0  # lazy
    a = r("a red castle", width=32, height=32, seed=11, num_inference_steps=2)
    b = r("a red castle", width=32, height=32, seed=11, num_inference_steps=2)
    c = r("a red castle", width=32, height=32, seed=12, num_inference_steps=2, negative_prompt="blurry")
    assert isinstance(a, Image.Image) and a.size == (32, 32)
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert r.loads == 1


def test_diffusers_honours_size(tiny_sd: Path) -> None:
    im = DiffusersTextToImage(tiny_sd)("a tower", width=64, height=32, seed=0, num_inference_steps=2, guidance_scale=1.0)
    assert im.size == (64, 32)


def test_diffusers_concurrent_first_use_loads_once(tiny_sd: Path, pool) -> None:
    r = DiffusersTextToImage(tiny_sd)
    out: list[Image.Image] = []
    threads = [threading.Thread(target=lambda: out.append(r("sea", width=32, height=32, seed=1, num_inference_steps=2))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.loads == 1 and len(out) == 3 and len({im.tobytes() for im in out}) == 1


def test_two_renderers_on_one_folder_share_one_pipeline(tiny_sd: Path, pool) -> None:
    a, b = DiffusersTextToImage(tiny_sd), DiffusersTextToImage(tiny_sd)
    assert a.load() is b.load()
    assert a.loads + b.loads == 1 and pool.stats()["loads"] == 1


def test_diffusers_missing_or_invalid_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_text_to_image(f"diffusers:{missing}")("x", width=32, height=32)
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty-folder.*not a diffusers checkpoint"):
        DiffusersTextToImage(empty).load()
