"""bench/flops.py's count from the networks' shapes against torch's own FlopCounterMode.

Each network, forward and backward, must match the counter exactly; the whole step (which adds the
cutouts' small colour and sampling products) within 1% on the tiny preset and 0.1% on ViT-B/32. CLIP's
attention runs as two batched matmuls here, since the counter counts 0 for the CPU's fused kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.flops import clip_image_flops, decoder_flops, step_flops
from worker.engine import BatchPainter, GenerationConfig, Painter
from worker.models import TINY_SEED, LoadedModels, build_random
from worker.runtime import EngineOptions, ResolvedOptions, engine_runtime

# fp32 with CLIP's attention as matmuls: every product visible to the counter
COUNTABLE = replace(EngineOptions(precision="fp32").resolve(torch.device("cpu")), math_attention=True)


@pytest.fixture(scope="module")
def tiny() -> LoadedModels:
    return build_random("tiny", "cpu", seed=TINY_SEED)


def _counted(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _networks(
    models: LoadedModels, options: ResolvedOptions, n: int, side: int, cutouts: int
) -> tuple[int, int]:
    """Counted FLOPs of CLIP on `cutouts` cutouts and of the decoder on n latents, forward and backward."""
    runtime = engine_runtime(models, options)
    assert runtime.options.math_attention
    size = models.clip_size
    x = torch.rand(cutouts, 3, size, size, requires_grad=True)
    z_q = torch.randn(n, models.vqgan.codebook.shape[1], side, side, requires_grad=True)
    clip = _counted(lambda: runtime.encode_image(x).square().sum().backward())
    decoder = _counted(lambda: runtime.decode(z_q).square().sum().backward())
    return clip, decoder


@pytest.mark.parametrize(("jobs", "side", "cutn"), [(1, 2, 4), (3, 4, 8)])
def test_each_network_matches_the_counter_exactly(
    tiny: LoadedModels, jobs: int, side: int, cutn: int
) -> None:
    clip, decoder = _networks(tiny, COUNTABLE, jobs, side, jobs * cutn)
    assert clip == clip_image_flops(tiny, jobs * cutn).forward_backward
    assert decoder == decoder_flops(tiny, jobs, side, side).forward_backward
    assert decoder > 0 and clip > 0


def _step_counted(models: LoadedModels, size: int, cutn: int, jobs: int) -> int:
    configs = [
        GenerationConfig("a fox", width=size, height=size, iterations=3, cutn=cutn, seed=s)
        for s in range(jobs)
    ]
    painters = [Painter(models, config, COUNTABLE) for config in configs]
    return _counted(BatchPainter(models, painters).step)


@pytest.mark.parametrize(("size", "cutn", "jobs"), [(32, 4, 1), (64, 8, 3)])
def test_a_whole_step_is_within_one_percent(tiny: LoadedModels, size: int, cutn: int, jobs: int) -> None:
    counted = _step_counted(tiny, size, cutn, jobs)
    flops = step_flops(tiny, size, cutn, jobs)
    assert flops.total <= counted <= 1.01 * flops.total  # what is left out only adds
    assert flops.per_job * jobs == flops.total
    assert step_flops(tiny, size, cutn, 1).total * jobs == flops.total


@pytest.mark.slow
def test_the_imagenet_architecture_matches_the_counter() -> None:
    models = build_random("imagenet-16384", "cpu", seed=0)  # ViT-B/32 and the f16 decoder, random weights
    clip, decoder = _networks(models, COUNTABLE, 1, 4, 2)
    assert clip == clip_image_flops(models, 2).forward_backward
    assert decoder == decoder_flops(models, 1, 4, 4).forward_backward
    # Published figures: ViT-B/32 about 8.8 GFLOP per 224x224 cutout forward, the decoder about 16 at 64x64.
    assert clip_image_flops(models, 1).forward == pytest.approx(8.8e9, rel=0.03)
    assert decoder_flops(models, 1, 4, 4).forward == pytest.approx(16e9, rel=0.1)
    counted = _step_counted(models, 64, 2, 1)
    assert step_flops(models, 64, 2).total <= counted <= 1.001 * step_flops(models, 64, 2).total
