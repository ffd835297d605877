from __future__ import annotations

import pytest
from PIL import Image

from worldgen.artifacts import ArtifactStore
from worldgen.state import ArtifactRef


def test_content_addressed_and_stored_once(tmp_path):
    store = ArtifactStore(tmp_path)
    a = store.put_text("hello", slot="caption")
    b = store.put_text("hello", slot="other")
    assert a.sha256 == b.sha256 and a.uri == f"artifacts/{a.sha256}.txt"
    assert len(list((tmp_path / "artifacts").iterdir())) == 1
    assert store.read_text(a) == "hello"


def test_image_round_trip(tmp_path):
    store = ArtifactStore(tmp_path)
    ref = store.put_image(Image.new("RGB", (16, 8), "red"), slot="scene")
    assert ref.kind == "image" and ref.mime == "image/png" and ref.meta["width"] == 16
    assert store.open_image(ref).getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("name", ["../x.png", "a/b.png", "..", "artifacts/../../etc/passwd", ""])
def test_names_that_escape_are_rejected(tmp_path, name):
    with pytest.raises(ValueError, match="invalid artifact name"):
        ArtifactStore(tmp_path).path(name)


def test_materialise_inline(tmp_path):
    store = ArtifactStore(tmp_path)
    ref = store.materialise(ArtifactRef(kind="text", inline="a poem", slot="text"))
    assert ref.inline is None and store.read_text(ref) == "a poem"
