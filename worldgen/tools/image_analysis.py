"""Describe an image from its pixels alone.

The Philosopher must talk about what a picture *shows*, not what its prompt asked
for (the two diverge as soon as a real model is involved), and without a vision
model. So this module measures a handful of cheap, deterministic facts — light,
colour names, warmth, contrast, where the bright parts are, a horizon, a sun- or
moon-like disc, busyness — and turns them into one or two plain sentences.
Everything runs on a ≤128 px thumbnail, so it costs a few milliseconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

__all__ = ["ImageFacts", "analyse_image", "describe_image"]

_THUMB = 128

# A small vocabulary of colour names; matched in CIELAB, where distance ≈ perceived difference.
_NAMED: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "dark grey": (64, 64, 64),
    "grey": (128, 128, 128),
    "light grey": (192, 192, 192),
    "white": (255, 255, 255),
    "red": (210, 30, 30),
    "dark red": (120, 12, 16),
    "orange": (245, 140, 30),
    "yellow": (245, 220, 40),
    "olive": (128, 128, 0),
    "brown": (125, 80, 40),
    "tan": (210, 180, 140),
    "green": (50, 140, 50),
    "dark green": (12, 70, 22),
    "teal": (0, 128, 128),
    "cyan": (0, 210, 220),
    "sky blue": (130, 190, 235),
    "steel blue": (70, 130, 190),
    "blue": (30, 70, 220),
    "navy": (12, 20, 90),
    "midnight blue": (25, 28, 70),
    "purple": (120, 50, 160),
    "pink": (240, 140, 180),
    "magenta": (210, 40, 190),
}


class ImageFacts(BaseModel):
    """Measured numbers (fractions in 0..1, positions relative to width/height)."""

    model_config = ConfigDict(frozen=True)

    width: int
    height: int
    orientation: str  # "square" | "landscape" | "portrait"
    brightness: float  # mean luma
    brightness_label: str  # "dark" | "dim" | "mid-toned" | "bright"
    contrast: float  # std of luma
    contrast_label: str  # "low" | "moderate" | "high"
    warmth: float  # mean(R) - mean(B), -1..1
    temperature: str  # "warm" | "cool" | "neutral"
    colours: dict[str, float]  # colour name -> share of pixels, largest first
    bright_fraction: float  # share of pixels clearly brighter than the rest
    bright_region: str | None  # e.g. "top right", "center"
    horizon: float | None  # y of a top/bottom colour split, 0 = top
    above_horizon: str | None
    below_horizon: str | None
    edge_density: float  # share of pixels on a strong luma gradient
    detail: str  # "smooth, low detail" | "moderately detailed" | "busy, high detail"
    round_blob: tuple[float, float, float] | None  # x, y, radius/min-side of a bright disc
    round_blob_region: str | None


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


def _load(image: Image.Image | str | os.PathLike[str]) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        with Image.open(Path(image)) as im:
            return im.convert("RGB")
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a path, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in 0..1 (any leading shape) -> CIELAB (D65)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_NAMES = list(_NAMED)
_NAMED_LAB = _to_lab(np.array(list(_NAMED.values()), dtype=np.float64) / 255)


def _name(rgb01: np.ndarray) -> str:
    """Nearest named colour to one sRGB colour in 0..1."""
    d = ((_NAMED_LAB - _to_lab(np.asarray(rgb01, np.float64))) ** 2).sum(-1)
    return _NAMES[int(np.argmin(d))]


def _region(x: float, y: float) -> str:
    """Relative position -> "top left" … "center" on a 3×3 grid."""
    v = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    h = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    return f"{v} {h}".strip() or "center"


def _where(region: str) -> str:
    """"top right" -> "in the top right", "left" -> "on the left", "top" -> "at the top"."""
    if region in ("left", "right"):
        return f"on the {region}"
    if region in ("top", "bottom"):
        return f"at the {region}"
    return f"in the {region}"


def _dominant(thumb: Image.Image) -> dict[str, float]:
    """Median-cut (k-means refined) to 12 colours, name each, merge shares by name."""
    small = thumb.copy()
    small.thumbnail((64, 64), Image.Resampling.BOX)  # shares don't need more pixels
    q = small.quantize(colors=12, method=Image.Quantize.MEDIANCUT, kmeans=3)
    idx = np.asarray(q).ravel()
    counts = np.bincount(idx, minlength=12)
    pal = np.array(q.getpalette()[: 3 * len(counts)], np.float64).reshape(-1, 3) / 255
    shares: dict[str, float] = {}
    for i in np.flatnonzero(counts):
        name = _name(pal[i])
        shares[name] = shares.get(name, 0.0) + counts[i] / idx.size
    return {k: round(v, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def _horizon(rgb: np.ndarray, lab: np.ndarray) -> tuple[float, str, str] | None:
    """A row where the picture changes colour sharply and stays consistent on both sides."""
    h = lab.shape[0]
    if h < 8:
        return None
    rows = lab.mean(axis=1)
    w = max(2, h // 16)
    c = np.vstack([np.zeros((1, 3)), np.cumsum(rows, 0)])
    ks = np.arange(max(w, h // 10), min(h - w, h - h // 10) + 1)
    if not len(ks):
        return None
    above = (c[ks] - c[ks - w]) / w
    below = (c[ks + w] - c[ks]) / w
    step = np.linalg.norm(above - below, axis=1)
    k = int(ks[int(np.argmax(step))])
    if step.max() < 12:
        return None
    top, bot = lab[:k].reshape(-1, 3), lab[k:].reshape(-1, 3)
    m_top, m_bot = top.mean(0), bot.mean(0)
    if np.linalg.norm(m_top - m_bot) < 15:
        return None
    # most pixels on each side must resemble their own side, not the other
    top_ok = (np.linalg.norm(top - m_top, axis=1) < np.linalg.norm(top - m_bot, axis=1)).mean()
    bot_ok = (np.linalg.norm(bot - m_bot, axis=1) < np.linalg.norm(bot - m_top, axis=1)).mean()
    if min(top_ok, bot_ok) < 0.7:
        return None
    return k / h, _name(rgb[:k].reshape(-1, 3).mean(0)), _name(rgb[k:].reshape(-1, 3).mean(0))


def _box_mean(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)² window, via an integral image."""
    p = np.pad(a.astype(np.float64), r + 1, mode="edge")
    s = p.cumsum(0).cumsum(1)
    n = 2 * r + 1
    return (s[n:, n:] - s[:-n, n:] - s[n:, :-n] + s[:-n, :-n])[: a.shape[0], : a.shape[1]] / n**2


def _round_blob(luma: np.ndarray) -> tuple[float, float, float] | None:
    """The densest very-bright patch, grown to its connected extent, if it is disc-shaped."""
    h, w = luma.shape
    mask = (luma >= max(0.5, float(luma.max()) - 0.12)) & (luma >= luma.mean() + 0.15)
    if mask.sum() < 6:
        return None
    dens = _box_mean(mask, 2) * mask
    seed = np.unravel_index(int(np.argmax(dens)), mask.shape)
    comp = np.zeros_like(mask)
    comp[seed] = True
    for _ in range(max(h, w)):  # morphological reconstruction = flood fill
        grown = comp.copy()
        grown[1:] |= comp[:-1]
        grown[:-1] |= comp[1:]
        grown[:, 1:] |= comp[:, :-1]
        grown[:, :-1] |= comp[:, 1:]
        grown &= mask
        if grown.sum() == comp.sum():
            break
        comp = grown
    area = int(comp.sum())
    if area < 6 or area > 0.15 * h * w:
        return None
    ys, xs = np.nonzero(comp)
    cy, cx = ys.mean(), xs.mean()
    reach = np.sqrt(((ys - cy) ** 2 + (xs - cx) ** 2).max()) + 0.5
    bw, bh = np.ptp(xs) + 1, np.ptp(ys) + 1
    if area / (np.pi * reach**2) < 0.6 or not 0.7 <= bw / bh <= 1.4:
        return None
    return float((cx + 0.5) / w), float((cy + 0.5) / h), float(np.sqrt(area / np.pi) / min(h, w))


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


def analyse_image(image: Image.Image | str | os.PathLike[str]) -> ImageFacts:
    """Measure an image (or image file): see :class:`ImageFacts` for what is measured."""
    im = _load(image)
    width, height = im.size
    thumb = im.copy()
    if max(width, height) > _THUMB:
        thumb.thumbnail((_THUMB, _THUMB), Image.Resampling.BOX)
    rgb = np.asarray(thumb, np.float64) / 255
    luma = rgb @ np.array([0.2126, 0.7152, 0.0722])

    brightness, contrast = float(luma.mean()), float(luma.std())
    warmth = float(rgb[..., 0].mean() - rgb[..., 2].mean())
    ratio = width / height
    orientation = "square" if 0.95 <= ratio <= 1.05 else "landscape" if ratio > 1 else "portrait"

    bright = (luma > max(0.5, brightness + 0.2)) if contrast > 0.02 else np.zeros_like(luma, bool)
    bright_fraction = float(bright.mean())
    bright_region = None
    if 0 < bright_fraction <= 0.5:
        ys, xs = np.nonzero(bright)
        bright_region = _region((xs.mean() + 0.5) / luma.shape[1], (ys.mean() + 0.5) / luma.shape[0])

    gy, gx = np.abs(np.diff(luma, axis=0))[:, :-1], np.abs(np.diff(luma, axis=1))[:-1, :]
    edge_density = float((np.hypot(gx, gy) > 0.08).mean()) if gx.size else 0.0
    detail = "smooth, low detail" if edge_density < 0.04 else "moderately detailed" if edge_density < 0.12 else "busy, high detail"

    hz = _horizon(rgb, _to_lab(rgb))
    blob = _round_blob(luma)
    return ImageFacts(
        width=width,
        height=height,
        orientation=orientation,
        brightness=round(brightness, 4),
        brightness_label="dark" if brightness < 0.2 else "dim" if brightness < 0.4 else "mid-toned" if brightness < 0.6 else "bright",
        contrast=round(contrast, 4),
        contrast_label="low" if contrast < 0.08 else "moderate" if contrast < 0.2 else "high",
        warmth=round(warmth, 4),
        temperature="warm" if warmth > 0.05 else "cool" if warmth < -0.05 else "neutral",
        colours=_dominant(thumb),
        bright_fraction=round(bright_fraction, 4),
        bright_region=bright_region,
        horizon=None if hz is None else round(hz[0], 3),
        above_horizon=None if hz is None else hz[1],
        below_horizon=None if hz is None else hz[2],
        edge_density=round(edge_density, 4),
        detail=detail,
        round_blob=blob,
        round_blob_region=None if blob is None else _region(blob[0], blob[1]),
    )


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _describe(f: ImageFacts) -> str:
    tone = {"warm": "warm-toned", "cool": "cool-toned", "neutral": "neutral in tone"}[f.temperature]
    names = list(f.colours)
    main = [n for n in names if f.colours[n] >= 0.12][:3] or names[:1]
    touches = [n for n in names if n not in main and f.colours[n] >= 0.03][:2]
    first = f"A {f.width}×{f.height} {f.orientation} image, {f.brightness_label} and {tone}, mostly {_and(main)}"
    if touches:
        first += f" with touches of {_and(touches)}"
    parts: list[str] = []
    if f.horizon is not None:
        where = "high up" if f.horizon < 0.4 else "low down" if f.horizon > 0.6 else "about halfway down"
        if f.above_horizon == f.below_horizon:
            parts.append(f"a horizon lies {where}")
        else:
            parts.append(f"a horizon lies {where}, {f.above_horizon} above and {f.below_horizon} below")
    if f.round_blob_region is not None and f.round_blob is not None and f.round_blob[1] < 0.6:
        parts.append(f"a bright round shape sits {_where(f.round_blob_region)}")
    elif f.bright_region is not None:
        parts.append(f"the brightest area is {_where(f.bright_region)}")
    parts.append(f"{f.contrast_label} contrast")
    parts.append(f.detail)
    second = "; ".join(parts)
    return f"{first}. {second[0].upper()}{second[1:]}."


def describe_image(image: Image.Image | str | os.PathLike[str]) -> str:
    """One or two plain English sentences about what the pixels show."""
    return _describe(analyse_image(image))
