"""The engine's CUDA branches, run on this CPU wherever torch allows it.

`EngineOptions.resolve` is asked what it would choose on an H100 (native bf16) and on the original API's
T4 (no native bf16: fp16 with the fixed loss scale); those choices, minus torch.compile (tested on its own
below) and cuDNN autotuning (nothing to tune on a CPU), run here on the `tiny` preset.

Tolerances (tiny preset, CPU, same seed, against the plain fp32 engine; measured values in brackets):
- fp16 with the loss scale: loss curves within 1% on average (0.004%), and z's gradient after the first
  step within 5% in norm (1%); a missing unscale would leave it 256 times too large.
- the H100 choice (bf16, fused attention, channels_last, cached weights): loss curves within 1% on
  average (0.09%); its fused attention and the CPU's two-matmul attention within 2% of the largest
  embedding value of each other and of fp32 (0.5%).
- torch.compile (inductor, C++ on this CPU) against eager, fp32: CLIP's and the decoder's outputs and
  input gradients within 1e-4 of their largest value (5e-6).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from worker.engine import GenerationConfig, Painter
from worker.models import TINY_SEED, LoadedModels, build_random
from worker.runtime import FP16_LOSS_SCALE, EngineOptions, ResolvedOptions, engine_runtime

CUDA = torch.device("cuda")
H100 = EngineOptions().resolve(CUDA, native_bf16=True)
T4 = EngineOptions().resolve(CUDA, native_bf16=False)
FP32_COMPILED = EngineOptions(precision="fp32", compile="on")


def _on_cpu(resolved: ResolvedOptions) -> ResolvedOptions:
    """A CUDA choice as this CPU can run it: no compilation, no cuDNN."""
    return replace(resolved, compile=False, cudnn_benchmark=False)


def _painter(models: LoadedModels, options: EngineOptions | ResolvedOptions, steps: int = 6) -> Painter:
    config = GenerationConfig("a red fox|blue:0.5", width=32, height=32, iterations=steps, cutn=4, seed=5)
    return Painter(models, config, options)


def _losses(painter: Painter) -> list[float]:
    return [painter.step().loss for _ in range(painter.config.iterations)]


def _mean_relative(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True)) / len(a)


# --- what resolve() chooses on CUDA --------------------------------------------------------------


def test_on_a_bf16_gpu_everything_is_on_with_fused_attention() -> None:
    assert (
        ResolvedOptions(
            dtype=torch.bfloat16,
            channels_last=True,
            fast_clip=True,
            weight_cache=True,
            compile=True,
            cudnn_benchmark=True,
            math_attention=False,
        )
        == H100
    )
    assert H100.describe() == (
        "precision bf16, channels_last on, fast_clip on, weight_cache on, compile on, "
        "cudnn_benchmark on, math_attention off"
    )


def test_a_gpu_without_native_bf16_gets_fp16_and_an_explicit_choice_is_honoured() -> None:
    assert T4.dtype == torch.float16 and T4.compile and not T4.math_attention
    assert EngineOptions(precision="fp16").resolve(CUDA, native_bf16=True).dtype == torch.float16
    assert EngineOptions(precision="fp32").resolve(CUDA, native_bf16=True).dtype == torch.float32
    off = EngineOptions(compile="off", cudnn_benchmark=False, channels_last="off").resolve(CUDA, True)
    assert not (off.compile or off.cudnn_benchmark or off.channels_last)
    assert EngineOptions.off().resolve(CUDA, native_bf16=True) == EngineOptions.off().resolve(
        torch.device("cpu"), native_bf16=True
    )


def test_on_cpu_the_choice_follows_native_bf16() -> None:
    cpu = torch.device("cpu")
    assert EngineOptions().resolve(cpu, native_bf16=False).dtype == torch.float32
    with_bf16 = EngineOptions().resolve(cpu, native_bf16=True)
    assert with_bf16.dtype == torch.bfloat16 and with_bf16.math_attention and not with_bf16.compile
    # fp16 stays refused on a CPU however it is asked for: only resolved CUDA choices run it here.
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        EngineOptions(precision="fp16").resolve(cpu, native_bf16=True)


# --- the CUDA choices, run on this CPU -----------------------------------------------------------


def test_fp16_with_the_loss_scale_agrees_with_fp32(tiny_models: LoadedModels) -> None:
    fp16 = _painter(tiny_models, _on_cpu(T4))
    assert fp16.runtime.loss_scale == FP16_LOSS_SCALE
    assert fp16.runtime.options.dtype == torch.float16
    fp32 = _painter(tiny_models, EngineOptions.off())
    assert fp32.runtime.loss_scale == 1.0

    first16, first32 = fp16.step(), fp32.step()
    g16, g32 = fp16.z.grad, fp32.z.grad
    assert g16 is not None and g32 is not None and torch.isfinite(g16).all()
    # z's gradient is unscaled before Adam: the same gradient as fp32's, to fp16's precision.
    assert (g16 - g32).norm() / g32.norm() < 0.05
    rest16 = [fp16.step().loss for _ in range(5)]
    rest32 = [fp32.step().loss for _ in range(5)]
    curve16, curve32 = [first16.loss, *rest16], [first32.loss, *rest32]
    assert _mean_relative(curve32, curve16) < 0.01
    assert curve16 != curve32  # fp16 really ran: close, not equal


def test_the_h100_choice_agrees_with_fp32(tiny_models: LoadedModels) -> None:
    gpu_like = _painter(tiny_models, _on_cpu(H100))
    assert gpu_like.runtime.options.dtype == torch.bfloat16 and not gpu_like.runtime.options.math_attention
    fp32 = _painter(tiny_models, EngineOptions.off())
    a, b = _losses(fp32), _losses(gpu_like)
    assert _mean_relative(a, b) < 0.01
    assert a != b


def test_fused_and_math_attention_agree_in_bf16(tiny_models: LoadedModels) -> None:
    fused = engine_runtime(tiny_models, _on_cpu(H100))
    math = engine_runtime(tiny_models, replace(_on_cpu(H100), math_attention=True))
    assert fused is not math
    cutouts = torch.rand(
        4, 3, tiny_models.clip_size, tiny_models.clip_size, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        a, b = fused.encode_image(cutouts), math.encode_image(cutouts)
        exact = engine_runtime(tiny_models, EngineOptions.off()).encode_image(cutouts)
    assert (a - b).abs().max() <= 0.02 * exact.abs().max()
    assert (a - exact).abs().max() <= 0.02 * exact.abs().max()


# --- torch.compile on this CPU ---------------------------------------------------------------------


def _inputs(models: LoadedModels) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs shaped, strided and requiring grad as in a step of `_painter` (one compile serves both)."""
    g = torch.Generator().manual_seed(2)
    cutouts = torch.rand(4, 3, models.clip_size, models.clip_size, generator=g).requires_grad_(True)
    # the quantiser's output is a movedim of (N, h, w, C): NHWC-strided
    channels = models.vqgan.codebook.shape[1]
    z_q = torch.randn(1, 2, 2, channels, generator=g).movedim(3, 1).requires_grad_(True)
    return cutouts, z_q


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return bool((a - b).abs().max() <= tol * b.abs().max())


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compiled_clip_and_decoder_equal_eager(tiny_models: LoadedModels) -> None:
    compiled = engine_runtime(tiny_models, FP32_COMPILED)
    eager = engine_runtime(tiny_models, replace(compiled.options, compile=False))
    assert compiled.options.compile and compiled is not eager
    results = []
    for runtime in (compiled, eager):
        cutouts, z_q = _inputs(tiny_models)
        embeds, pictures = runtime.encode_image(cutouts), runtime.decode(z_q)
        (embeds.square().sum() + pictures.square().sum()).backward()
        assert cutouts.grad is not None and z_q.grad is not None
        results.append((embeds.detach(), pictures.detach(), cutouts.grad, z_q.grad))
    assert compiled.compile_error is None and set(compiled._compiled) == {"clip", "decoder"}
    for got, want in zip(*results, strict=True):
        assert _close(got, want)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_failed_compile_falls_back_to_eager_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    models = build_random("tiny", "cpu", seed=TINY_SEED)  # a runtime of its own, not tiny_models'
    runtime = engine_runtime(models, FP32_COMPILED)
    eager = engine_runtime(models, replace(runtime.options, compile=False))
    cutouts, _ = _inputs(models)
    # A machine without a C++ compiler: inductor's CPU backend fails, as it would there. Nothing cached
    # may stand in for the compiler, and nothing compiled earlier in this process may be reused.
    torch._dynamo.reset()
    with (
        inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}),
        functorch_config.patch({"enable_autograd_cache": False}),
        caplog.at_level(logging.WARNING, logger="worker.runtime"),
    ):
        out = runtime.encode_image(cutouts)
    assert runtime.compile_error is not None and "C++ compiler" in runtime.compile_error
    assert _close(out, eager.encode_image(cutouts))  # the step went on, eagerly
    ours = [r.getMessage() for r in caplog.records if r.name == "worker.runtime"]
    assert len(ours) == 1 and "runs eagerly" in ours[0] and "C++ compiler" in ours[0]
    assert "compile FAILED, running eagerly" in runtime.describe()
    assert "compile on" not in runtime.describe()
    # From then on nothing is compiled: the decoder runs eagerly without another attempt.
    _, z_q = _inputs(models)
    with caplog.at_level(logging.WARNING, logger="worker.runtime"):
        runtime.decode(z_q)
    assert set(runtime._compiled) == {"clip"}
    assert [r.getMessage() for r in caplog.records if r.name == "worker.runtime"] == ours


@pytest.mark.slow
def test_running_out_of_device_memory_is_not_taken_for_a_compile_failure() -> None:
    runtime = engine_runtime(build_random("tiny", "cpu", seed=TINY_SEED), FP32_COMPILED)

    def full(x: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        runtime._maybe_compiled("full", full, torch.ones(2))
    assert runtime.compile_error is None and "compile on" in runtime.describe()
