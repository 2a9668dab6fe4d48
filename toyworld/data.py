"""Rendered training and held-out sets of the toy world, as tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toyworld import world

HELD_OUT_START = 10_000_000  # held-out pictures are indices from here: never among the training ones


@dataclass
class WorldSet:
    images: torch.Tensor  # (N, 3, S, S) uint8
    scenes: list[world.Scene]

    def floats(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Pictures in [0, 1], float32: (n, 3, S, S)."""
        return self.images[index].float().div(255)


def render_set(seed: int, start: int, count: int, size: int = 64) -> WorldSet:
    """Pictures start .. start+count-1 of the world drawn from `seed`."""
    scenes = world.scenes(seed, range(start, start + count))
    pixels = world.render_all(scenes, size)  # (N, S, S, 3)
    return WorldSet(
        images=torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))), scenes=scenes
    )


def distinct_caption_set(seed: int, count: int, size: int = 64) -> tuple[WorldSet, list[str]]:
    """`count` held-out pictures whose full captions are all different (for retrieval among them)."""
    chosen: list[world.Scene] = []
    seen: set[str] = set()
    index = HELD_OUT_START
    while len(chosen) < count:
        scene = world.scenes(seed, [index])[0]
        text = world.caption(scene)
        if text not in seen:
            seen.add(text)
            chosen.append(scene)
        index += 1
    pixels = world.render_all(chosen, size)
    images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    return WorldSet(images=images, scenes=chosen), [world.caption(s) for s in chosen]
