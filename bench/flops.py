"""FLOPs of one optimisation step, computed from the networks' shapes: what achieved TFLOP/s divides.

Counted as torch.utils.flop_counter counts them: matrix products and convolutions, 2 FLOPs per
multiply-add, biases, norms and elementwise work left out. The networks are frozen, so the backward
pass computes input gradients only: one product the size of the forward one for every product with a
weight, two for every product of two activations (attention's scores and their use). Per job of a
batch: its latent through the VQGAN's post-quant conv and decoder, its `cutn` cutouts through CLIP's
image encoder, and the quantiser's distances to every code (forward only: its gradient goes straight
through). Left out: the cutouts' colour and sampling matrices and the prompts' weighting, 0.01% of a
step of ViT-B/32 (224-pixel cutouts), under 1% of the tiny preset's.

`tests/unit/bench/test_flops.py` holds each network's count to torch's FlopCounterMode exactly. That
counter does not see every fused attention kernel (on CPU, scaled_dot_product_attention counts 0), which
is one reason the figure is computed here and not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from worker.models import LoadedModels


@dataclass(frozen=True)
class Products:
    """Forward FLOPs of one network: products with a weight, and products of two activations."""

    weights: int = 0
    activations: int = 0

    def __add__(self, other: Products) -> Products:
        return Products(self.weights + other.weights, self.activations + other.activations)

    @property
    def forward(self) -> int:
        return self.weights + self.activations

    @property
    def forward_backward(self) -> int:
        return 2 * self.weights + 3 * self.activations


@dataclass(frozen=True)
class StepFlops:
    """One step of `jobs` jobs, forward and backward."""

    decoder: int
    clip: int
    quantiser: int
    jobs: int

    @property
    def total(self) -> int:
        return self.decoder + self.clip + self.quantiser

    @property
    def per_job(self) -> int:
        return self.total // self.jobs


def _conv(conv: nn.Conv2d, n: int, h: int, w: int) -> Products:
    """A stride-1, same-size convolution over (n, C, h, w)."""
    c_out, c_in, kh, kw = conv.weight.shape
    return Products(weights=2 * n * h * w * c_out * c_in * kh * kw // conv.groups)


def _resnet_block(block: nn.Module, n: int, h: int, w: int) -> Products:
    flops = _conv(block.conv1, n, h, w) + _conv(block.conv2, n, h, w)
    shortcut = getattr(block, "nin_shortcut", None) or getattr(block, "conv_shortcut", None)
    if block.in_channels != block.out_channels and shortcut is not None:
        flops = flops + _conv(shortcut, n, h, w)
    return flops


def _attn_block(block: nn.Module, n: int, h: int, w: int) -> Products:
    convs = Products()
    for conv in (block.q, block.k, block.v, block.proj_out):
        convs = convs + _conv(conv, n, h, w)
    channels, positions = block.in_channels, h * w
    return convs + Products(activations=2 * (2 * n * positions * positions * channels))  # q k, then v w


def decoder_flops(models: LoadedModels, n: int, h: int, w: int) -> Products:
    """Forward FLOPs of the post-quant conv and taming's Decoder on latents (n, C, h, w), in its order."""
    vqgan = models.vqgan
    decoder = vqgan.decoder
    flops = _conv(vqgan.post_quant_conv, n, h, w) + _conv(decoder.conv_in, n, h, w)
    mid = decoder.mid
    flops = flops + _resnet_block(mid.block_1, n, h, w) + _attn_block(mid.attn_1, n, h, w)
    flops = flops + _resnet_block(mid.block_2, n, h, w)
    for level in reversed(range(decoder.num_resolutions)):
        up = decoder.up[level]
        for i, block in enumerate(up.block):
            flops = flops + _resnet_block(block, n, h, w)
            if len(up.attn) > 0:
                flops = flops + _attn_block(up.attn[i], n, h, w)
        if level != 0:
            h, w = 2 * h, 2 * w  # nearest-neighbour upsampling, then a conv at the new size
            flops = flops + _conv(up.upsample.conv, n, h, w)
    return flops + _conv(decoder.conv_out, n, h, w)


def clip_image_flops(models: LoadedModels, n: int) -> Products:
    """Forward FLOPs of CLIP's vision transformer on n cutouts (its patch embedding as a product)."""
    visual = models.clip.visual
    width, _, patch, _ = visual.conv1.weight.shape
    grid = visual.input_resolution // patch
    tokens = grid * grid + 1  # the patches and the class token
    flops = Products(weights=2 * n * grid * grid * visual.conv1.weight[0].numel() * width)
    for block in visual.transformer.resblocks:
        matrices = (
            block.attn.in_proj_weight,
            block.attn.out_proj.weight,
            block.mlp.c_fc.weight,
            block.mlp.c_proj.weight,
        )
        flops = flops + Products(weights=2 * n * tokens * sum(m.numel() for m in matrices))
        # scores q k^T and their use on v, over all heads: 2 products of n L L E / H each per head
        flops = flops + Products(activations=2 * (2 * n * tokens * tokens * width))
    if visual.proj is not None:
        flops = flops + Products(weights=2 * n * visual.proj.numel())
    return flops


def step_flops(models: LoadedModels, size: int, cutn: int, jobs: int = 1) -> StepFlops:
    """FLOPs of one engine step of `jobs` square pictures of `size` pixels with `cutn` cutouts each."""
    vqgan = models.vqgan
    side = size // vqgan.factor
    codes, dims = vqgan.codebook.shape
    return StepFlops(
        decoder=decoder_flops(models, jobs, side, side).forward_backward,
        clip=clip_image_flops(models, jobs * cutn).forward_backward,
        quantiser=2 * jobs * side * side * dims * codes,
        jobs=jobs,
    )
