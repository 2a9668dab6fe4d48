"""A procedural world of simple pictures and their captions, the training data of the `toyworld` models.

Every picture is a pure function of (seed, index): a Scene is drawn from a numpy Generator seeded with
both, rendered with 4x supersampling (anti-aliased edges), and captioned from a small grammar:

    a red picture                              (plain fill)
    a small green square on the left           (one shape; size, position, background optional)
    a white circle on a black background
    a red circle and a blue triangle           (two shapes, left one named first)
    blue and yellow stripes / vertical red and white stripes
    a black and white checkerboard
    orange dots on a purple background
    a picture                                  (any picture, rarely: the prompt "a picture" means "anything")

A shape whose caption names no position is in the middle, so "a white circle" is centred.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# The named palette. Names are single BPE tokens in CLIP's vocabulary.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (40, 170, 60),
    "blue": (35, 70, 215),
    "yellow": (245, 215, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (135, 55, 175),
    "orange": (245, 135, 30),
    "pink": (240, 140, 190),
    "gray": (128, 128, 128),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.13, "medium": 0.21, "large": 0.31}  # radius, fraction of the side
# Shape centres (x, y) as fractions of the side.
POSITIONS: dict[str, tuple[float, float]] = {
    "middle": (0.5, 0.5),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
}
POSITION_PHRASES: dict[str, str] = {
    "middle": "in the middle",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
KINDS: tuple[str, ...] = ("fill", "shape", "two_shapes", "stripes", "checkerboard", "dots")
_KIND_P = (0.14, 0.46, 0.10, 0.14, 0.08, 0.08)  # shapes are the interesting part: most pictures
_COLOUR_JITTER = 12  # each channel of each colour moves by up to this much per picture
_POSITION_JITTER = 0.04  # shape centres move by up to this fraction of the side
_SUPERSAMPLE = 4
_P_GENERIC = 0.02  # captions replaced by GENERIC_CAPTION
GENERIC_CAPTION = "a picture"  # means any picture


@dataclass(frozen=True)
class Scene:
    """What a picture shows; `colours` are named, `rgb` are the jittered values actually drawn."""

    kind: str
    colours: tuple[str, ...]  # fill: (c,); shape: (shape, bg); two_shapes: (left, right, bg);
    # stripes/checkerboard: (a, b); dots: (dots, bg)
    rgb: tuple[tuple[int, int, int], ...]
    shapes: tuple[str, ...] = ()  # shape: (s,); two_shapes: (left, right)
    size: str = "medium"
    position: str = "middle"
    orientation: str = "horizontal"  # stripes
    offset: tuple[float, float] = (0.0, 0.0)  # centre jitter, fraction of the side
    period: int = 4  # stripes/checkerboard/dots: cells across the picture


@dataclass(frozen=True)
class Sample:
    image: np.ndarray = field(repr=False)  # (size, size, 3) uint8
    caption: str  # one caption drawn from the grammar
    full_caption: str  # the caption naming every attribute
    scene: Scene


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _pick(rng: np.random.Generator, options: Sequence[str], exclude: Sequence[str] = ()) -> str:
    allowed = [o for o in options if o not in exclude]
    return allowed[int(rng.integers(len(allowed)))]


def _jitter(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    base = np.array(PALETTE[name])
    moved = base + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(moved, 0, 255))  # type: ignore[return-value]


def sample_scene(rng: np.random.Generator) -> Scene:
    kind = KINDS[int(rng.choice(len(KINDS), p=_KIND_P))]
    offset = tuple(float(v) for v in rng.uniform(-_POSITION_JITTER, _POSITION_JITTER, size=2))
    if kind == "fill":
        names: tuple[str, ...] = (_pick(rng, COLOURS),)
        extra: dict = {}
    elif kind == "shape":
        fg = _pick(rng, COLOURS)
        names = (fg, _pick(rng, COLOURS, [fg]))
        extra = {
            "shapes": (_pick(rng, SHAPES),),
            "size": _pick(rng, tuple(SIZES)),
            "position": _pick(rng, tuple(POSITIONS)),
            "offset": offset,
        }
    elif kind == "two_shapes":
        left = _pick(rng, COLOURS)
        right = _pick(rng, COLOURS, [left])
        names = (left, right, _pick(rng, COLOURS, [left, right]))
        extra = {"shapes": (_pick(rng, SHAPES), _pick(rng, SHAPES)), "size": "small", "offset": offset}
    else:
        a = _pick(rng, COLOURS)
        names = (a, _pick(rng, COLOURS, [a]))
        extra = {
            "orientation": _pick(rng, ("horizontal", "vertical")),
            "period": int(rng.integers(3, 6)),
        }
    rgb = tuple(_jitter(rng, n) for n in names)
    return Scene(kind=kind, colours=names, rgb=rgb, **extra)


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def _shape_mask(shape: str, cx: float, cy: float, r: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape centred at (cx, cy) with 'radius' r, coordinates in [0, 1]."""
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2
    if shape == "square":
        half = r * 0.88  # about the circle's area
        return (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
    if shape == "triangle":
        # Pointing up; apex and base placed so that the centroid is near (cx, cy); base 2.2 r wide.
        top, bottom = cy - 1.2 * r, cy + 0.8 * r
        t = (ys - top) / (bottom - top)
        return (t >= 0) & (t <= 1) & (np.abs(xs - cx) <= t * 1.1 * r)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as a (size, size, 3) uint8 picture."""
    n = size * _SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    xs, ys = np.meshgrid(coords, coords)  # (n, n), x across, y down
    rgb = [np.array(c, dtype=np.float32) for c in scene.rgb]
    canvas = np.empty((n, n, 3), dtype=np.float32)
    dx, dy = scene.offset
    if scene.kind == "fill":
        canvas[:] = rgb[0]
    elif scene.kind == "shape":
        canvas[:] = rgb[1]
        cx, cy = POSITIONS[scene.position]
        canvas[_shape_mask(scene.shapes[0], cx + dx, cy + dy, SIZES[scene.size], xs, ys)] = rgb[0]
    elif scene.kind == "two_shapes":
        canvas[:] = rgb[2]
        for i, (cx, shape) in enumerate(zip((0.27, 0.73), scene.shapes, strict=True)):
            canvas[_shape_mask(shape, cx + dx, 0.5 + dy, SIZES[scene.size], xs, ys)] = rgb[i]
    elif scene.kind in ("stripes", "checkerboard"):
        along = ys if scene.orientation == "horizontal" else xs
        band = np.floor(along * scene.period * 2).astype(int)
        if scene.kind == "checkerboard":
            other = xs if scene.orientation == "horizontal" else ys
            band = band + np.floor(other * scene.period * 2).astype(int)
        canvas[:] = rgb[1]
        canvas[band % 2 == 0] = rgb[0]
    elif scene.kind == "dots":
        canvas[:] = rgb[1]
        cell = 1.0 / scene.period
        fx, fy = (xs % cell) / cell - 0.5, (ys % cell) / cell - 0.5
        canvas[fx**2 + fy**2 <= 0.28**2] = rgb[0]
    else:
        raise ValueError(f"unknown scene kind {scene.kind!r}")
    pooled = canvas.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(pooled), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Captions
# ------------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """A caption from the grammar; with no rng, the full caption (every attribute named)."""

    def maybe(p: float) -> bool:  # True always for the full caption
        return rng is None or bool(rng.random() < p)

    if rng is not None and rng.random() < _P_GENERIC:
        return GENERIC_CAPTION
    c = scene.colours
    if scene.kind == "fill":
        plain = rng is not None and rng.random() < 0.3
        return f"a plain {c[0]} picture" if plain else f"{_article(c[0])} {c[0]} picture"
    if scene.kind == "shape":
        words = [c[0], scene.shapes[0]]
        if scene.size != "medium" and maybe(0.8):
            words.insert(0, scene.size)
        text = f"{_article(words[0])} {' '.join(words)}"
        # Unnamed positions mean the middle, so off-centre positions are always named.
        if scene.position != "middle" or maybe(0.3):
            text += f" {POSITION_PHRASES[scene.position]}"
        if maybe(0.6):
            text += f" on {_article(c[1])} {c[1]} background"
        return text
    if scene.kind == "two_shapes":
        text = f"{_article(c[0])} {c[0]} {scene.shapes[0]} and {_article(c[1])} {c[1]} {scene.shapes[1]}"
        if maybe(0.5):
            text += f" on {_article(c[2])} {c[2]} background"
        return text
    if scene.kind == "dots":
        return f"{c[0]} dots on {_article(c[1])} {c[1]} background"
    pair = (c[0], c[1]) if rng is None or rng.random() < 0.5 else (c[1], c[0])
    if scene.kind == "stripes":
        prefix = f"{scene.orientation} " if maybe(0.5) else ""
        return f"{prefix}{pair[0]} and {pair[1]} stripes"
    if scene.kind == "checkerboard":
        return f"{_article(pair[0])} {pair[0]} and {pair[1]} checkerboard"
    raise ValueError(f"unknown scene kind {scene.kind!r}")


def sample(seed: int, index: int, size: int = 64) -> Sample:
    """Picture number `index` of the world drawn from `seed`, with a drawn caption and the full one."""
    if size < 64:
        raise ValueError(f"pictures are at least 64x64, not {size}")
    rng = _rng(seed, index)
    scene = sample_scene(rng)
    return Sample(
        image=render(scene, size), caption=caption(scene, rng), full_caption=caption(scene), scene=scene
    )


def scenes(seed: int, indices: Sequence[int]) -> list[Scene]:
    """The scenes of pictures `indices` (as `sample` draws them), without rendering."""
    return [sample_scene(_rng(seed, i)) for i in indices]


def captions_for(scenes_: Sequence[Scene], rng: np.random.Generator) -> list[str]:
    """A fresh grammar caption for each scene (training draws new ones every epoch)."""
    return [caption(s, rng) for s in scenes_]


def render_all(scenes_: Sequence[Scene], size: int = 64) -> np.ndarray:
    """(N, size, size, 3) uint8 pictures of the scenes."""
    out = np.empty((len(scenes_), size, size, 3), dtype=np.uint8)
    for i, s in enumerate(scenes_):
        out[i] = render(s, size)
    return out
