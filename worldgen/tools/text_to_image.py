"""Text-to-image renderers: one small protocol, an embedded default, a diffusers backend.

The world's Creator needs *some* picture for every scene, even on a machine with
no model weights, so the default is :class:`ProceduralRenderer`: a deterministic
PIL + numpy painter that reads colour, time-of-day and noun words from the prompt
and paints a recognisable (if naive) landscape, labelled "procedural" so nobody
mistakes it for model output. :class:`DiffusersTextToImage` runs a local diffusers
checkpoint when one is available. Both satisfy :class:`TextToImage`, and
:func:`resolve_text_to_image` turns a config string into one of them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

__all__ = [
    "TextToImage",
    "ProceduralRenderer",
    "DiffusersTextToImage",
    "resolve_text_to_image",
    "text_to_image_tool",
]

_MAX_SIDE = 4096


@runtime_checkable
class TextToImage(Protocol):
    """Anything that turns a prompt into a PIL image.

    ``seed=None`` means "derive a seed from the prompt", so a renderer is a pure
    function of its arguments. Renderers ignore ``params`` they don't understand,
    which lets one call site drive any backend.
    """

    name: str

    def __call__(
        self,
        prompt: str,
        *,
        width: int = 512,
        height: int = 512,
        seed: int | None = None,
        **params: Any,
    ) -> Image.Image: ...


def _check_size(width: int, height: int) -> None:
    for label, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or not 8 <= value <= _MAX_SIDE:
            raise ValueError(f"{label} must be an int in [8, {_MAX_SIDE}], got {value!r}")


def _prompt_seed(prompt: str) -> int:
    """Stable 63-bit seed from a prompt (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") >> 1


# --------------------------------------------------------------------------- #
# Procedural renderer: reading the prompt
# --------------------------------------------------------------------------- #

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class _Sky:
    top: RGB
    horizon: RGB
    light: RGB  # colour of the sun/moon and of lit things
    ambient: float  # how lit the land is, 0..1


_SKIES: dict[str, _Sky] = {
    "day": _Sky((64, 124, 204), (178, 212, 238), (255, 250, 225), 1.0),
    "dawn": _Sky((74, 88, 152), (250, 186, 150), (255, 216, 165), 0.78),
    "dusk": _Sky((40, 36, 94), (246, 126, 62), (255, 170, 90), 0.58),
    "night": _Sky((5, 8, 24), (28, 40, 80), (232, 232, 212), 0.3),
}

_TIME_WORDS: dict[str, str] = {
    **dict.fromkeys(["dawn", "sunrise", "daybreak", "aurora"], "dawn"),
    **dict.fromkeys(["day", "noon", "midday", "daylight", "afternoon", "morning", "sunny"], "day"),
    **dict.fromkeys(["dusk", "sunset", "evening", "twilight", "sundown", "gloaming"], "dusk"),
    **dict.fromkeys(["night", "midnight", "nocturne", "starry", "moonlit", "nighttime"], "night"),
}

_TINT_WORDS: dict[str, RGB] = {
    **dict.fromkeys(["red", "crimson", "scarlet", "blood", "ruby"], (200, 40, 40)),
    **dict.fromkeys(["orange", "amber", "copper"], (240, 130, 40)),
    **dict.fromkeys(["gold", "golden", "yellow", "honey"], (236, 188, 64)),
    **dict.fromkeys(["green", "emerald", "jade"], (60, 170, 90)),
    **dict.fromkeys(["blue", "azure", "sapphire", "cobalt"], (50, 90, 220)),
    **dict.fromkeys(["purple", "violet", "amethyst", "lilac", "mauve"], (130, 70, 180)),
    **dict.fromkeys(["pink", "rose", "rosy"], (240, 140, 180)),
    **dict.fromkeys(["grey", "gray", "silver", "misty", "mist", "fog", "foggy", "ash"], (150, 150, 155)),
}

# ground colours (far, near) per biome; "sea" swaps the land for water
_GROUNDS: dict[str, tuple[RGB, RGB]] = {
    "meadow": ((122, 162, 88), (58, 108, 44)),
    "forest": ((58, 100, 60), (24, 58, 30)),
    "desert": ((222, 192, 140), (190, 150, 96)),
    "snow": ((236, 241, 248), (204, 214, 232)),
    "fire": ((92, 40, 28), (40, 18, 14)),
    "city": ((122, 122, 128), (80, 80, 86)),
}

_BIOME_WORDS: dict[str, str] = {
    **dict.fromkeys(["forest", "wood", "woods", "jungle", "grove", "woodland", "taiga"], "forest"),
    **dict.fromkeys(["desert", "sand", "dune", "sahara", "wasteland"], "desert"),
    **dict.fromkeys(["snow", "snowy", "winter", "ice", "icy", "frozen", "arctic", "frost", "glacier", "blizzard"], "snow"),
    **dict.fromkeys(["fire", "lava", "volcano", "volcanic", "inferno", "burning", "ember", "hell", "flame", "blaze"], "fire"),
    **dict.fromkeys(["city", "street", "urban", "metropolis"], "city"),
}

_WATER_WORDS = {"sea", "ocean", "lake", "water", "river", "harbour", "harbor", "coast", "bay", "shore",
                "beach", "pond", "island", "wave", "seaside", "lagoon", "fjord"}
_MOUNTAIN_WORDS = {"mountain", "peak", "alp", "alps", "summit", "range", "cliff", "volcano", "ridge", "crag"}
_HILL_WORDS = {"hill", "valley", "highland", "moor"}
_TREE_WORDS = {"tree", "oak", "pine", "willow", "birch", "orchard", "grove"}
_CLOUD_WORDS = {"cloud", "cloudy", "storm", "stormy", "overcast", "rain", "rainy", "thunder"}
_FIGURE_WORDS = {"person", "figure", "man", "woman", "traveller", "traveler", "wanderer", "knight", "child",
                 "girl", "boy", "king", "queen", "wizard", "witch", "monk", "hero", "stranger", "pilgrim",
                 "shepherd", "soldier", "warrior", "philosopher", "sage", "hunter", "priest", "explorer", "lover"}
_CROWD_WORDS = {"people", "crowd", "figures", "villagers", "travellers", "travelers", "soldiers", "pilgrims",
                "children", "lovers", "family", "army"}
_HOUSE_WORDS = {"house", "cottage", "hut", "cabin", "farm", "farmhouse", "home", "inn"}
_VILLAGE_WORDS = {"village", "town", "hamlet", "houses", "cottages", "settlement"}
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "a": 1, "an": 1, "lone": 1, "single": 1}


@dataclass
class _Scene:
    """What the prompt asked for, in painter's terms."""

    time: str = "day"
    biome: str = "meadow"
    tints: list[RGB] = field(default_factory=list)
    water: bool = False
    mountains: bool = False
    hills: bool = False
    sun: bool = False
    moon: bool = False
    crescent: bool = False
    stars: int = 0
    clouds: int = 0
    trees: int = 0
    pines: bool = False
    forest_row: bool = False
    castle: bool = False
    temple: bool = False
    skyline: bool = False
    storm: bool = False
    volcano: bool = False
    tower: bool = False
    lighthouse: bool = False
    houses: int = 0
    figures: int = 0
    birds: int = 0
    campfire: bool = False
    snowfall: bool = False
    haze: float = 0.0


def _words(prompt: str) -> tuple[list[str], set[str]]:
    """Tokens in order, plus a set that also holds naive singulars."""
    tokens = re.findall(r"[a-z]+", prompt.lower())
    bag = set(tokens)
    for t in tokens:
        if len(t) > 3 and t.endswith("es"):
            bag.add(t[:-2])
        if len(t) > 3 and t.endswith("s") and not t.endswith("ss"):
            bag.add(t[:-1])
    return tokens, bag


def _count_before(tokens: list[str], hits: set[str], default: int) -> int:
    """'two knights' -> 2: the number word right before the first hit."""
    for i, t in enumerate(tokens):
        if t in hits or (t.endswith("s") and t[:-1] in hits):
            if i and tokens[i - 1] in _NUMBERS:
                return _NUMBERS[tokens[i - 1]]
            return default
    return default


def _read_prompt(prompt: str, rng: np.random.Generator, palette: str | None) -> _Scene:
    tokens, bag = _words(prompt)
    s = _Scene()
    times = [_TIME_WORDS[t] for t in tokens if t in _TIME_WORDS]
    if palette is not None:
        s.time = palette
    elif times:
        s.time = times[0]
    elif bag & {"moon", "star", "stars", "moonlight", "dark", "darkness"}:
        s.time = "night"
    biomes = [_BIOME_WORDS[t] for t in tokens if t in _BIOME_WORDS]
    if biomes:
        s.biome = biomes[0]
    s.tints = [_TINT_WORDS[t] for t in tokens if t in _TINT_WORDS][:3]
    s.storm = bool(bag & {"storm", "stormy", "thunder", "rain", "rainy", "tempest"})
    s.haze = 0.3 if s.storm else 0.35 if bag & {"mist", "misty", "fog", "foggy", "haze", "hazy"} else 0.0
    s.water = bool(bag & _WATER_WORDS)
    s.mountains = bool(bag & _MOUNTAIN_WORDS) or (s.biome == "snow" and rng.random() < 0.6)
    s.hills = bool(bag & _HILL_WORDS)
    night = s.time == "night"
    s.moon = (night and "moonless" not in bag) or bool(bag & {"moon", "moonlight", "moonlit"})
    s.crescent = "crescent" in bag or (s.moon and "full" not in bag and rng.random() < 0.4)
    s.sun = not s.moon and s.time != "night" and not bag & {"overcast", "storm", "stormy"}
    s.sun = s.sun or ("sun" in bag and not night)
    s.stars = (int(rng.integers(60, 110)) if night else 0) + (60 if bag & {"star", "starry"} else 0)
    s.clouds = int(rng.integers(2, 5)) if bag & _CLOUD_WORDS else int(rng.integers(0, 3)) * (s.time == "day")
    s.forest_row = s.biome == "forest"
    s.pines = s.forest_row or s.biome == "snow" or "pine" in bag
    s.trees = (int(rng.integers(4, 7)) if s.forest_row else 0) + (
        _count_before(tokens, _TREE_WORDS, int(rng.integers(2, 4))) if bag & _TREE_WORDS else 0
    )
    s.volcano = bool(bag & {"volcano", "volcanic", "eruption", "erupting"})
    s.temple = bool(bag & {"temple", "shrine", "church", "cathedral", "monastery", "ruin", "ruins", "parthenon"})
    s.skyline = s.biome == "city" or bool(bag & {"skyline", "skyscraper", "metropolis"})
    s.castle = bool(bag & {"castle", "fortress", "citadel", "palace", "keep", "fort"})
    s.tower = bool(bag & {"tower", "spire", "turret", "minaret", "obelisk"})
    s.lighthouse = "lighthouse" in bag
    s.houses = int(rng.integers(3, 6)) if bag & _VILLAGE_WORDS else (1 if bag & _HOUSE_WORDS else 0)
    if bag & _CROWD_WORDS:
        s.figures = _count_before(tokens, _CROWD_WORDS, int(rng.integers(3, 6)))
    elif bag & _FIGURE_WORDS:
        s.figures = _count_before(tokens, _FIGURE_WORDS, 1)
    s.birds = int(rng.integers(3, 7)) if bag & {"bird", "crow", "raven", "gull", "seagull", "flock"} else 0
    s.campfire = bool(bag & {"campfire", "bonfire", "fire", "flame", "blaze"})
    s.snowfall = bool(bag & {"snowing", "snowfall", "blizzard", "snowflake"}) or (s.biome == "snow" and rng.random() < 0.5)
    return s


# --------------------------------------------------------------------------- #
# Procedural renderer: painting
# --------------------------------------------------------------------------- #


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> RGB:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def _rgb(c: Sequence[float]) -> tuple[int, int, int]:
    return (int(max(0, min(255, c[0]))), int(max(0, min(255, c[1]))), int(max(0, min(255, c[2]))))


def _ridge(rng: np.random.Generator, n: int, roughness: float, octaves: int = 7) -> np.ndarray:
    """A 1-D fractal profile in [0, 1] (midpoint displacement), length n."""
    pts = np.array([rng.random(), rng.random()])
    amp = 0.5
    for _ in range(octaves):
        mid = (pts[:-1] + pts[1:]) / 2 + rng.uniform(-amp, amp, len(pts) - 1)
        out = np.empty(len(pts) * 2 - 1)
        out[0::2], out[1::2] = pts, mid
        pts, amp = out, amp * roughness
    prof = np.interp(np.linspace(0, len(pts) - 1, n), np.arange(len(pts)), pts)
    lo, hi = prof.min(), prof.max()
    return (prof - lo) / (hi - lo + 1e-9)


class _Painter:
    """Paints one scene on a supersampled float canvas, then on PIL, then back."""

    def __init__(self, scene: _Scene, rng: np.random.Generator, w: int, h: int, style: str) -> None:
        self.s, self.rng, self.w, self.h, self.style = scene, rng, w, h, style
        self.u = min(w, h) / 512  # 1 unit = one pixel of a 512px image
        sky = _SKIES[scene.time]
        top, hor, light = sky.top, sky.horizon, sky.light
        if scene.biome == "fire":
            top, hor = _mix(top, (80, 18, 16), 0.5), _mix(hor, (255, 92, 30), 0.6)
        if scene.biome == "snow":
            top, hor = _mix(top, (200, 215, 235), 0.15), _mix(hor, (225, 232, 245), 0.25)
        for tint in scene.tints:
            k = 0.3 if scene.time != "night" else 0.15
            top, hor, light = _mix(top, tint, k * 0.7), _mix(hor, tint, k), _mix(light, tint, 0.15)
        if scene.storm:
            top, hor, light = _mix(top, (70, 74, 86), 0.55), _mix(hor, (120, 124, 132), 0.5), _mix(light, (160, 160, 170), 0.5)
        elif scene.haze:
            top, hor = _mix(top, (170, 170, 178), scene.haze), _mix(hor, (200, 200, 205), scene.haze)
        self.top, self.hor, self.light = top, hor, light
        self.ambient = sky.ambient * (0.7 if scene.storm else 1.0)
        self.horizon = h * (rng.uniform(0.5, 0.56) if scene.water else rng.uniform(0.58, 0.66))
        self.ys = np.arange(h, dtype=np.float32)[:, None]
        self.xs = np.arange(w, dtype=np.float32)[None, :]
        self.ground = np.full(w, self.horizon, dtype=np.float32)  # land surface y per column
        self.shore: np.ndarray | None = None  # foreground land in water scenes
        self.taken: list[tuple[float, float]] = []
        self.lamps: list[tuple[float, float, float, RGB]] = []  # x, y, radius, colour
        self.beam: tuple[float, float, int] | None = None  # lighthouse beam: x, y, direction

    # -- shading helpers -------------------------------------------------- #
    def lit(self, c: Sequence[float], k: float = 1.0) -> RGB:
        """Colour of a land object under this sky's light."""
        a = self.ambient**k
        base = _mix(c, self.hor, 0.12 if self.s.time in ("dawn", "dusk") else 0.05)
        out = (base[0] * a, base[1] * a, base[2] * a)
        return _mix(out, self.top, 0.25) if self.s.time == "night" else out

    def far(self, c: Sequence[float], depth: float) -> RGB:
        """Atmospheric perspective: distant things fade towards the horizon colour."""
        return _mix(c, self.hor, min(0.85, depth + self.s.haze))

    def ground_at(self, x: float) -> float:
        xi = int(min(self.w - 1, max(0, x)))
        return float(self.shore[xi] if self.shore is not None else self.ground[xi])

    def free_x(self, width: float, lo: float = 0.08, hi: float = 0.92) -> float:
        """A centre x (pixels) whose span doesn't overlap earlier placements."""
        for _ in range(30):
            x = self.rng.uniform(lo, hi) * self.w
            if all(x + width / 2 < a or x - width / 2 > b for a, b in self.taken):
                break
        self.taken.append((x - width / 2, x + width / 2))
        return x

    # -- numpy stage ------------------------------------------------------ #
    def sky(self) -> np.ndarray:
        t = np.clip(self.ys / self.horizon, 0, 1) ** 1.4
        top, hor = np.array(self.top, np.float32), np.array(self.hor, np.float32)
        img = top + (hor - top) * t[..., None]
        return np.broadcast_to(img, (self.h, self.w, 3)).copy()

    def stars(self, img: np.ndarray) -> None:
        n = self.s.stars
        xs = self.rng.uniform(0, self.w, n).astype(int)
        ys = (self.rng.uniform(0, 1, n) ** 1.5 * self.horizon * 0.85).astype(int)
        bright = self.rng.uniform(0.4, 1.0, n)
        size = self.rng.choice([1, 1, 1, 2], n) * max(1, round(self.u))
        for x, y, b, r in zip(xs, ys, bright, size):
            patch = img[y : y + r, x : x + r]
            patch += (255 - patch) * b

    def glow(self, img: np.ndarray, x: float, y: float, r: float, colour: Sequence[float], k: float) -> None:
        """Additive soft light around (x, y); cheap because it's computed on a window."""
        R = int(r * 4)
        y0, y1, x0, x1 = max(0, int(y) - R), min(self.h, int(y) + R), max(0, int(x) - R), min(self.w, int(x) + R)
        if y0 >= y1 or x0 >= x1:
            return
        d2 = (self.ys[y0:y1] - y) ** 2 + (self.xs[:, x0:x1] - x) ** 2
        a = (k * np.exp(-d2 / (2 * r * r)))[..., None]
        win = img[y0:y1, x0:x1]
        win += (np.array(colour, np.float32) - win).clip(0) * a

    def disc(self, img: np.ndarray, x: float, y: float, r: float, colour: Sequence[float],
             cut: tuple[float, float] | None = None) -> None:
        """A filled anti-aliased circle, optionally minus a second circle (crescent)."""
        R = int(r) + 2
        y0, y1, x0, x1 = max(0, int(y) - R), min(self.h, int(y) + R), max(0, int(x) - R), min(self.w, int(x) + R)
        if y0 >= y1 or x0 >= x1:
            return
        yy, xx = self.ys[y0:y1], self.xs[:, x0:x1]
        a = np.clip(r - np.sqrt((yy - y) ** 2 + (xx - x) ** 2) + 0.5, 0, 1)
        if cut is not None:
            a = a * np.clip(np.sqrt((yy - cut[1]) ** 2 + (xx - cut[0]) ** 2) - r + 0.5, 0, 1)
        win = img[y0:y1, x0:x1]
        win += (np.array(colour, np.float32) - win) * a[..., None]

    def sun_moon(self, img: np.ndarray) -> None:
        s, rng, u = self.s, self.rng, self.u
        x = rng.uniform(0.2, 0.8) * self.w
        if s.moon:
            y, r = rng.uniform(0.1, 0.28) * self.h, rng.uniform(16, 24) * u
            self.glow(img, x, y, r * 1.6, self.light, 0.35)
            cut = (x - r * 0.55, y - r * 0.25) if s.crescent else None
            self.disc(img, x, y, r, (236, 236, 218), cut)
        elif s.sun:
            low = s.time in ("dawn", "dusk")
            y = self.horizon - (rng.uniform(0.0, 0.12) * self.h if low else rng.uniform(0.3, 0.48) * self.h)
            r = (rng.uniform(26, 36) if low else rng.uniform(20, 28)) * u
            colour = _mix(self.light, (255, 120, 40), 0.35) if low else (255, 252, 230)
            self.glow(img, x, y, r * (3.0 if low else 2.0), self.light, 0.65 if low else 0.5)
            self.disc(img, x, y, r, colour)
        else:
            return

    def clouds(self, img: np.ndarray) -> None:
        if not self.s.clouds:
            return
        mask = Image.new("L", (self.w, self.h), 0)
        d = ImageDraw.Draw(mask)
        for _ in range(self.s.clouds):
            cx, cy = self.rng.uniform(0, 1) * self.w, self.rng.uniform(0.08, 0.42) * self.horizon
            cw = self.rng.uniform(50, 110) * self.u
            for _ in range(6):
                ex, ey = cx + self.rng.uniform(-0.6, 0.6) * cw, cy + self.rng.uniform(-0.15, 0.1) * cw
                ew, eh = self.rng.uniform(0.25, 0.45) * cw, self.rng.uniform(0.12, 0.22) * cw
                d.ellipse([ex - ew, ey - eh, ex + ew, ey + eh], fill=255)
        a = np.asarray(mask, np.float32)[..., None] / 255 * 0.85
        colour = {"day": (250, 250, 252), "dawn": (250, 200, 190), "dusk": (235, 140, 110), "night": (48, 54, 78)}
        c = np.array(_mix(colour[self.s.time], (96, 98, 110), 0.6 if self.s.storm else 0), np.float32)
        shade = np.clip((self.ys - self.ys.mean()) / self.h, -0.5, 0.5)[..., None] * 30
        img += (c - shade - img) * a

    def mountains(self, img: np.ndarray) -> None:
        s, rng, hz = self.s, self.rng, self.horizon
        rock = {"snow": (120, 130, 150), "fire": (60, 30, 28), "desert": (170, 120, 80)}.get(s.biome, (96, 104, 120))
        layers = 3 if s.mountains else 2
        bottom = min(self.h, int(hz + 0.04 * self.h) + 2)  # the land covers everything below
        for i in range(layers):
            depth = (layers - 1 - i) / max(1, layers - 1)  # 1 = farthest
            if s.mountains:
                height = self.h * rng.uniform(0.22, 0.34) * (1 - 0.3 * i)
                prof = _ridge(rng, self.w, 0.55)
            else:  # rolling hills
                height = self.h * rng.uniform(0.06, 0.11) * (1 - 0.25 * i)
                prof = _ridge(rng, self.w, 0.35, octaves=4)
            ridge = (hz - height * (0.25 + 0.75 * prof)).astype(np.float32)[None, :]
            top = max(0, int(ridge.min()))
            ys, win = self.ys[top:bottom], img[top:bottom]
            mask = ys >= ridge
            base = self.far(self.lit(rock if s.mountains else _GROUNDS[s.biome][0]), 0.55 * depth + 0.1)
            fade = np.clip((ys - ridge) * np.float32(1 / (height + 1)), 0, 1)[..., None]
            c0 = np.array(base, np.float32)
            c1 = np.array(self.far(base, 0.35), np.float32)  # mist at the feet
            col = c0 + (c1 - c0) * fade
            if s.mountains and (s.biome == "snow" or rng.random() < 0.5):
                snowline = hz - height * (0.62 + 0.1 * _ridge(rng, self.w, 0.7)[None, :])
                snow = np.array(self.far(self.lit((242, 246, 252)), 0.4 * depth), np.float32)
                np.copyto(col, snow, where=(ys < snowline)[..., None])
            np.copyto(win, col, where=mask[..., None])
            if s.biome == "fire" and s.mountains and i == layers - 1:
                peak = int(np.argmin(ridge[0]))
                self.glow(img, peak, ridge[0, peak], 14 * self.u, (255, 110, 30), 0.9)

    def land(self, img: np.ndarray) -> None:
        s, rng, hz = self.s, self.rng, self.horizon
        far, near = (self.lit(c) for c in _GROUNDS[s.biome])
        if s.water:
            self.ground[:] = hz
            needs_shore = s.figures or s.lighthouse or s.castle or s.tower or s.houses or s.trees or s.campfire
            if needs_shore:
                prof = _ridge(rng, self.w, 0.4, octaves=5)
                self.shore = (self.h * (0.86 - 0.05 * prof)).astype(np.float32)
            far, near = self.lit((200, 182, 132) if s.biome != "snow" else (230, 236, 245)), self.lit((150, 130, 90))
            self.water(img)
        else:
            xs = np.linspace(0, 2 * np.pi, self.w)
            wobble = sum(np.sin(xs * f + rng.uniform(0, 6.3)) * a for f, a in ((1.0, 0.018), (2.3, 0.008)))
            self.ground = (hz + wobble * self.h).astype(np.float32)
        surface = self.ground if self.shore is None else self.shore
        top = int(surface.min())
        ys = self.ys[top:]
        t = (ys - top) / (self.h - top)  # per row only: cheap, and reads as depth
        col = np.array(far, np.float32) + (np.array(near, np.float32) - np.array(far, np.float32)) * t[..., None]
        if self.style == "painted":  # soft horizontal brush strokes
            knots = rng.normal(0, 1, len(ys) // 6 + 2)
            strokes = np.interp(np.arange(len(ys)) / 6, np.arange(len(knots)), knots).astype(np.float32)
            col = col + strokes[:, None, None] * (4 * self.ambient + 1)
        np.copyto(img[top:], np.broadcast_to(col, (len(ys), self.w, 3)), where=(ys >= surface[None, :])[..., None])

    def water(self, img: np.ndarray) -> None:
        """Mirror everything above the horizon, darken it, break it with ripples."""
        hz, h = int(self.horizon), self.h
        rows = np.arange(hz, h)
        src = np.clip(2 * hz - rows, 0, hz - 1)
        shift = (np.sin(rows * 0.9 / max(1, self.u)) * 3 * self.u * (rows - hz) / (h - hz + 1)).astype(int)
        cols = (np.arange(self.w)[None, :] + shift[:, None]) % self.w
        refl = img[src[:, None], cols]
        deep = np.array(self.lit((24, 60, 100)), np.float32)
        t = ((rows - hz) / (h - hz + 1))[:, None, None].astype(np.float32)
        img[hz:h] = refl * (0.72 - 0.25 * t) + deep * (0.28 + 0.25 * t)
        ripple = self.rng.random((h - hz, 1)) < 0.18
        img[hz:h] += np.where(ripple[..., None], 10.0 * self.ambient, 0)
        img[hz : hz + max(1, int(self.u))] += 18 * self.ambient  # bright rim at the horizon line

    # -- PIL stage -------------------------------------------------------- #
    def far_forest(self, d: ImageDraw.ImageDraw) -> None:
        if not self.s.forest_row:
            return
        colour = _rgb(self.far(self.lit((30, 70, 40)), 0.35))
        x = -10 * self.u
        while x < self.w:
            hgt = self.rng.uniform(18, 34) * self.u
            y = self.ground_at(x) + 4 * self.u if self.shore is None else self.horizon
            d.polygon([(x - hgt * 0.28, y), (x, y - hgt), (x + hgt * 0.28, y)], fill=colour)
            x += self.rng.uniform(6, 12) * self.u

    def castle(self, d: ImageDraw.ImageDraw, x: float) -> None:
        u, y = self.u, self.ground_at(x) + 6 * self.u
        stone, roof = _rgb(self.lit((150, 144, 138))), _rgb(self.lit((120, 50, 55)))
        dark = _rgb(self.lit((70, 64, 62)))
        wall_w, wall_h = 130 * u, 55 * u
        d.rectangle([x - wall_w / 2, y - wall_h, x + wall_w / 2, y], fill=stone)
        for cx in np.arange(x - wall_w / 2, x + wall_w / 2, 12 * u):  # crenellations
            d.rectangle([cx, y - wall_h - 7 * u, cx + 6 * u, y - wall_h], fill=stone)
        for tx, th, tw in ((-wall_w / 2, 95, 24), (wall_w / 2, 95, 24), (0, 125, 30)):
            left, right, top = x + tx - tw * u / 2, x + tx + tw * u / 2, y - th * u
            d.rectangle([left, top, right, y], fill=stone)
            d.polygon([(left - 4 * u, top), (x + tx, top - 34 * u), (right + 4 * u, top)], fill=roof)
            self.window(d, x + tx, top + 18 * u, 3.5 * u, 8 * u)
        d.rectangle([x - 11 * u, y - 30 * u, x + 11 * u, y], fill=dark)
        d.ellipse([x - 11 * u, y - 41 * u, x + 11 * u, y - 19 * u], fill=dark)

    def tower(self, d: ImageDraw.ImageDraw, x: float) -> None:
        u, y = self.u, self.ground_at(x) + 6 * self.u
        stone = _rgb(self.lit((128, 120, 130)))
        tw, th = 34 * u, 190 * u
        d.polygon([(x - tw / 2 - 5 * u, y), (x - tw / 2, y - th), (x + tw / 2, y - th), (x + tw / 2 + 5 * u, y)], fill=stone)
        d.rectangle([x - tw / 2 - 6 * u, y - th - 12 * u, x + tw / 2 + 6 * u, y - th], fill=stone)
        for cx in np.arange(x - tw / 2 - 6 * u, x + tw / 2 + 6 * u, 10 * u):
            d.rectangle([cx, y - th - 20 * u, cx + 5 * u, y - th - 12 * u], fill=stone)
        for wy in (0.25, 0.5, 0.75):
            self.window(d, x, y - th * wy, 4 * u, 9 * u)

    def lighthouse(self, d: ImageDraw.ImageDraw, x: float) -> None:
        u, y = self.u, self.ground_at(x) + 4 * self.u
        white, red = _rgb(self.lit((236, 234, 228))), _rgb(self.lit((196, 40, 40)))
        rock = _rgb(self.lit((84, 78, 74)))
        d.ellipse([x - 48 * u, y - 22 * u, x + 48 * u, y + 26 * u], fill=rock)
        bw, tw, th = 34 * u, 20 * u, 160 * u
        y -= 8 * u
        bands = 6
        for i in range(bands):
            y0, y1 = y - th * i / bands, y - th * (i + 1) / bands
            w0, w1 = bw + (tw - bw) * i / bands, bw + (tw - bw) * (i + 1) / bands
            d.polygon([(x - w0 / 2, y0), (x - w1 / 2, y1), (x + w1 / 2, y1), (x + w0 / 2, y0)], fill=red if i % 2 else white)
        top = y - th
        lamp = _rgb((255, 236, 150)) if self.s.time != "day" else _rgb(self.lit((210, 200, 150)))
        d.rectangle([x - tw / 2 - 4 * u, top - 3 * u, x + tw / 2 + 4 * u, top], fill=red)
        d.rectangle([x - tw / 2 + 2 * u, top - 20 * u, x + tw / 2 - 2 * u, top - 3 * u], fill=lamp)
        d.pieslice([x - tw / 2, top - 32 * u, x + tw / 2, top - 8 * u], 180, 360, fill=red)
        if self.s.time != "day":
            self.lamps.append((x, top - 12 * u, 16 * u, (255, 230, 150)))
            self.beam = (x, top - 12 * u, 1 if x < self.w / 2 else -1)

    def house(self, d: ImageDraw.ImageDraw, x: float, scale: float) -> None:
        u, y = self.u * scale, self.ground_at(x) + 5 * self.u
        wall = _rgb(self.lit(self.rng.choice([(200, 180, 150), (180, 150, 120), (210, 200, 185)])))
        roof = _rgb(self.lit(self.rng.choice([(140, 60, 50), (90, 70, 60), (110, 90, 80)])))
        hw, hh = 38 * u, 26 * u
        d.rectangle([x - hw / 2, y - hh, x + hw / 2, y], fill=wall)
        d.rectangle([x + hw * 0.2, y - hh - 20 * u, x + hw * 0.32, y - hh - 4 * u], fill=roof)  # chimney
        d.polygon([(x - hw / 2 - 5 * u, y - hh), (x, y - hh - 22 * u), (x + hw / 2 + 5 * u, y - hh)], fill=roof)
        self.window(d, x - hw * 0.22, y - hh * 0.55, 4 * u, 5 * u)
        d.rectangle([x + hw * 0.08, y - hh * 0.6, x + hw * 0.3, y], fill=_rgb(self.lit((80, 55, 40))))

    def window(self, d: ImageDraw.ImageDraw, x: float, y: float, w: float, h: float) -> None:
        lit = self.s.time in ("dusk", "night")
        colour = (255, 214, 120) if lit else _rgb(self.lit((50, 48, 56)))
        d.rectangle([x - w / 2, y - h / 2, x + w / 2, y + h / 2], fill=colour)
        if lit:
            self.lamps.append((x, y, 2.2 * h, (255, 200, 110)))

    def tree(self, d: ImageDraw.ImageDraw, x: float, scale: float, pine: bool) -> None:
        u = self.u * scale
        y = self.ground_at(x) + self.rng.uniform(2, 14) * self.u
        trunk = _rgb(self.lit((80, 56, 40)))
        leaf = self.lit((38, 96, 48) if pine else (64, 122, 52))
        if self.s.biome == "fire":
            leaf = self.lit((40, 30, 26))
        hgt = self.rng.uniform(80, 120) * u
        d.rectangle([x - 4 * u, y - hgt * 0.3, x + 4 * u, y], fill=trunk)
        if pine:
            for i in range(3):
                base, wid = y - hgt * (0.2 + 0.22 * i), hgt * (0.42 - 0.1 * i)
                d.polygon([(x - wid / 2, base), (x, base - hgt * 0.45), (x + wid / 2, base)], fill=_rgb(_mix(leaf, (0, 0, 0), 0.08 * i)))
                if self.s.biome == "snow":
                    d.polygon([(x - wid * 0.16, base - hgt * 0.3), (x, base - hgt * 0.45), (x + wid * 0.16, base - hgt * 0.3)], fill=_rgb(self.lit((240, 244, 250))))
        else:
            for dx, dy, r in ((0, 0.62, 0.26), (-0.16, 0.5, 0.2), (0.16, 0.5, 0.2), (0, 0.78, 0.18)):
                cx, cy, rr = x + dx * hgt, y - dy * hgt, r * hgt
                shade = _mix(leaf, (255, 255, 200), 0.08) if dx < 0 else leaf
                d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=_rgb(shade))

    def figure(self, d: ImageDraw.ImageDraw, x: float, scale: float) -> None:
        u = self.u * scale
        y = self.ground_at(x) + self.rng.uniform(10, 30) * self.u
        if self.shore is not None:
            y = self.ground_at(x) + self.rng.uniform(8, 18) * self.u
        colour = _rgb(self.lit(self.rng.choice([(60, 40, 50), (40, 50, 70), (70, 40, 30)]), k=2))
        hgt = 48 * u
        d.polygon([(x - 9 * u, y), (x - 5 * u, y - hgt * 0.75), (x + 5 * u, y - hgt * 0.75), (x + 9 * u, y)], fill=colour)
        d.ellipse([x - 5 * u, y - hgt, x + 5 * u, y - hgt * 0.78], fill=colour)
        d.line([(x + 8 * u, y), (x + 11 * u, y - hgt * 0.9)], fill=colour, width=max(1, int(2 * u)))  # a staff

    def campfire(self, d: ImageDraw.ImageDraw, x: float) -> None:
        u, y = self.u, self.ground_at(x) + 24 * self.u
        d.line([(x - 14 * u, y), (x + 14 * u, y - 6 * u)], fill=_rgb(self.lit((70, 45, 30))), width=int(4 * u) or 1)
        d.line([(x - 14 * u, y - 6 * u), (x + 14 * u, y)], fill=_rgb(self.lit((70, 45, 30))), width=int(4 * u) or 1)
        for w, hgt, c in ((12, 34, (240, 90, 30)), (8, 24, (255, 170, 40)), (4, 14, (255, 236, 150))):
            d.polygon([(x - w * u, y - 2 * u), (x, y - hgt * u), (x + w * u, y - 2 * u)], fill=c)
        self.lamps.append((x, y - 12 * u, 40 * u, (255, 140, 50)))

    def volcano(self, d: ImageDraw.ImageDraw, x: float) -> None:
        u, y = self.u, self.ground_at(x) + 4 * self.u
        hw, th, cw = 170 * u, 150 * u, 26 * u
        rock = _rgb(self.far(self.lit((70, 46, 42)), 0.15))
        d.polygon([(x - hw, y), (x - cw, y - th), (x + cw, y - th), (x + hw, y)], fill=rock)
        lava = (255, 120, 30)
        for dx in self.rng.uniform(-0.8, 0.8, 3):  # lava runs down the flank
            d.line([(x + dx * cw, y - th), (x + dx * cw * 2.5, y - th * 0.6), (x + dx * hw * 0.8, y - th * 0.05)],
                   fill=lava, width=max(1, int(3 * u)))
        self.lamps.append((x, y - th, 40 * u, (255, 110, 30)))
        self.lamps.append((x, y - th - 30 * u, 60 * u, (120, 80, 70)))  # smoke

    def temple(self, d: ImageDraw.ImageDraw, x: float) -> None:
        u, y = self.u, self.ground_at(x) + 6 * self.u
        marble, shade = _rgb(self.lit((226, 218, 200))), _rgb(self.lit((170, 160, 145)))
        hw, ch = 70 * u, 62 * u
        for i in range(3):  # steps
            d.rectangle([x - hw - (3 - i) * 5 * u, y - (i + 1) * 5 * u, x + hw + (3 - i) * 5 * u, y - i * 5 * u], fill=marble if i % 2 else shade)
        base = y - 15 * u
        for cx in np.linspace(x - hw + 6 * u, x + hw - 6 * u, 6):
            d.rectangle([cx - 5 * u, base - ch, cx + 5 * u, base], fill=marble)
        d.rectangle([x - hw - 4 * u, base - ch - 10 * u, x + hw + 4 * u, base - ch], fill=shade)
        d.polygon([(x - hw - 6 * u, base - ch - 10 * u), (x, base - ch - 38 * u), (x + hw + 6 * u, base - ch - 10 * u)], fill=marble)

    def skyline(self, d: ImageDraw.ImageDraw) -> None:
        x, lit = 0.0, self.s.time in ("dusk", "night")
        body = _rgb(self.far(self.lit((70, 74, 86)), 0.2))
        while x < self.w:
            bw, bh = self.rng.uniform(26, 60) * self.u, self.rng.uniform(50, 190) * self.u
            y = self.ground_at(x + bw / 2) + 6 * self.u
            d.rectangle([x, y - bh, x + bw - 3 * self.u, y], fill=body)
            for wy in np.arange(y - bh + 8 * self.u, y - 8 * self.u, 12 * self.u):
                for wx in np.arange(x + 5 * self.u, x + bw - 10 * self.u, 10 * self.u):
                    if self.rng.random() < (0.45 if lit else 0.8):
                        c = (255, 214, 130) if lit else _rgb(self.lit((120, 140, 160)))
                        d.rectangle([wx, wy, wx + 4 * self.u, wy + 5 * self.u], fill=c)
            x += bw

    def rain(self, d: ImageDraw.ImageDraw) -> None:
        c, n = _rgb(_mix(self.hor, (255, 255, 255), 0.3)), int(250 * self.w * self.h / (512 * self.u) ** 2)
        for x, y in zip(self.rng.uniform(0, self.w, n), self.rng.uniform(0, self.h, n)):
            d.line([(x, y), (x - 4 * self.u, y + 16 * self.u)], fill=c, width=max(1, int(self.u)))

    def birds(self, d: ImageDraw.ImageDraw) -> None:
        colour = _rgb(self.lit((30, 30, 36), k=2))
        cx, cy = self.rng.uniform(0.2, 0.8) * self.w, self.rng.uniform(0.12, 0.35) * self.h
        for _ in range(self.s.birds):
            x, y = cx + self.rng.uniform(-60, 60) * self.u, cy + self.rng.uniform(-30, 30) * self.u
            s = self.rng.uniform(5, 9) * self.u
            d.line([(x - s, y - s * 0.5), (x, y), (x + s, y - s * 0.5)], fill=colour, width=max(1, int(1.6 * self.u)))

    def objects(self, im: Image.Image) -> None:
        s, u, rng = self.s, self.u, self.rng
        d = ImageDraw.Draw(im)
        self.far_forest(d)
        if s.skyline:
            self.skyline(d)
        if s.temple:
            self.temple(d, self.free_x(160 * u, 0.25, 0.75))
        if s.volcano:
            self.volcano(d, self.free_x(200 * u, 0.3, 0.7))
        if s.lighthouse:
            self.lighthouse(d, self.free_x(100 * u, 0.15, 0.85))
        if s.castle:
            self.castle(d, self.free_x(170 * u, 0.25, 0.75))
        if s.tower:
            self.tower(d, self.free_x(60 * u, 0.15, 0.85))
        for i in range(s.houses):
            self.house(d, self.free_x(52 * u), rng.uniform(0.8, 1.1))
        trees = sorted((self.free_x(40 * u, 0.03, 0.97) for _ in range(s.trees)), key=lambda _: rng.random())
        for x in trees:
            self.tree(d, x, rng.uniform(0.7, 1.25), s.pines)
        if s.campfire and (s.biome != "fire" or s.figures):
            self.campfire(d, self.free_x(40 * u, 0.3, 0.7))
        for i in range(s.figures):
            self.figure(d, self.free_x(22 * u, 0.15, 0.85), rng.uniform(0.85, 1.1))
        if s.birds:
            self.birds(d)
        if s.storm:
            self.rain(d)

    # -- post effects ----------------------------------------------------- #
    def finish(self, img: np.ndarray) -> np.ndarray:
        if self.beam is not None:
            x, y, side = self.beam
            dx = (self.xs - x) * side
            spread = np.abs(self.ys - y) < np.maximum(dx, 0) * 0.12 + 2 * self.u
            a = np.where(spread & (dx > 0), 0.28 * np.exp(-dx / (self.w * 0.6)), 0)[..., None]
            img += (np.array([255, 240, 180], np.float32) - img).clip(0) * a
        for x, y, r, c in self.lamps:
            self.glow(img, x, y, r, c, 0.45)
        if self.s.biome == "fire":
            n = int(80 * self.w * self.h / 512**2 / self.u**2) + 20
            for x, y in zip(self.rng.uniform(0, self.w, n).astype(int), self.rng.uniform(0.2, 1, n) * self.h):
                img[int(y) : int(y) + max(1, int(2 * self.u)), x : x + max(1, int(2 * self.u))] = (255, 150, 50)
        if self.s.snowfall:
            n = 160
            for x, y in zip(self.rng.uniform(0, self.w, n), self.rng.uniform(0, self.h, n)):
                self.disc(img, x, y, self.rng.uniform(1.0, 2.2) * self.u, (250, 250, 255))
        if self.style == "painted":
            cx, cy = self.w / 2, self.h / 2
            v = ((self.xs - cx) / cx) ** 2 + ((self.ys - cy) / cy) ** 2
            img *= (1 - 0.18 * np.clip(v - 0.35, 0, 1))[..., None]
        return img


def _label(im: Image.Image, text: str) -> None:
    """Stamp a small 'procedural' tag in the bottom-left corner."""
    w, h = im.size
    if min(w, h) < 48:
        return
    size = max(8, min(w, h) // 40)
    try:
        font: Any = ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):
        font = ImageFont.load_default()
    d = ImageDraw.Draw(im)
    left, top, right, bottom = d.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    x0, y0 = pad, h - pad - (bottom - top) - 2 * pad
    d.rectangle([x0, y0, x0 + right - left + 2 * pad, h - pad], fill=(20, 20, 24))
    d.text((x0 + pad - left, y0 + pad - top), text, fill=(235, 235, 235), font=font)


class ProceduralRenderer:
    """Deterministic stand-in for an image model: paints the prompt's scene with PIL + numpy.

    Same prompt + seed + params gives byte-identical pixels at a given size, and the
    layout is size-independent (coordinates are relative), so a 128px preview
    matches its 1024px render. Understood params: ``palette`` (one of "dawn",
    "day", "dusk", "night", overriding time words) and ``style`` ("painted", the
    default, adds vignette and brush strokes; "flat" doesn't). Other params, e.g.
    ``num_inference_steps``, are ignored so callers can switch backends freely.
    """

    name = "procedural"
    palettes = tuple(_SKIES)
    styles = ("painted", "flat")

    def __call__(
        self,
        prompt: str,
        *,
        width: int = 512,
        height: int = 512,
        seed: int | None = None,
        **params: Any,
    ) -> Image.Image:
        _check_size(width, height)
        palette, style = params.get("palette"), params.get("style", "painted")
        if palette is not None and palette not in _SKIES:
            raise ValueError(f"palette must be one of {sorted(_SKIES)}, got {palette!r}")
        if style not in self.styles:
            raise ValueError(f"style must be one of {list(self.styles)}, got {style!r}")
        seed = _prompt_seed(prompt) if seed is None else int(seed)
        key = json.dumps([prompt, seed, palette, style]).encode()
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
        scene = _read_prompt(prompt, rng, palette)

        ss = 2 if width * height <= 1024 * 1024 else 1  # supersample for anti-aliasing
        p = _Painter(scene, rng, width * ss, height * ss, style)
        img = p.sky()
        if scene.stars:
            p.stars(img)
        p.sun_moon(img)
        p.clouds(img)
        if scene.mountains or scene.hills or not scene.water:
            p.mountains(img)
        p.land(img)
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        p.objects(im)
        img = p.finish(np.asarray(im, dtype=np.float32).copy())
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        if ss != 1:
            im = im.resize((width, height), Image.Resampling.BOX)
        _label(im, self.name)
        im.info.update(renderer=self.name, prompt=prompt, seed=seed)
        return im

    def __repr__(self) -> str:
        return "ProceduralRenderer()"


# --------------------------------------------------------------------------- #
# Diffusers backend
# --------------------------------------------------------------------------- #


class DiffusersTextToImage:
    """A local diffusers checkpoint (e.g. Stable Diffusion) run on CPU.

    Loading is lazy and goes through the model pool, so building a world stays cheap
    until an image is needed, and renderers on one folder share one pipeline. Calls are serialised too:
    a diffusers pipeline mutates its scheduler per call and is not re-entrant.
    Weights are only ever read from ``folder`` (never downloaded), and only from safetensors:
    a folder whose weights are all pickles raises `PickleCheckpointError` unless
    ``allow_pickle=True`` (then ``torch.load(weights_only=True)``).
    """

    def __init__(self, folder: str | Path, *, allow_pickle: bool = False) -> None:
        self.folder = Path(folder).expanduser()
        self.allow_pickle = allow_pickle
        self.name = f"diffusers:{folder}"
        self._pipe: Any = None
        self._call_lock = threading.Lock()
        self.loads = 0  # how many times weights were read; tests check it stays 1

    def _check_folder(self) -> None:
        if not self.folder.is_dir():
            raise FileNotFoundError(f"diffusers checkpoint folder not found: {self.folder}")
        if not (self.folder / "model_index.json").is_file():
            raise ValueError(
                f"{self.folder} is not a diffusers checkpoint (no model_index.json); "
                "expected a folder written by DiffusionPipeline.save_pretrained"
            )

    def load(self) -> Any:
        """Return the pipeline: through the model pool, so one folder is read once per process."""
        if self._pipe is None:
            self._check_folder()
            from worldgen.local_models.pool import resolve_pool

            self._pipe = resolve_pool().get(
                str(self.folder), loader=self._read, cls="DiffusionPipeline", requested_by=self.name,
                allow_pickle=self.allow_pickle,
            )
        return self._pipe

    def _read(self) -> Any:
        from diffusers import DiffusionPipeline

        from worldgen.local_models.safety import safe_load_kwargs

        safe = safe_load_kwargs(self.folder, allow_pickle=self.allow_pickle, requested_by=self.name)
        try:
            pipe = DiffusionPipeline.from_pretrained(
                str(self.folder),
                local_files_only=True,
                **safe,
                low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
            )
        except Exception as e:  # diffusers errors rarely say which folder
            raise RuntimeError(f"could not load diffusers checkpoint {self.folder}: {e}") from e
        pipe = pipe.to("cpu")
        pipe.set_progress_bar_config(disable=True)
        self.loads += 1
        return pipe

    def __call__(
        self,
        prompt: str,
        *,
        width: int = 512,
        height: int = 512,
        seed: int | None = None,
        **params: Any,
    ) -> Image.Image:
        import torch

        _check_size(width, height)
        pipe = self.load()
        seed = _prompt_seed(prompt) if seed is None else int(seed)
        kwargs: dict[str, Any] = {
            "width": width,
            "height": height,
            "num_inference_steps": int(params.get("num_inference_steps", 20)),
            "guidance_scale": float(params.get("guidance_scale", 7.5)),
            "output_type": "pil",
        }
        if params.get("negative_prompt"):
            kwargs["negative_prompt"] = params["negative_prompt"]
        with self._call_lock, torch.inference_mode():
            out = pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs)
        image = out.images[0]
        image.info.update(renderer=self.name, prompt=prompt, seed=seed)
        return image

    def __repr__(self) -> str:
        return f"DiffusersTextToImage({str(self.folder)!r})"


def resolve_text_to_image(spec: str | TextToImage | None) -> TextToImage:
    """Config value -> renderer: None/"procedural", "diffusers:<folder>", or a renderer object."""
    if spec is None or spec == "procedural":
        return ProceduralRenderer()
    if isinstance(spec, str):
        if spec.startswith("diffusers:") and spec[len("diffusers:") :].strip():
            return DiffusersTextToImage(spec[len("diffusers:") :].strip())
        raise ValueError(
            f"unknown text-to-image spec {spec!r}; accepted: None or 'procedural', "
            "'diffusers:<local checkpoint folder>', or an object with __call__(prompt, *, width, height, seed)"
        )
    if callable(spec):
        return spec
    raise ValueError(
        f"cannot use {spec!r} as a text-to-image renderer; accepted: None or 'procedural', "
        "'diffusers:<local checkpoint folder>', or an object with __call__(prompt, *, width, height, seed)"
    )


# --------------------------------------------------------------------------- #
# LangChain tool
# --------------------------------------------------------------------------- #


def text_to_image_tool(
    renderer: TextToImage | str | None = None,
    *,
    save: Callable[[Image.Image], str] | None = None,
    name: str = "text_to_image",
) -> BaseTool:
    """Wrap a renderer as a LangChain tool an agent can call.

    The tool's content is text (an agent can't read pixels): the reference string
    returned by ``save`` if given, otherwise a one-line summary. The PIL image
    itself travels as the ToolMessage ``artifact`` for code that wants it.
    """
    from langchain_core.tools import StructuredTool
    from pydantic import BaseModel, Field

    r = resolve_text_to_image(renderer)

    class TextToImageArgs(BaseModel):
        prompt: str = Field(description="What the picture shows: subjects, setting, light, colours, style.")
        width: int = Field(512, ge=64, le=2048, description="Image width in pixels.")
        height: int = Field(512, ge=64, le=2048, description="Image height in pixels.")
        seed: int | None = Field(None, description="Fix for a reproducible image; omit to derive from the prompt.")

    def _run(prompt: str, width: int = 512, height: int = 512, seed: int | None = None) -> tuple[str, Image.Image]:
        image = r(prompt, width=width, height=height, seed=seed)
        if save is not None:
            return save(image), image
        return f"rendered a {image.width}x{image.height} image with {r.name}", image

    return StructuredTool.from_function(
        func=_run,
        name=name,
        description=f"Render an image from a text prompt (renderer: {r.name}).",
        args_schema=TextToImageArgs,
        response_format="content_and_artifact",
    )
