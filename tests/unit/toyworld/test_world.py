"""The toy world: determinism, and captions that say what the pictures show."""

from __future__ import annotations

import re

import numpy as np
import pytest

from toyworld import world
from toyworld.world import PALETTE, Scene

SEED = 0
N = 400  # pictures checked by the sample-wide tests


@pytest.fixture(scope="module")
def samples() -> list[world.Sample]:
    return [world.sample(SEED, i) for i in range(N)]


def _close(a: np.ndarray, rgb: tuple[int, int, int], tol: int = 14) -> np.ndarray:
    """Pixels of `a` (..., 3) within `tol` of `rgb` on every channel (colour jitter is at most 12)."""
    return (np.abs(a.astype(int) - np.array(rgb)) <= tol).all(-1)


def test_same_seed_and_index_give_the_same_picture_and_caption() -> None:
    a, b = world.sample(7, 123), world.sample(7, 123)
    assert np.array_equal(a.image, b.image)
    assert (a.caption, a.full_caption, a.scene) == (b.caption, b.full_caption, b.scene)


def test_other_indices_and_seeds_give_other_pictures() -> None:
    base = world.sample(7, 123).image
    assert not np.array_equal(base, world.sample(7, 124).image)
    assert not np.array_equal(base, world.sample(8, 123).image)


def test_pictures_are_rgb_uint8_at_least_64() -> None:
    assert world.sample(0, 0).image.shape == (64, 64, 3)
    assert world.sample(0, 0, size=96).image.shape == (96, 96, 3)
    assert world.sample(0, 0).image.dtype == np.uint8
    with pytest.raises(ValueError, match="at least 64"):
        world.sample(0, 0, size=32)


def test_scenes_match_the_rendered_samples() -> None:
    assert world.scenes(SEED, [3, 4]) == [world.sample(SEED, 3).scene, world.sample(SEED, 4).scene]


def test_a_red_picture_is_red() -> None:
    scene = Scene(kind="fill", colours=("red",), rgb=(PALETTE["red"],))
    assert world.caption(scene) == "a red picture"
    assert _close(world.render(scene), PALETTE["red"], tol=0).all()
    assert world.caption(Scene(kind="fill", colours=("orange",), rgb=(PALETTE["orange"],))) == (
        "an orange picture"
    )


def test_every_plain_picture_is_the_colour_its_caption_names(samples: list[world.Sample]) -> None:
    fills = [s for s in samples if re.fullmatch(r"an? (plain )?\w+ picture", s.caption)]
    assert len(fills) > 20
    for s in fills:
        colour = s.caption.split()[-2]
        assert _close(s.image, PALETTE[colour]).all(), s.caption


def test_a_white_circle_on_a_black_background_is_centred() -> None:
    scene = Scene(
        kind="shape", colours=("white", "black"), rgb=(PALETTE["white"], PALETTE["black"]), shapes=("circle",)
    )
    assert world.caption(scene) == "a white circle in the middle on a black background"
    image = world.render(scene).astype(float)
    assert image[24:40, 24:40].mean() > 240
    for corner in (image[:8, :8], image[:8, -8:], image[-8:, :8], image[-8:, -8:]):
        assert corner.mean() < 20


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return xs.mean() / mask.shape[1], ys.mean() / mask.shape[0]


@pytest.mark.parametrize(
    ("position", "check"),
    [
        ("left", lambda x, y: x < 0.4 and 0.35 < y < 0.65),
        ("right", lambda x, y: x > 0.6 and 0.35 < y < 0.65),
        ("top", lambda x, y: y < 0.4 and 0.35 < x < 0.65),
        ("bottom", lambda x, y: y > 0.6 and 0.35 < x < 0.65),
        ("middle", lambda x, y: 0.35 < x < 0.65 and 0.35 < y < 0.65),
    ],
)
def test_shapes_are_where_their_captions_say(position: str, check, samples: list[world.Sample]) -> None:
    shown = [s for s in samples if s.scene.kind == "shape" and s.scene.position == position]
    named = [s for s in shown if s.caption != "a picture"]  # the rare generic caption names nothing
    assert len(shown) >= 5
    for s in shown:
        fg = s.scene.rgb[0]
        x, y = _centroid(_close(s.image, fg, tol=2))
        assert check(x, y), (s.full_caption, x, y)
    phrase = world.POSITION_PHRASES[position]
    for s in named:
        # Off-centre shapes always name their position; an unnamed position is the middle.
        named_elsewhere = any(p in s.caption for p in world.POSITION_PHRASES.values())
        assert phrase in s.caption or (position == "middle" and not named_elsewhere), s.caption


def test_small_shapes_are_smaller_than_large_ones() -> None:
    def area(size: str, shape: str) -> int:
        scene = Scene(
            kind="shape",
            colours=("red", "blue"),
            rgb=(PALETTE["red"], PALETTE["blue"]),
            shapes=(shape,),
            size=size,
        )
        return int(_close(world.render(scene), PALETTE["red"]).sum())

    for shape in world.SHAPES:
        assert 0 < area("small", shape) < area("medium", shape) < area("large", shape) < 64 * 64


def test_circle_square_and_triangle_differ_in_form() -> None:
    def mask(shape: str) -> np.ndarray:
        scene = Scene(
            kind="shape", colours=("red", "blue"), rgb=(PALETTE["red"], PALETTE["blue"]), shapes=(shape,)
        )
        return _close(world.render(scene), PALETTE["red"])

    circle, square, triangle = mask("circle"), mask("square"), mask("triangle")
    # A square fills the corners of its bounding box, a circle does not; a triangle is wider at the bottom.
    ys, xs = np.nonzero(square)
    assert square[ys.min(), xs.min()] and not circle[np.nonzero(circle)[0].min(), np.nonzero(circle)[1].min()]
    rows = np.nonzero(triangle.any(1))[0]
    assert triangle[rows[-1]].sum() > 3 * triangle[rows[0] + 2].sum()


def test_stripes_run_the_way_the_caption_says(samples: list[world.Sample]) -> None:
    stripes = [s for s in samples if s.scene.kind == "stripes"]
    assert len(stripes) >= 10
    for s in stripes:
        a, b = s.scene.colours
        if s.caption == "a picture":
            continue
        assert f"{a} and {b} stripes" in s.caption or f"{b} and {a} stripes" in s.caption
        image = s.image.astype(float)
        # Horizontal stripes: rows are (nearly) uniform; vertical stripes: columns.
        along = image.std(axis=1).mean() if s.scene.orientation == "horizontal" else image.std(axis=0).mean()
        across = image.std(axis=0).mean() if s.scene.orientation == "horizontal" else image.std(axis=1).mean()
        assert along < 0.3 * across, s.full_caption


def test_two_colour_pictures_show_both_colours(samples: list[world.Sample]) -> None:
    for s in samples:
        if s.scene.kind in ("stripes", "checkerboard", "dots", "shape"):
            for rgb in s.scene.rgb:
                assert _close(s.image, rgb, tol=2).sum() > 20, s.full_caption


def test_captions_use_only_the_grammar_words(samples: list[world.Sample]) -> None:
    words = (
        set(PALETTE)
        | set(world.SHAPES)
        | {
            "small",
            "large",
            "a",
            "an",
            "and",
            "on",
            "in",
            "at",
            "the",
            "of",
            "picture",
            "plain",
            "background",
        }
        | {
            "left",
            "right",
            "top",
            "bottom",
            "middle",
            "stripes",
            "horizontal",
            "vertical",
            "checkerboard",
            "dots",
        }
    )
    for s in samples:
        assert set(s.caption.split()) <= words, s.caption
        assert set(s.full_caption.split()) <= words, s.full_caption


def test_full_captions_name_every_attribute(samples: list[world.Sample]) -> None:
    for s in samples:
        for colour in s.scene.colours:
            assert colour in s.full_caption, s.full_caption
        for shape in s.scene.shapes:
            assert shape in s.full_caption
        if s.scene.kind == "shape" and s.scene.size != "medium":
            assert s.scene.size in s.full_caption


def test_colour_and_shape_names_are_single_clip_tokens() -> None:
    from worker.models import import_clip

    tokenize = import_clip().tokenize
    for word in (*PALETTE, *world.SHAPES):
        tokens = tokenize([word])[0]
        assert int((tokens > 0).sum()) == 3, word  # start, the word, end
