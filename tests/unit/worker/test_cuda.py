"""The engine on a GPU: the tests `bench/gpu.py` runs first on the GPU machine.

They run on the device `ARTGEN_TEST_DEVICE` names (default `cuda`) and are skipped where it is absent.
`ARTGEN_TEST_DEVICE=cpu` runs them here, as `bench/gpu.py --dry-run` does, so they are known to work
before a GPU is lent; `test_runtime.py` runs the CUDA choices on this CPU in the normal suite.
Tolerances are those of test_speed.py and test_runtime.py: loss curves within 1% of fp32 on average,
z's first gradient within 5% in norm, batched jobs' losses within 2e-3 of solo ones.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from worker.batching import DeviceMemory, MemoryBudget
from worker.engine import BatchPainter, GenerationConfig, Painter
from worker.models import TINY_SEED, LoadedModels, build_random, resolve_device
from worker.runtime import EngineOptions, ResolvedOptions, cpu_has_native_bf16, cuda_has_native_bf16

DEVICE = torch.device(os.environ.get("ARTGEN_TEST_DEVICE", "cuda"))

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE.type == "cuda" and not torch.cuda.is_available(),
        reason="no CUDA here (ARTGEN_TEST_DEVICE=cpu runs these on the CPU)",
    ),
]


@pytest.fixture(scope="module")
def models() -> LoadedModels:
    return build_random("tiny", DEVICE, seed=TINY_SEED)


def _default() -> ResolvedOptions:
    """What the worker runs on this device, compiled or not as the test says (compiling has its own test)."""
    return replace(EngineOptions().resolve(DEVICE), compile=False)


def _painter(models: LoadedModels, options: EngineOptions | ResolvedOptions, seed: int = 5) -> Painter:
    config = GenerationConfig("a red fox|blue:0.5", width=32, height=32, iterations=6, cutn=4, seed=seed)
    return Painter(models, config, options)


def _losses(painter: Painter) -> list[float]:
    return [painter.step().loss for _ in range(painter.config.iterations)]


def _mean_relative(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True)) / len(a)


def test_the_device_is_what_auto_picks() -> None:
    assert resolve_device(DEVICE.type).type == DEVICE.type
    assert resolve_device("auto").type == DEVICE.type


def test_the_defaults_for_this_device() -> None:
    options = EngineOptions().resolve(DEVICE)
    if DEVICE.type == "cuda":
        major, _ = torch.cuda.get_device_capability(DEVICE)
        assert cuda_has_native_bf16(DEVICE) == (major >= 8)
        assert options.dtype == (torch.bfloat16 if major >= 8 else torch.float16)
        assert options.compile and options.cudnn_benchmark and not options.math_attention
    else:
        assert options.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
        assert not options.compile and not options.cudnn_benchmark
    assert options.channels_last and options.fast_clip


def test_the_default_engine_agrees_with_fp32(models: LoadedModels) -> None:
    fast, plain = _painter(models, _default()), _painter(models, EngineOptions.off())
    a, b = _losses(plain), _losses(fast)
    assert _mean_relative(a, b) < 0.01


def test_fp16_with_the_loss_scale_agrees_with_fp32(models: LoadedModels) -> None:
    fp16 = EngineOptions(precision="fp16").resolve(torch.device("cuda"), native_bf16=True)
    fp16 = replace(fp16, compile=False, cudnn_benchmark=DEVICE.type == "cuda")
    half, plain = _painter(models, fp16), _painter(models, EngineOptions.off())
    assert half.runtime.loss_scale > 1
    first_half, first_plain = half.step(), plain.step()
    g16, g32 = half.z.grad, plain.z.grad
    assert g16 is not None and g32 is not None and torch.isfinite(g16).all()
    assert (g16 - g32).norm() / g32.norm() < 0.05
    a = [first_plain.loss] + [plain.step().loss for _ in range(5)]
    b = [first_half.loss] + [half.step().loss for _ in range(5)]
    assert _mean_relative(a, b) < 0.01


@pytest.mark.skipif(DEVICE.type != "cuda", reason="compiling on the CPU is test_runtime.py's")
@pytest.mark.timeout(600)
def test_the_compiled_engine_agrees_with_eager(models: LoadedModels) -> None:
    compiled = _painter(models, EngineOptions().resolve(DEVICE))
    eager = _painter(models, _default())
    a, b = _losses(eager), _losses(compiled)
    assert compiled.runtime.compile_error is None, compiled.runtime.describe()
    assert set(compiled.runtime._compiled) == {"clip", "decoder"}
    assert _mean_relative(a, b) < 0.01


def test_batched_jobs_agree_with_solo_jobs(models: LoadedModels) -> None:
    solo = [_painter(models, _default(), seed) for seed in (1, 2)]
    alone = [[p.step().loss for _ in range(3)] for p in solo]
    together = BatchPainter(models, [_painter(models, _default(), seed) for seed in (1, 2)])
    rounds = [[info.loss for info in together.step()] for _ in range(3)]
    for i, losses in enumerate(alone):
        assert [r[i] for r in rounds] == pytest.approx(losses, rel=2e-3, abs=2e-3)


def test_the_memory_reader_sees_an_allocation() -> None:
    reader = DeviceMemory(DEVICE)
    before = reader.in_use()
    block = torch.ones(64, 2**20, dtype=torch.uint8, device=DEVICE)  # 64 MiB, written
    assert reader.in_use() - before >= 60 * 2**20
    assert reader.peak() >= reader.in_use() and reader.limit() > reader.in_use()
    if DEVICE.type == "cuda":
        total = torch.cuda.get_device_properties(DEVICE).total_memory
        assert reader.limit() >= 0.9 * total
        del block
        reader.reset()
        assert reader.peak() == reader.in_use() < before + 2**20


def test_the_budget_measures_a_real_step(models: LoadedModels) -> None:
    budget = MemoryBudget(0.8, DeviceMemory(DEVICE))
    painter = _painter(models, _default())
    shape = ("tiny", 32, 32)
    budget.start_batch()
    budget.before_step()
    painter.step()
    budget.after_step(shape, 4)
    assert shape in budget.per_cutout
    if DEVICE.type == "cuda":
        assert budget.per_cutout[shape] > 0  # the step's activations, above the models
        assert budget.fits(shape, 4)  # the tiny model's jobs fit many times over on any GPU
