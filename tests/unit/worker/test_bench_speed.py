"""bench/speed.py's FLOP count and matmul ceiling: what says whether batching can pay on a device."""

from __future__ import annotations

import torch

from bench.speed import _step_flops, matmul_ceiling
from worker.engine import BatchPainter, GenerationConfig, Painter
from worker.models import LoadedModels


def test_step_flops_counts_a_matmul_forward_and_backward() -> None:
    a = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(16, 4)

    def step() -> None:
        (a @ b).sum().backward()

    # forward 2*8*16*4; backward only needs the input's gradient: one more product of the same size
    assert _step_flops(step) == 2 * (2 * 8 * 16 * 4)


def test_a_batch_does_the_same_flops_per_job_as_one_job(tiny_models: LoadedModels) -> None:
    def painter(seed: int) -> Painter:
        config = GenerationConfig("a red picture", width=32, height=32, iterations=10, cutn=4, seed=seed)
        return Painter(tiny_models, config)

    one = _step_flops(BatchPainter(tiny_models, [painter(0)]).step)
    three = _step_flops(BatchPainter(tiny_models, [painter(s) for s in range(3)]).step)
    assert one > 0
    assert three == 3 * one


def test_matmul_ceiling_is_a_plausible_rate() -> None:
    rate = matmul_ceiling(torch.device("cpu"), torch.float32, n=128, repeats=3)
    assert 1e8 < rate < 1e15  # FLOP/s: above a 1990s CPU, below any machine that exists
