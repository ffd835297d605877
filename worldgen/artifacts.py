"""Content-addressed artifact files under a world's root.

Block 3 holds ArtifactRefs, never bytes: a checkpoint stays a few kilobytes however many
images a world makes, and the same content is stored once.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worldgen.files import atomic_write
from worldgen.state import ArtifactRef

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["ArtifactStore", "check_name"]

_EXT_BY_MIME = {"image/png": "png", "text/plain": "txt", "application/json": "json"}


def check_name(name: str, what: str = "name") -> str:
    """Reject names that could escape their folder (path separators, ``..``, empty)."""
    if not isinstance(name, str) or not name or name in {".", ".."} or ".." in name:
        raise ValueError(f"invalid {what} {name!r}: must be non-empty and contain no '..'")
    if "/" in name or "\\" in name or os.sep in name or "\x00" in name:
        raise ValueError(f"invalid {what} {name!r}: must not contain a path separator")
    return name


class ArtifactStore:
    """Files named ``<sha256>.<ext>`` in ``<root>/artifacts``; refs use root-relative URIs."""

    def __init__(self, world_root: str | os.PathLike[str]):
        self.world_root = Path(world_root)
        self.folder = self.world_root / "artifacts"

    def put_bytes(
        self, data: bytes, *, kind: str, mime: str, slot: str = "", meta: dict[str, Any] | None = None
    ) -> ArtifactRef:
        sha = hashlib.sha256(data).hexdigest()
        ext = _EXT_BY_MIME.get(mime, "bin")
        name = f"{sha}.{ext}"
        target = self.folder / name
        if not target.exists():
            atomic_write(target, data)
        return ArtifactRef(
            kind=kind, uri=f"artifacts/{name}", sha256=sha, mime=mime, slot=slot, meta=dict(meta or {})
        )

    def put_text(self, text: str, *, slot: str = "", meta: dict[str, Any] | None = None) -> ArtifactRef:
        return self.put_bytes(text.encode("utf-8"), kind="text", mime="text/plain", slot=slot, meta=meta)

    def put_image(self, image: Image, *, slot: str = "", meta: dict[str, Any] | None = None) -> ArtifactRef:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        info = {"width": image.width, "height": image.height, **(meta or {})}
        return self.put_bytes(buf.getvalue(), kind="image", mime="image/png", slot=slot, meta=info)

    def path(self, ref: ArtifactRef | str) -> Path:
        """The file behind a ref (or a bare file name), checked to stay inside the store."""
        uri = ref.uri if isinstance(ref, ArtifactRef) else ref
        name = uri.removeprefix("artifacts/")
        check_name(name, "artifact name")
        return self.folder / name

    def read_bytes(self, ref: ArtifactRef | str) -> bytes:
        return self.path(ref).read_bytes()

    def read_text(self, ref: ArtifactRef) -> str:
        if ref.inline is not None and not ref.uri:
            return ref.inline
        return self.read_bytes(ref).decode("utf-8")

    def open_image(self, ref: ArtifactRef) -> Image:
        from PIL import Image as PILImage

        with PILImage.open(self.path(ref)) as im:
            return im.convert("RGB")

    def materialise(self, ref: ArtifactRef) -> ArtifactRef:
        """Store an inline text given by a user, so every ref in the world points at a file."""
        if ref.inline is None or ref.uri:
            return ref
        return self.put_text(ref.inline, slot=ref.slot, meta=ref.meta)
