"""bench/toyworld_quality.py's judge: one red circle on blue, told from the world's own near misses."""

from __future__ import annotations

import numpy as np
import pytest

from bench.toyworld_quality import one_red_circle_on_blue
from toyworld import world
from toyworld.world import PALETTE, Scene


def _shape(shape: str = "circle", fg: str = "red", bg: str = "blue", **kw: str) -> np.ndarray:
    scene = Scene(kind="shape", colours=(fg, bg), rgb=(PALETTE[fg], PALETTE[bg]), shapes=(shape,), **kw)
    return world.render(scene) / 255.0


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_a_rendered_red_circle_on_blue_passes_at_every_size(size: str) -> None:
    verdict = one_red_circle_on_blue(_shape(size=size))
    assert verdict.one_circle and verdict.one_shape
    assert verdict.red_regions == 1 and verdict.centre_offset < 0.05


def test_a_circle_off_centre_passes_and_says_where_it_is() -> None:
    verdict = one_red_circle_on_blue(_shape(position="left"))
    assert verdict.one_circle and 0.2 < verdict.centre_offset < 0.3


@pytest.mark.parametrize(
    "picture",
    [
        pytest.param(_shape("square"), id="a square"),
        pytest.param(_shape("triangle"), id="a triangle"),
        pytest.param(_shape(bg="green"), id="on green"),
        pytest.param(_shape(fg="orange"), id="orange"),
        pytest.param(_shape(fg="pink"), id="pink"),
        pytest.param(np.broadcast_to(np.array(PALETTE["blue"]) / 255.0, (64, 64, 3)), id="blue only"),
    ],
)
def test_near_misses_fail(picture: np.ndarray) -> None:
    assert not one_red_circle_on_blue(picture).one_circle


@pytest.mark.parametrize("shape", ["square", "triangle"])
def test_one_red_shape_that_is_not_round_is_one_shape_but_no_circle(shape: str) -> None:
    verdict = one_red_circle_on_blue(_shape(shape))
    assert verdict.one_shape and not verdict.one_circle


def test_a_field_of_red_blobs_fails() -> None:
    dots = Scene(kind="dots", colours=("red", "blue"), rgb=(PALETTE["red"], PALETTE["blue"]))
    two = Scene(
        kind="two_shapes",
        colours=("red", "pink", "blue"),
        rgb=(PALETTE["red"], PALETTE["red"], PALETTE["blue"]),
        shapes=("circle", "circle"),
        size="small",
    )
    for scene, regions in ((dots, 16), (two, 2)):
        verdict = one_red_circle_on_blue(world.render(scene) / 255.0)
        assert not verdict.one_shape and not verdict.one_circle and verdict.red_regions == regions
