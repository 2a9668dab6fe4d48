"""How the engine runs its networks fast: precision, memory layout, cached weights, compilation.

`EngineOptions` says which speed-ups are on (each can be switched off for comparison; `EngineOptions.off()`
turns them all off and reproduces the plain fp32 engine bit for bit). `engine_runtime(models, options)`
resolves them for the models' device once and keeps what they need (low-precision weight copies, the
codebook's squared norms, compiled functions) beside the models, so every Painter of a worker shares it.

What the step spends its time on (profiled on a 2-core AVX-512 CPU, imagenet-16384 architecture,
128x128, 32 cutouts, fp32): CLIP ViT-B/32 forward+backward over the cutouts about 75% (matmuls 60%,
the rest copies/casts around nn.MultiheadAttention and QuickGELU), the VQGAN decoder forward+backward
about 18%, cutout sampling, quantisation, loss and Adam the remaining few percent. Hence: bf16 for CLIP
and the decoder, a batch-first ViT forward over CLIP's own weights (no per-layer layout copies), and
weights cast once instead of on every call.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from shared.settings import Settings
    from worker.models import LoadedModels

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Switch = Literal["auto", "on", "off"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# fp16 gradients through CLIP can underflow; a fixed scale keeps them representable (Adam is
# scale-invariant, and z's gradient is unscaled before the step), with no per-step inf check (a sync).
FP16_LOSS_SCALE = 256.0


@dataclass(frozen=True)
class EngineOptions:
    """Speed-ups of the engine; "auto" picks the fast choice for the device (see `resolve`)."""

    precision: Precision = "auto"  # autocast dtype for CLIP and the decoder; z, Adam and losses stay fp32
    channels_last: Switch = "auto"  # NHWC decoder convolutions with NHWC weights, cached (auto: on)
    fast_clip: bool = True  # batch-first ViT forward over CLIP's own weights (same maths, fewer copies)
    weight_cache: bool = True  # low-precision weight copies made once, not cast on every call
    compile: Switch = "auto"  # torch.compile CLIP and the decoder (auto: CUDA only; ~40 s per shape on CPU)
    cudnn_benchmark: bool = True  # cuDNN autotuning (CUDA only)

    @classmethod
    def off(cls) -> EngineOptions:
        """Every optimisation off: the plain fp32 engine, for comparison."""
        return cls(
            precision="fp32",
            channels_last="off",
            fast_clip=False,
            weight_cache=False,
            compile="off",
            cudnn_benchmark=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineOptions:
        """The options the `ARTGEN_ENGINE_*` settings ask for."""
        return cls(
            precision=settings.engine_precision,
            channels_last=settings.engine_channels_last,
            fast_clip=settings.engine_fast_clip,
            weight_cache=settings.engine_weight_cache,
            compile=settings.engine_compile,
            cudnn_benchmark=settings.engine_cudnn_benchmark,
        )

    def resolve(self, device: torch.device, native_bf16: bool | None = None) -> ResolvedOptions:
        """Concrete choices for `device`; an explicit request the device cannot honour is an error.

        `native_bf16`: whether the device computes bf16 in hardware; None asks the device. The tests pass it
        to resolve for a CUDA device this machine does not have (an H100, a T4) and run the result here.
        """
        cuda = device.type == "cuda"
        if native_bf16 is None:
            native_bf16 = cuda_has_native_bf16(device) if cuda else cpu_has_native_bf16()
        if self.precision == "auto":
            if cuda:
                dtype = torch.bfloat16 if native_bf16 else torch.float16
            else:
                dtype = torch.bfloat16 if native_bf16 else torch.float32
        else:
            dtype = _DTYPES[self.precision]
        if dtype == torch.float16 and not cuda:
            raise ValueError("precision fp16 is for CUDA; on CPU use bf16 or fp32")
        return ResolvedOptions(
            dtype=dtype,
            # On CPU too: the quantiser's output (a movedim) is NHWC-strided, so the convolutions run NHWC
            # either way; off, each copies its kernel into that layout on every call, forward and backward.
            channels_last=self.channels_last != "off",
            fast_clip=self.fast_clip,
            weight_cache=self.weight_cache and dtype != torch.float32,
            compile=self.compile == "on" or (self.compile == "auto" and cuda),
            cudnn_benchmark=self.cudnn_benchmark and cuda,
            # CPU in low precision: two small batched matmuls beat the flash kernel at CLIP's 50 tokens.
            # CUDA: scaled_dot_product_attention's fused kernels.
            math_attention=not cuda and dtype != torch.float32,
        )


@dataclass(frozen=True)
class ResolvedOptions:
    dtype: torch.dtype
    channels_last: bool
    fast_clip: bool
    weight_cache: bool
    compile: bool
    cudnn_benchmark: bool
    math_attention: bool = False  # CLIP's attention as two batched matmuls instead of the fused kernel

    @property
    def precision(self) -> str:
        return {v: k for k, v in _DTYPES.items()}[self.dtype]

    def describe(self) -> str:
        flags = ("channels_last", "fast_clip", "weight_cache", "compile", "cudnn_benchmark", "math_attention")
        return f"precision {self.precision}, " + ", ".join(
            f"{k} {'on' if getattr(self, k) else 'off'}" for k in flags
        )


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (avx512_bf16 or AMX); elsewhere bf16 is emulated, slow."""
    cpuinfo = Path("/proc/cpuinfo")
    if not sys.platform.startswith("linux") or not cpuinfo.exists():
        return False
    flags = set(cpuinfo.read_text().split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether this GPU has bf16 tensor cores (compute capability 8.0, Ampere, and later). Not
    `torch.cuda.is_bf16_supported()`, which also says yes where bf16 is only emulated (a T4), and slow."""
    return torch.cuda.get_device_capability(device)[0] >= 8


# ------------------------------------------------------------------------------------------------
# CLIP's vision transformer, batch-first
# ------------------------------------------------------------------------------------------------


def _vit_forward(
    visual: nn.Module,
    weights: dict[str, torch.Tensor],
    x: torch.Tensor,
    math_attention: bool,
    folded: bool = False,
) -> torch.Tensor:
    """clip.model.VisionTransformer.forward over `weights` (its own parameters, maybe cast), batch-first.

    Same maths as CLIP's module; it skips nn.MultiheadAttention's NLD<->LND permutes, packed-projection
    reshapes and LayerNorm's dtype round trips, which cost as much as the attention itself on CPU.
    `folded`: the weights come from `_fold_constants`: the attention scale is in the query projection and
    the MLP's activation is one SiLU kernel.
    """
    w = weights
    n, channels, side = x.shape[0], x.shape[1], x.shape[-1]
    kernel = w["conv1.weight"]  # (E, 3, p, p)
    e, patch = kernel.shape[0], kernel.shape[-1]
    grid = side // patch
    # The patch embedding, a conv with stride = kernel size, as one matmul over the cut-up picture: the
    # same sums, but its backward is a matmul too. On CPU the conv's input gradient (a strided transposed
    # conv) took 11x its forward: 305 ms a step at 32 cutouts (bf16, one thread), 16 ms as a matmul.
    patches = x.reshape(n, channels, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    x = patches.reshape(n, grid * grid, channels * patch * patch) @ kernel.reshape(e, -1).T  # (n, g*g, E)
    cls = w["class_embedding"].to(x.dtype).expand(n, 1, e)
    x = torch.cat([cls, x], 1) + w["positional_embedding"].to(x.dtype)  # (n, L, E)
    x = F.layer_norm(x, (e,), w["ln_pre.weight"], w["ln_pre.bias"])
    blocks = visual.transformer.resblocks
    heads = blocks[0].attn.num_heads
    length, head_dim = x.shape[1], e // heads
    for i in range(len(blocks)):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (e,), w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = F.linear(h, w[p + "attn.in_proj_weight"], w[p + "attn.in_proj_bias"])  # (n, L, 3E)
        q, k, v = qkv.view(n, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (n, H, L, d)
        if math_attention:
            # CPU bf16: two small batched matmuls beat the flash kernel for L = 50. The softmax stays in
            # bf16: the CPU kernel accumulates in fp32 and its output is rounded to bf16 for the matmul
            # anyway, so casting (n, H, L, L) up and back, forward and backward, bought nothing.
            scores = q @ k.transpose(-1, -2)  # (n, H, L, L)
            a = (scores if folded else scores * head_dim**-0.5).softmax(-1) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v, scale=1.0 if folded else None)
        a = a.transpose(1, 2).reshape(n, length, e)
        x = x + F.linear(a, w[p + "attn.out_proj.weight"], w[p + "attn.out_proj.bias"])
        h = F.layer_norm(x, (e,), w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = F.linear(h, w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"])
        h = F.silu(h) if folded else h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + F.linear(h, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"])
    x = F.layer_norm(x[:, 0], (e,), w["ln_post.weight"], w["ln_post.bias"])
    return x @ w["proj"] if "proj" in w else x  # (n, D)


def _is_plain_vit(visual: nn.Module) -> bool:
    """CLIP's VisionTransformer without attention masks: what `_vit_forward` reproduces."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    conv1 = getattr(visual, "conv1", None)
    return (
        type(visual).__name__ == "VisionTransformer"
        and blocks is not None
        and all(getattr(b, "attn_mask", None) is None for b in blocks)
        and isinstance(conv1, nn.Conv2d)
        and conv1.stride == conv1.kernel_size  # non-overlapping patches: what the matmul form computes
        and conv1.padding == (0, 0)
        and conv1.bias is None
    )


def _fold_constants(weights: dict[str, torch.Tensor], heads: int) -> dict[str, torch.Tensor]:
    """CLIP's ViT weights (fp32 copies) with two constant multiplications folded in, for `folded=True`.

    - QuickGELU: c_proj(QuickGELU(c_fc(x))) = c_proj'(SiLU(c_fc'(x))), since QuickGELU(u) = u sigmoid(1.702 u)
      = SiLU(1.702 u) / 1.702: c_fc is scaled by 1.702 (weight and bias), c_proj's weight divided by it.
      One fused SiLU kernel forward and one backward replace three elementwise kernels forward and about
      six backward, per layer.
    - The attention scale 1/sqrt(head_dim) moves into the query rows of the packed input projection
      (weight and bias): the scores (n, H, L, L) are no longer multiplied, forward or backward. For
      head_dim 64 the scale is 1/8, a power of two, so the folded weights are exact.
    """
    out = dict(weights)
    for name in weights:
        if name.endswith("mlp.c_fc.weight") or name.endswith("mlp.c_fc.bias"):
            out[name] = weights[name] * 1.702
        elif name.endswith("mlp.c_proj.weight"):
            out[name] = weights[name] / 1.702
        elif name.endswith("attn.in_proj_weight") or name.endswith("attn.in_proj_bias"):
            width = weights[name].shape[0] // 3
            scale = torch.ones(3 * width, dtype=weights[name].dtype)
            scale[:width] = (width // heads) ** -0.5
            out[name] = weights[name] * (scale[:, None] if weights[name].dim() == 2 else scale)
    return out


def _cast_matrices(params: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Parameters with matrices and conv kernels in `dtype`; norms and biases stay fp32."""
    return {
        name: p.detach().to(dtype) if p.dim() >= 2 and name != "positional_embedding" else p.detach()
        for name, p in params.items()
    }


# ------------------------------------------------------------------------------------------------
# The runtime: what one (models, options) pair needs, built once
# ------------------------------------------------------------------------------------------------


@dataclass
class EngineRuntime:
    """The networks' forward passes as the options want them; shared by every Painter of these models."""

    models: LoadedModels
    options: ResolvedOptions
    codebook_sq: torch.Tensor  # (K,) ||codebook row||^2, constant: the codebook is frozen
    _clip_weights: dict[str, torch.Tensor] | None = None
    _folded: bool = False  # _clip_weights come from _fold_constants
    _decoder_weights: dict[str, torch.Tensor] | None = None
    _compiled: dict[str, Callable[..., torch.Tensor]] = field(default_factory=dict)
    # Why torch.compile failed, once it has: from then on the networks run eagerly (`describe` says so).
    compile_error: str | None = None

    def describe(self) -> str:
        """The options in force, and whether compilation failed and the networks run eagerly."""
        text = self.options.describe()
        if self.compile_error is not None:
            text = text.replace("compile on", f"compile FAILED, running eagerly ({self.compile_error})")
        return text

    @property
    def loss_scale(self) -> float:
        return FP16_LOSS_SCALE if self.options.dtype == torch.float16 else 1.0

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed precision for the networks; a no-op at fp32."""
        if self.options.dtype == torch.float32:
            yield
            return
        with torch.autocast(self.models.device.type, dtype=self.options.dtype):
            yield

    # --- CLIP ---------------------------------------------------------------------------------
    def _encode_image_eager(self, cutouts: torch.Tensor) -> torch.Tensor:
        models = self.models
        x = models.normalize(cutouts)
        if self.options.fast_clip and _is_plain_vit(models.clip.visual):
            weights = self._clip_weights or dict(models.clip.visual.named_parameters())
            return _vit_forward(
                models.clip.visual,
                weights,
                x.to(weights["conv1.weight"].dtype),
                self.options.math_attention,
                folded=self._clip_weights is not None and self._folded,
            )
        return models.clip.encode_image(x)

    def encode_image(self, cutouts: torch.Tensor) -> torch.Tensor:
        """CLIP embeddings (N, D) in fp32 of cutouts (N, 3, S, S) in [0, 1], differentiable."""
        with self.autocast():
            out = self._maybe_compiled("clip", self._encode_image_eager, cutouts)
        return out.float()

    # --- VQGAN decoder ------------------------------------------------------------------------
    def _decode_eager(self, z_q: torch.Tensor) -> torch.Tensor:
        vqgan = self.models.vqgan
        if self.options.channels_last:
            z_q = z_q.contiguous(memory_format=torch.channels_last)
        h = vqgan.post_quant_conv(z_q)
        if self._decoder_weights is not None:
            return torch.func.functional_call(vqgan.decoder, self._decoder_weights, (h,))
        return vqgan.decoder(h)

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised latent (N, C, h, w) to the decoder's output (N, 3, H, W) in fp32, about [-1, 1]."""
        with self.autocast():
            out = self._maybe_compiled("decoder", self._decode_eager, z_q)
        return out.float().contiguous()

    # --- compilation, degrading to eager ------------------------------------------------------
    def _maybe_compiled(
        self, name: str, eager: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        if not self.options.compile or self.compile_error is not None:
            return eager(x)
        fn = self._compiled.get(name)
        if fn is None:
            fn = self._compiled[name] = torch.compile(eager, dynamic=False)
        try:
            return fn(x)
        except torch.cuda.OutOfMemoryError:  # the older name of torch.OutOfMemoryError; both torches have it
            raise  # the device is full, compiled or not: not a reason to stop compiling
        except Exception as error:  # any compiler failure (no C++ toolchain, unsupported op): run eager
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            self.compile_error = f"{type(error).__name__}: {first_line}"
            log.warning(
                "torch.compile of the %s failed; the engine for model %s runs eagerly from now on "
                "(set ARTGEN_ENGINE_COMPILE=off to skip compiling): %s",
                "CLIP image encoder" if name == "clip" else name,
                self.models.name,
                self.describe(),
            )
            return eager(x)


def _build_runtime(models: LoadedModels, options: ResolvedOptions) -> EngineRuntime:
    codebook = models.vqgan.codebook
    runtime = EngineRuntime(models, options, codebook_sq=codebook.detach().pow(2).sum(1))
    if options.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True  # process-wide by nature; only ever switched on
    if options.weight_cache:
        clip_params = dict(models.clip.visual.named_parameters())
        if options.fast_clip and _is_plain_vit(models.clip.visual):
            heads = models.clip.visual.transformer.resblocks[0].attn.num_heads
            clip_params = _fold_constants(clip_params, heads)  # scaled in fp32, then cast
            runtime._folded = True
        runtime._clip_weights = _cast_matrices(clip_params, options.dtype)
    if options.weight_cache or options.channels_last:
        # Copies, never the shared modules changed in place: other runtimes of these models stay as they were.
        dtype = options.dtype if options.weight_cache else torch.float32
        runtime._decoder_weights = {
            k: v.contiguous(memory_format=torch.channels_last)
            if options.channels_last and v.dim() == 4
            else v
            for k, v in _cast_matrices(dict(models.vqgan.decoder.named_parameters()), dtype).items()
        }
    log.info("engine on %s for model %s: %s", models.device, models.name, options.describe())
    return runtime


def engine_runtime(
    models: LoadedModels, options: EngineOptions | ResolvedOptions | None = None
) -> EngineRuntime:
    """The runtime for these models and options, built on first use and kept with the models.

    `ResolvedOptions` are used as they are, unchecked against the device: the tests' way to run what
    `resolve` chose for a CUDA device (fp16 with its loss scale, fused attention) on the CPU. The worker
    and the CLI always pass `EngineOptions`, so settings can never skip `resolve`'s checks.
    """
    if isinstance(options, ResolvedOptions):
        resolved = options
    else:
        resolved = (options or EngineOptions()).resolve(models.device)
    # Kept on the models object itself: it lives exactly as long as the networks it was derived from.
    cache: dict[ResolvedOptions, EngineRuntime] = vars(models).setdefault("_engine_runtimes", {})
    if resolved not in cache:
        cache[resolved] = _build_runtime(models, resolved)
    return cache[resolved]


__all__ = [
    "FP16_LOSS_SCALE",
    "EngineOptions",
    "EngineRuntime",
    "ResolvedOptions",
    "cpu_has_native_bf16",
    "cuda_has_native_bf16",
    "engine_runtime",
]
