"""The engine's speed-ups agree with the plain fp32 engine, and batched painters with solo ones.

Tolerances (tiny preset, CPU, same seed):
- every optimisation off reproduces the fp32 fast path to within 1/255 per pixel (exact here);
- bf16 against fp32: the loss curves differ by less than 1% on average (measured: about 0.1%);
- a painter in a BatchPainter against the same painter alone: at most 2/255 per pixel after all steps
  (measured: identical) and losses within 1e-5 (relative or absolute) in fp32, 2e-3 in bf16
  (batched kernels may round differently).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shared.settings import Settings
from worker.engine import BatchPainter, GenerationConfig, Painter, StepInfo
from worker.models import LoadedModels
from worker.runtime import (
    EngineOptions,
    ResolvedOptions,
    _fold_constants,
    _vit_forward,
    cpu_has_native_bf16,
    engine_runtime,
)

BF16 = EngineOptions(precision="bf16")
FP32_FAST = EngineOptions(precision="fp32")


def _config(**overrides: object) -> GenerationConfig:
    base: dict[str, object] = {
        "prompts": "a red fox|blue:0.5",
        "width": 32,
        "height": 32,
        "iterations": 4,
        "cutn": 4,
        "seed": 5,
    }
    base.update(overrides)
    return GenerationConfig(**base)  # type: ignore[arg-type]


def _pixels(painter: Painter) -> np.ndarray:
    return np.asarray(painter.image(), dtype=np.int16)


def _run(
    models: LoadedModels, options: EngineOptions, steps: int, **overrides: object
) -> tuple[list[float], Painter]:
    painter = Painter(models, _config(iterations=steps, **overrides), options)
    return [painter.step().loss for _ in range(steps)], painter


# --- options ----------------------------------------------------------------------------------------


def test_auto_resolves_to_the_fast_choice_for_this_cpu() -> None:
    auto = EngineOptions().resolve(torch.device("cpu"))
    assert auto.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert auto.fast_clip and auto.channels_last and not auto.compile and not auto.cudnn_benchmark
    off = EngineOptions.off().resolve(torch.device("cpu"))
    assert off == ResolvedOptions(torch.float32, False, False, False, False, False)


def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        EngineOptions(precision="fp16").resolve(torch.device("cpu"))


def test_options_come_from_settings() -> None:
    settings = Settings(engine_precision="fp32", engine_fast_clip=False, engine_compile="off")
    options = EngineOptions.from_settings(settings)
    assert options.precision == "fp32" and not options.fast_clip and options.compile == "off"
    assert options.weight_cache and options.channels_last == "auto"


def test_runtime_is_built_once_per_models_and_options(tiny_models: LoadedModels) -> None:
    assert engine_runtime(tiny_models, BF16) is engine_runtime(tiny_models, BF16)
    assert engine_runtime(tiny_models, BF16) is not engine_runtime(tiny_models, EngineOptions.off())
    codebook = tiny_models.vqgan.codebook
    assert torch.equal(engine_runtime(tiny_models).codebook_sq, codebook.pow(2).sum(1))


# --- agreement with the plain engine -----------------------------------------------------------------


def test_fast_vit_equals_clip_encode_image(tiny_models: LoadedModels) -> None:
    x = torch.rand(
        3, 3, tiny_models.clip_size, tiny_models.clip_size, generator=torch.Generator().manual_seed(0)
    )
    visual = tiny_models.clip.visual
    with torch.no_grad():
        expected = tiny_models.clip.encode_image(x)
        weights = dict(visual.named_parameters())
        assert torch.allclose(_vit_forward(visual, weights, x, math_attention=False), expected, atol=1e-5)
        assert torch.allclose(_vit_forward(visual, weights, x, math_attention=True), expected, atol=1e-5)
        # QuickGELU and the attention scale folded into the weights: the same function, to rounding.
        folded = _fold_constants(weights, visual.transformer.resblocks[0].attn.num_heads)
        for name in ("mlp.c_fc.weight", "attn.in_proj_weight"):  # (biases start at zero here)
            key = f"transformer.resblocks.0.{name}"
            assert not torch.equal(folded[key], weights[key]), key
        for attention in (True, False):
            out = _vit_forward(visual, folded, x, math_attention=attention, folded=True)
            assert torch.allclose(out, expected, atol=1e-5), attention
        # Unfolded weights with folded=True would be a different function: the check above can fail.
        assert not torch.allclose(
            _vit_forward(visual, weights, x, math_attention=True, folded=True), expected
        )


def test_all_off_matches_the_fp32_fast_path(tiny_models: LoadedModels) -> None:
    off_losses, off = _run(tiny_models, EngineOptions.off(), 3)
    fast_losses, fast = _run(tiny_models, FP32_FAST, 3)
    assert np.abs(_pixels(off) - _pixels(fast)).max() <= 1
    assert fast_losses == pytest.approx(off_losses, rel=1e-5)


def test_bf16_loss_curve_stays_close_to_fp32(tiny_models: LoadedModels) -> None:
    fp32, _ = _run(tiny_models, EngineOptions.off(), 6)
    bf16, _ = _run(tiny_models, BF16, 6)
    relative = [abs(a - b) / abs(a) for a, b in zip(fp32, bf16, strict=True)]
    assert sum(relative) / len(relative) < 0.01
    assert fp32 != bf16  # bf16 really ran: the curves are close, not equal


# --- several jobs at once ----------------------------------------------------------------------------


_JOBS: list[dict[str, object]] = [
    {"prompts": "a fox", "seed": 1},
    {"prompts": "dog|cat:-1", "seed": 2, "cutn": 3},
    {"prompts": "sea", "seed": 3, "init_weight": 0.5},
]


def _job(models: LoadedModels, options: EngineOptions, job: dict[str, object], steps: int) -> Painter:
    extra: dict[str, object] = dict(job)
    if "init_weight" in extra:
        extra["init_image"] = Image.new("RGB", (40, 40), (200, 30, 90))
    return Painter(models, _config(iterations=steps, **extra), options)


@pytest.mark.parametrize(
    ("options", "tol", "jobs"),
    # bf16 on the first two jobs only: each new batch shape costs oneDNN a kernel build of seconds.
    [(EngineOptions.off(), 1e-5, _JOBS), (BF16, 2e-3, _JOBS[:2])],
    ids=["fp32", "bf16"],
)
def test_batched_jobs_equal_solo_jobs(
    tiny_models: LoadedModels, options: EngineOptions, tol: float, jobs: list[dict[str, object]]
) -> None:
    steps = 3
    solo = []
    for job in jobs:
        painter = _job(tiny_models, options, job, steps)
        solo.append(([painter.step() for _ in range(steps)], _pixels(painter)))
    painters = [_job(tiny_models, options, job, steps) for job in jobs]
    batch = BatchPainter(tiny_models, painters)
    history: list[list[StepInfo]] = [[] for _ in painters]
    for _ in range(steps):
        for seen, info in zip(history, batch.step(), strict=True):
            seen.append(info)
    for (alone, pixels), painter, together in zip(solo, painters, history, strict=True):
        assert np.abs(_pixels(painter) - pixels).max() <= 2
        assert [i.loss for i in together] == pytest.approx([i.loss for i in alone], rel=tol, abs=tol)
        assert [i.iteration for i in together] == [1, 2, 3]
        assert len(together[0].losses) == len(alone[0].losses)
        assert (together[0].init_loss is None) == (alone[0].init_loss is None)
    assert history[0][0].image().size == (32, 32)


def test_jobs_join_and_leave_a_batch(tiny_models: LoadedModels) -> None:
    options, steps = EngineOptions.off(), 4
    reference = []
    for job in _JOBS[:2]:
        painter = _job(tiny_models, options, job, steps)
        for _ in range(steps):
            painter.step()
        reference.append(_pixels(painter))
    first, second = (_job(tiny_models, options, job, steps) for job in _JOBS[:2])
    second.step()  # the second job started alone; it joins at its own iteration 1
    batch = BatchPainter(tiny_models, [first])
    batch.step()
    batch.add(second)
    infos = batch.step()
    assert [i.iteration for i in infos] == [2, 2]
    batch.remove(first)  # e.g. canceled: the other goes on
    batch.step()
    assert second.iteration == 3
    batch.add(first)
    batch.step()
    assert first.iteration == 3 and second.iteration == 4
    with pytest.raises(ValueError, match="finished"):
        batch.step()
    batch.remove(second)
    batch.step()
    assert np.abs(_pixels(first) - reference[0]).max() <= 2
    assert np.abs(_pixels(second) - reference[1]).max() <= 2


def test_batch_refuses_incompatible_painters(tiny_models: LoadedModels) -> None:
    batch = BatchPainter(tiny_models, [Painter(tiny_models, _config(), EngineOptions.off())])
    with pytest.raises(ValueError, match="size"):
        batch.add(Painter(tiny_models, _config(width=48), EngineOptions.off()))
    with pytest.raises(ValueError, match="engine options"):
        batch.add(Painter(tiny_models, _config(), BF16))
    with pytest.raises(ValueError, match="not in the batch"):
        batch.remove(Painter(tiny_models, _config(), EngineOptions.off()))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compiled_engine_agrees_with_eager(tiny_models: LoadedModels) -> None:
    # torch.compile takes minutes on a busy 2-core CPU even for `tiny`; a failed compile falls back to eager
    # with a warning, so also check that the compiled functions were really used.
    eager, _ = _run(tiny_models, FP32_FAST, 2)
    compiled, painter = _run(tiny_models, EngineOptions(precision="fp32", compile="on"), 2)
    assert painter.runtime.compile_error is None and set(painter.runtime._compiled) == {"clip", "decoder"}
    assert compiled == pytest.approx(eager, rel=1e-4)
