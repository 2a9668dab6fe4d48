"""VQGAN+CLIP (Katherine Crowson's method) in one module: small pieces building up to the Painter.

A latent grid z is decoded by a VQGAN (through a straight-through vector quantiser); random cutouts
of the picture, augmented, are scored by CLIP against the prompts with a spherical distance; Adam (or
another torch optimiser) moves z to lower that loss. Nothing here touches Redis, files or Celery: the
caller gets a StepInfo per iteration through `on_step` and cancels through `should_cancel`.

Every random draw comes from one torch.Generator per Painter, seeded from the job's seed, so two
Painters in one process never disturb each other and a seed reproduces a picture byte for byte on CPU.
The only host-device synchronisation per step is the loss readout at the end of `Painter.step`.
How the networks run (precision, cached weights, compilation) is `worker.runtime`'s business; a
`BatchPainter` steps several Painters of the same model and size through one decoder and one CLIP pass.
A prompt schedule (`a ^ b`) gives a Painter one PromptBank per stage; the step picks the stage's bank.
"""

from __future__ import annotations

import copy
import io
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin

# GenerationConfig lives in shared/ (plain data the API checks too); `worker.engine.GenerationConfig` stays.
from shared.params import (
    SIDE_MULTIPLE,
    GenerationConfig,
    InvalidParams,
    Limits,
    change_every_of,
    config_errors,
    prompt_specs,
)
from shared.prompts import PromptSpec, stage_at
from worker.runtime import EngineOptions, EngineRuntime, engine_runtime

if TYPE_CHECKING:
    from worker.models import LoadedModels

STATE_VERSION = 1


# ------------------------------------------------------------------------------------------------
# Differentiable building blocks
# ------------------------------------------------------------------------------------------------


class ReplaceGrad(torch.autograd.Function):
    """Forward `x_forward`, but send the gradient to `x_backward` (the straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, x_forward: torch.Tensor, x_backward: torch.Tensor) -> torch.Tensor:
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx: Any, grad_in: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad_in.sum_to_size(ctx.shape)


replace_grad = ReplaceGrad.apply


class ClampWithGrad(torch.autograd.Function):
    """Clamp whose gradient survives outside the range only where descent pushes back into range."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx: Any, grad_in: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        # Descent moves x by -grad: above hi (x - clamp > 0) keep grad >= 0, below lo keep grad <= 0.
        keep = grad_in * (x - x.clamp(ctx.lo, ctx.hi)) >= 0
        return grad_in * keep, None, None


clamp_with_grad = ClampWithGrad.apply


def vector_quantize(
    x: torch.Tensor, codebook: torch.Tensor, codebook_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """Snap each vector of x (..., C) to its nearest codebook row (K, C); gradient flows to x unchanged.

    `codebook_sq` (K,) is ||row||^2, constant for a frozen codebook: pass it to skip recomputing it.
    """
    if codebook_sq is None:
        codebook_sq = codebook.pow(2).sum(1)
    d = x.pow(2).sum(-1, keepdim=True) + codebook_sq - 2 * x @ codebook.T  # (..., K)
    indices = d.argmin(-1)  # (...)
    x_q = F.embedding(indices, codebook)  # (..., C)
    return replace_grad(x_q, x)


def spherical_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Half the squared great-circle angle between every row of x (N, D) and of y (M, D): (N, M)."""
    x = F.normalize(x, dim=-1)
    y = F.normalize(y, dim=-1)
    return (x[:, None] - y[None]).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


class PromptBank:
    """All prompt embeddings at once: text prompts one row each, image prompts one row per cutout.

    The loss of prompt p is |w_p| * mean over cutouts and its rows of sign(w_p) * dist; its gradient
    flows through max(sign(w_p) * dist, stop_p), so it stops where the distance is below `stop`
    (Crowson's `Prompt`, batched).
    """

    def __init__(self, embeds: list[torch.Tensor], specs: list[PromptSpec]) -> None:
        device = embeds[0].device
        rows = [e.shape[0] for e in embeds]
        self.embeds = torch.cat(embeds).float()  # (E, D)
        owner = torch.repeat_interleave(
            torch.arange(len(specs), device=device), torch.tensor(rows, device=device)
        )
        self.weights = torch.tensor([s.weight for s in specs], device=device)[owner]  # (E,)
        self.stops = torch.tensor([s.stop for s in specs], device=device)[owner]  # (E,)
        # (E, P): averages the rows that belong to each prompt.
        self.average = F.one_hot(owner, len(specs)).float() / torch.tensor(rows, device=device).float()
        self.specs = specs

    def losses(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Per-prompt loss terms (P,) for CLIP embeddings of the cutouts (cutn, D)."""
        dists = spherical_distance(image_embeds, self.embeds) * self.weights.sign()  # (cutn, E)
        dists = replace_grad(dists, torch.maximum(dists, self.stops))
        return (dists.mean(0) * self.weights.abs()) @ self.average  # (P,)


# ------------------------------------------------------------------------------------------------
# Cutouts and their augmentations, batched: one homography per cutout, one grid_sample for all
# ------------------------------------------------------------------------------------------------

# Augmentation strengths and probabilities of the original API's kornia pipeline.
_P_FLIP, _P_SHARP, _P_AFFINE, _P_PERSP, _P_JITTER = 0.5, 0.4, 0.8, 0.4, 0.7
_SHARPNESS, _DEGREES, _TRANSLATE, _DISTORTION, _HUE, _SATURATION = 0.3, 30.0, 0.1, 0.2, 0.01, 0.01
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=g, device=device) < p).float()


def sharpen(images: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """images + f * (images - smooth(images)) for images (N, C, H, W) and f (N,), smooth being PIL's
    SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 with replicated edges.

    The kernel is (3x3 box + 4 x centre) / 13, so images - smooth = (9 images - box) / 13, and the box is
    two separable 3-tap sums of shifted slices. As a depthwise conv2d, its backward took about 0.1 s of a
    CPU step at 32 cutouts of 224x224; this way forward and backward take a few ms.
    """
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    rows = padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]  # (N, C, H, W + 2)
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (N, C, H, W)
    return images + f[:, None, None, None] * (9 * images - box) / 13


def _perspective_homographies(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Homographies (n, 3, 3) mapping 4 points src (n, 4, 2) onto dst (n, 4, 2): one batched solve."""
    n = src.shape[0]
    x, y = src[..., 0], src[..., 1]  # (n, 4)
    u, v = dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], -1)  # (n, 4, 8)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)  # (n, 8, 8)
    b = torch.cat([u, v], 1)  # (n, 8)
    h = torch.linalg.solve(a, b)  # (n, 8)
    return torch.cat([h, torch.ones(n, 1, device=h.device, dtype=h.dtype)], 1).view(n, 3, 3)


class MakeCutouts:
    """Random square crops (size ~ rand**cut_pow between min(side, cut_size) and the short side),
    resampled to CLIP's input size, each with its own flip, affine, perspective, sharpness, colour
    jitter and noise. The crop and the geometric augmentations form one sampling homography per cutout,
    applied with a single grid_sample (supersampled and average-pooled when cutouts shrink, so large
    pictures are not aliased), then per-sample sharpness, colour matrices and noise, all batched.
    Geometric warps sample the whole picture around the crop (kornia pads the crop's border instead).
    """

    def __init__(
        self, cut_size: int, cutn: int, cut_pow: float = 1.0, augment: bool = True, noise_fac: float = 0.1
    ):
        self.cut_size, self.cutn, self.cut_pow = cut_size, cutn, cut_pow
        self.augment, self.noise_fac = augment, noise_fac

    def boxes(
        self, side_y: int, side_x: int, g: torch.Generator, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whole-pixel crop boxes (size, x offset, y offset), each (cutn,), drawn as the notebook does."""
        max_size = min(side_x, side_y)
        min_size = min(side_x, side_y, self.cut_size)
        r = torch.rand(self.cutn, generator=g, device=device)
        size = torch.floor(r.pow(self.cut_pow) * (max_size - min_size) + min_size)
        ox = torch.floor(torch.rand(self.cutn, generator=g, device=device) * (side_x - size + 1))
        oy = torch.floor(torch.rand(self.cutn, generator=g, device=device) * (side_y - size + 1))
        return size, ox, oy

    def _augment_homographies(self, g: torch.Generator, device: torch.device) -> torch.Tensor:
        """Sampling maps (cutn, 3, 3) in the cutout's normalised [-1, 1] coordinates."""
        n = self.cutn
        flip = 1 - 2 * _bernoulli(n, _P_FLIP, g, device)  # -1 mirrors x
        on = _bernoulli(n, _P_AFFINE, g, device)
        angle = _uniform(n, -_DEGREES, _DEGREES, g, device) * (math.pi / 180) * on
        tx = _uniform(n, -2 * _TRANSLATE, 2 * _TRANSLATE, g, device) * on  # fraction of size -> [-1, 1] units
        ty = _uniform(n, -2 * _TRANSLATE, 2 * _TRANSLATE, g, device) * on
        cos, sin, zeros, ones = (
            angle.cos(),
            angle.sin(),
            torch.zeros(n, device=device),
            torch.ones(n, device=device),
        )
        affine = torch.stack([cos * flip, -sin, tx, sin * flip, cos, ty, zeros, zeros, ones], -1).view(
            n, 3, 3
        )
        # Perspective: the picture's corners move inward by up to DISTORTION of the half size; we sample
        # through the inverse map, i.e. from the moved corners back to the true corners.
        corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=device)
        corners = corners.expand(n, 4, 2)
        persp_on = _bernoulli(n, _P_PERSP, g, device)[:, None, None]
        inward = torch.rand(n, 4, 2, generator=g, device=device) * _DISTORTION * persp_on
        moved = corners - corners.sign() * inward
        persp = _perspective_homographies(moved, corners)
        return affine @ persp  # (cutn, 3, 3)

    def _colour_matrices(self, g: torch.Generator, device: torch.device) -> torch.Tensor:
        """Per-cutout 3x3 colour matrices (cutn, 3, 3): saturation about luma, then a hue rotation in YIQ."""
        n = self.cutn
        on = _bernoulli(n, _P_JITTER, g, device)
        sat = 1 + _uniform(n, -_SATURATION, _SATURATION, g, device) * on
        hue = _uniform(n, -_HUE, _HUE, g, device) * on * (2 * math.pi)
        eye = torch.eye(3, device=device)
        luma = torch.tensor(_LUMA, device=device).expand(3, 3)  # every row is the luma weights
        saturation = sat[:, None, None] * eye + (1 - sat)[:, None, None] * luma  # (n, 3, 3)
        yiq = torch.tensor(_RGB_TO_YIQ, device=device)
        cos, sin, zeros, ones = (
            hue.cos(),
            hue.sin(),
            torch.zeros(n, device=device),
            torch.ones(n, device=device),
        )
        rot = torch.stack([ones, zeros, zeros, zeros, cos, -sin, zeros, sin, cos], -1).view(n, 3, 3)
        return torch.linalg.inv(yiq) @ rot @ yiq @ saturation

    def __call__(self, image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Cutouts (cutn, 3, cut_size, cut_size) of image (1, 3, H, W)."""
        _, _, side_y, side_x = image.shape
        device, n, cut = image.device, self.cutn, self.cut_size
        size, ox, oy = self.boxes(side_y, side_x, g, device)

        # Crop as a map from cutout coordinates to picture coordinates (align_corners=False convention).
        zeros, ones = torch.zeros(n, device=device), torch.ones(n, device=device)
        cx, cy = (2 * ox + size) / side_x - 1, (2 * oy + size) / side_y - 1  # crop centres in [-1, 1]
        crop_rows = [size / side_x, zeros, cx, zeros, size / side_y, cy, zeros, zeros, ones]
        crop = torch.stack(crop_rows, -1).view(n, 3, 3)
        sampling = crop @ self._augment_homographies(g, device) if self.augment else crop  # (cutn, 3, 3)

        # Supersample by k when the largest crop is bigger than the cutout, then average-pool back.
        k = max(1, math.ceil(min(side_x, side_y) / cut))
        m = cut * k
        coords = (torch.arange(m, device=device, dtype=image.dtype) + 0.5) / m * 2 - 1  # pixel centres
        gy, gx = torch.meshgrid(coords, coords, indexing="ij")
        base = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(1, m * m, 3)  # (1, m*m, 3)
        warped = base @ sampling.transpose(1, 2)  # (cutn, m*m, 3)
        grid = (warped[..., :2] / warped[..., 2:]).view(n, m, m, 2)
        cutouts = F.grid_sample(
            image.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        if k > 1:
            cutouts = F.avg_pool2d(cutouts, k)  # (cutn, 3, cut, cut)
        if not self.augment:
            return cutouts

        # Sharpness: x + f * (x - smooth(x)), f ~ U(0, 0.3) with probability 0.4 (PIL's enhance by 1 + f).
        f = _uniform(n, 0, _SHARPNESS, g, device) * _bernoulli(n, _P_SHARP, g, device)
        cutouts = sharpen(cutouts, f)
        # Colour jitter as one matrix per cutout.
        cutouts = torch.einsum("nij,njhw->nihw", self._colour_matrices(g, device), cutouts)
        # Noise with a per-cutout strength.
        facs = torch.rand(n, 1, 1, 1, generator=g, device=device) * self.noise_fac
        return cutouts + facs * torch.randn(cutouts.shape, generator=g, device=device)


# ------------------------------------------------------------------------------------------------
# The painter: state of one picture being optimised
# ------------------------------------------------------------------------------------------------


@dataclass
class StepInfo:
    """What the loop reports after each iteration."""

    iteration: int  # iterations completed so far (1..total)
    total: int
    loss: float  # total loss of this step
    losses: list[float]  # one per prompt term: text prompts in order, then image prompts
    its: float  # iterations per second, smoothed
    elapsed: float  # seconds since the loop started
    image: Callable[[], Image.Image]  # the picture this step scored (before its update), as PIL on demand
    init_loss: float | None = None  # the init-image term, when init_weight is set
    stage: int = 0  # the schedule's stage (0-based) this step painted
    stages: int = 1
    specs: list[PromptSpec] = field(default_factory=list)  # the stage's prompts, one per entry of losses
    stage_end: bool = False  # this was the stage's last step and another stage follows
    converged: bool = False  # the loss has plateaued: the painter stops here (plateau_window)


@dataclass
class GenerationResult:
    image: Image.Image
    seed: int
    iterations: int  # iterations completed (fewer than asked when canceled)
    canceled: bool
    losses: list[float]  # per prompt term at the last step ([] when no step ran)
    elapsed: float  # seconds in the loop
    loss: float | None = None  # total loss at the last step
    stopped_at: int | None = None  # the iteration where the loss plateaued, when it ended the painting


def _to_tensor(image: Image.Image, width: int, height: int, device: torch.device) -> torch.Tensor:
    """A PIL picture resized (Lanczos) to (1, 3, height, width) in [0, 1]."""
    image = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, 3)
    return data.permute(2, 0, 1)[None].float().div(255).to(device)


def _to_pil(image: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] to an RGB picture."""
    data = image[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu()
    return Image.fromarray(data.numpy(), "RGB")


def _clone_to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone_to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_clone_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def validate_config(config: GenerationConfig, factor: int = SIDE_MULTIPLE) -> list[list[PromptSpec]]:
    """Check a config before any work (shared.params); returns the parsed text prompts of each stage.

    Raises InvalidParams (a ValueError) naming every problem on one line.
    """
    errors = config_errors(config, Limits(side_multiple=factor))
    if errors:
        raise InvalidParams(errors)
    return prompt_specs(config)


class PlateauDetector:
    """Says when a loss has stopped improving: the best loss of the last `window` iterations is below the
    best of all the iterations before them by `delta` or less. It needs window + 1 losses to say so.

    No torch: plain floats, so that its state is a small part of a checkpoint.
    """

    def __init__(self, window: int, delta: float) -> None:
        self.window, self.delta = window, delta
        self.recent: deque[float] = deque()  # the last `window` losses
        self.best_before = math.inf  # the lowest loss before them

    def observe(self, loss: float) -> bool:
        """Add the next loss; whether the loss has plateaued."""
        self.recent.append(loss)
        if len(self.recent) > self.window:
            self.best_before = min(self.best_before, self.recent.popleft())
        if math.isinf(self.best_before):
            return False
        return self.best_before - min(self.recent) <= self.delta

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "best_before": self.best_before}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent = deque(float(x) for x in state["recent"])
        self.best_before = float(state["best_before"])


# The latent's optimisers (shared.params.OPTIMIZERS), each with torch's defaults beside the learning rate.
OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "radam": torch.optim.RAdam,
    "nadam": torch.optim.NAdam,
}


def random_gradient(height: int, width: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """A smooth random picture (1, 3, H, W) in [0, 1], as nerdyrodent's `gradient` start: each channel
    ramps linearly from a random start to a random end value, across or down the picture (at random)."""
    start = torch.rand(3, generator=g, device=device)[:, None, None]  # (3, 1, 1)
    end = torch.rand(3, generator=g, device=device)[:, None, None]
    across = (torch.rand(3, generator=g, device=device) < 0.5)[:, None, None]
    ramp_x = torch.linspace(0, 1, width, device=device)[None, None, :].expand(3, height, width)
    ramp_y = torch.linspace(0, 1, height, device=device)[None, :, None].expand(3, height, width)
    ramp = torch.where(across, ramp_x, ramp_y)  # (3, H, W)
    return (start + (end - start) * ramp)[None]


class Painter:
    """One picture being painted: the latent, its optimiser, the prompts' embeddings, the generator."""

    def __init__(
        self, models: LoadedModels, config: GenerationConfig, options: EngineOptions | None = None
    ) -> None:
        self.models, self.config = models, config
        self.device = models.device
        self.runtime: EngineRuntime = engine_runtime(models, options)
        vqgan = models.vqgan
        schedule = validate_config(config, vqgan.factor)
        self.seed = config.seed if config.seed is not None else secrets.randbits(32)
        # How a picture without an init image starts: the config's choice, else the model's.
        self.init = config.init or (models.preset.noise_init if models.preset else "codes")
        self.stages = len(schedule)
        self.change_every = change_every_of(config, self.stages)
        self.plateau = (
            PlateauDetector(config.plateau_window, config.plateau_delta)
            if config.plateau_window is not None
            else None
        )
        self.stopped_at: int | None = None  # set when the loss plateaued and ended the painting
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.iteration = 0
        self.make_cutouts = MakeCutouts(
            models.clip_size, config.cutn, config.cut_pow, config.augment, config.noise_fac
        )

        codebook = vqgan.codebook  # (K, C)
        # z is clamped per channel to the range the codebook spans, as in the notebook.
        self.z_min = codebook.min(dim=0).values[None, :, None, None]  # (1, C, 1, 1)
        self.z_max = codebook.max(dim=0).values[None, :, None, None]
        toks_x, toks_y = config.width // vqgan.factor, config.height // vqgan.factor

        with torch.no_grad():
            # --- initial latent: an init picture's codes, or noise
            if config.init_image is not None:
                z = self._encode(_to_tensor(config.init_image, config.width, config.height, self.device))
            elif self.init == "pixels":
                pixels = torch.rand(
                    1, 3, config.height, config.width, generator=self.generator, device=self.device
                )
                z = self._encode(pixels)
            elif self.init == "gradient":
                z = self._encode(random_gradient(config.height, config.width, self.generator, self.device))
            else:
                idx = torch.randint(
                    codebook.shape[0], (toks_y * toks_x,), generator=self.generator, device=self.device
                )
                z = codebook[idx].view(1, toks_y, toks_x, -1).permute(0, 3, 1, 2)  # (1, C, toks_y, toks_x)
            self.z_init = z.clone() if config.init_weight else None

            # --- prompt embeddings: every stage's text rows (one CLIP text pass for all), then CLIP
            # embeddings of each image prompt's cutouts, which every stage shares
            texts = [s.text for stage in schedule for s in stage]
            text_embeds: list[torch.Tensor] = []
            if texts:
                from worker.models import import_clip  # the tokenizer; keeps `import worker.engine` light

                tokens = (
                    import_clip()
                    .tokenize(texts, context_length=models.clip.context_length, truncate=True)
                    .to(self.device)
                )
                text_embeds = list(models.clip.encode_text(tokens).float().split(1))  # P x (1, D)
            image_embeds: list[torch.Tensor] = []
            for picture in config.image_prompts:
                batch = self.make_cutouts(
                    _to_tensor(picture, config.width, config.height, self.device), self.generator
                )
                image_embeds.append(self.runtime.encode_image(batch))  # (cutn, D)
        image_specs = [PromptSpec(text=f"<image {i + 1}>") for i in range(len(config.image_prompts))]
        self.banks: list[PromptBank] = []
        for stage in schedule:
            mine, text_embeds = text_embeds[: len(stage)], text_embeds[len(stage) :]
            self.banks.append(PromptBank(mine + image_embeds, stage + image_specs))

        self.z = z.detach().clone().requires_grad_(True)
        self.optimizer = OPTIMIZER_CLASSES[config.optimizer]([self.z], lr=config.step_size)
        self._start: float | None = None
        self._ema_dt: float | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.config.width, self.config.height

    @property
    def stage(self) -> int:
        """The stage (0-based) that paints the next step."""
        return stage_at(self.iteration, self.change_every, self.stages)

    @property
    def prompts(self) -> PromptBank:
        """The prompts of the stage that paints the next step."""
        return self.banks[self.stage]

    @property
    def finished(self) -> bool:
        """Every iteration painted, or the loss plateaued."""
        return self.iteration >= self.config.iterations or self.stopped_at is not None

    def _observe(self, stage: int, loss: float) -> bool:
        """After a step of `stage`: whether the loss plateaued. Only the last stage is watched, so a
        schedule is never cut short before its last prompt."""
        if self.plateau is None or stage != self.stages - 1 or not self.plateau.observe(loss):
            return False
        self.stopped_at = self.iteration
        return True

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (1, 3, H, W) in [0, 1] to quantised latent codes (1, C, H/f, W/f)."""
        vqgan = self.models.vqgan
        h = vqgan.quant_conv(vqgan.encoder(pixels * 2 - 1))
        return vector_quantize(h.movedim(1, 3), vqgan.codebook).movedim(3, 1)

    def synth(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) to pictures (N, 3, 16h, 16w) in [0, 1], differentiable in z."""
        vqgan = self.models.vqgan
        z_q = vector_quantize(z.movedim(1, 3), vqgan.codebook, self.runtime.codebook_sq).movedim(3, 1)
        out = self.runtime.decode(z_q)  # (N, 3, H, W) in about [-1, 1]; straight-through above
        return clamp_with_grad(out.add(1).div(2), 0.0, 1.0)

    def _decode(self, z: torch.Tensor) -> Image.Image:
        with torch.no_grad():
            return _to_pil(self.synth(z))

    def image(self) -> Image.Image:
        """The current picture."""
        return self._decode(self.z.detach())

    def step(self) -> StepInfo:
        """One optimisation step; returns its losses (the one CPU-GPU sync) and a lazy picture."""
        return _step_together([self])[0]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly (on the same device): latent, optimiser, iteration, RNG,
        and the plateau detector's recent losses."""
        state = {
            "version": STATE_VERSION,
            "seed": self.seed,
            "iteration": self.iteration,
            "z": self.z.detach().to("cpu", copy=True),
            "optimizer_name": self.config.optimizer,
            "optimizer": _clone_to_cpu(self.optimizer.state_dict()),
            "generator": self.generator.get_state().clone(),
        }
        if self.plateau is not None:
            state["plateau"] = self.plateau.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()` of a Painter built with the same models and config."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported painter state version {state.get('version')!r}")
        if state["seed"] != self.seed:
            raise ValueError(f"state was made with seed {state['seed']}, this painter has seed {self.seed}")
        if tuple(state["z"].shape) != tuple(self.z.shape):
            raise ValueError(f"state latent {tuple(state['z'].shape)} does not fit {tuple(self.z.shape)}")
        # States written before the optimiser was a choice are Adam's.
        if state.get("optimizer_name", "adam") != self.config.optimizer:
            raise ValueError(
                f"state was made with optimizer {state.get('optimizer_name', 'adam')!r}, "
                f"this painter uses {self.config.optimizer!r}"
            )
        if self.plateau is not None and "plateau" in state:
            self.plateau.load_state_dict(state["plateau"])
        with torch.no_grad():
            self.z.copy_(state["z"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.iteration = int(state["iteration"])


def _step_together(painters: list[Painter]) -> list[StepInfo]:
    """One optimisation step of every painter: one decoder pass and one CLIP pass over all of them.

    Each painter keeps its own latent, optimiser, generator, prompts (its stage's) and init term; the
    summed loss gives each
    latent exactly its own gradient (the latents are independent). One painter alone is `Painter.step`.
    """
    started = time.perf_counter()
    lead = painters[0]
    runtime = lead.runtime
    for p in painters:
        if p._start is None:
            p._start = started

    # --- forward: latents -> pictures -> each painter's cutouts (its own generator) -> CLIP embeddings
    z = lead.z if len(painters) == 1 else torch.cat([p.z for p in painters])  # (N, C, h, w)
    out = lead.synth(z)  # (N, 3, H, W)
    cutouts = [p.make_cutouts(out[i : i + 1], p.generator) for i, p in enumerate(painters)]
    embeds = runtime.encode_image(cutouts[0] if len(painters) == 1 else torch.cat(cutouts))  # (sum cutn, D)

    # --- losses (fp32): one term per prompt of each painter's stage, plus each pull towards its init latent
    stages = [p.stage for p in painters]
    totals, readouts = [], []
    for p, stage, e in zip(painters, stages, embeds.split([c.shape[0] for c in cutouts]), strict=True):
        terms = p.banks[stage].losses(e)  # (P,)
        total = terms.sum()
        init_term = None
        if p.z_init is not None:
            init_term = F.mse_loss(p.z, p.z_init) * p.config.init_weight / 2
            total = total + init_term
        totals.append(total)
        readouts.append((total, terms, init_term))

    # --- optimise each latent with its own optimiser, then keep it inside the codebook's range
    for p in painters:
        p.optimizer.zero_grad(set_to_none=True)
    loss = totals[0] if len(totals) == 1 else torch.stack(totals).sum()
    scale = runtime.loss_scale
    (loss * scale if scale != 1.0 else loss).backward()
    for p in painters:
        if scale != 1.0 and p.z.grad is not None:
            p.z.grad.div_(scale)
        p.optimizer.step()
        with torch.no_grad():
            p.z.copy_(p.z.maximum(p.z_min).minimum(p.z_max))
        p.iteration += 1

    # --- readout. SYNC POINT: the only host-device transfer of the step, for all painters at once.
    flat = [
        t.detach().reshape(-1)
        for total, terms, init_term in readouts
        for t in (total, terms, *(() if init_term is None else (init_term,)))
    ]
    values = torch.cat(flat).tolist()
    now = time.perf_counter()
    dt = now - started
    infos, at = [], 0
    for i, (p, stage, (_, terms, init_term)) in enumerate(zip(painters, stages, readouts, strict=True)):
        n_terms = terms.shape[0]
        mine = values[at : at + 1 + n_terms + (init_term is not None)]
        at += len(mine)
        converged = p._observe(stage, mine[0])
        p._ema_dt = dt if p._ema_dt is None else 0.8 * p._ema_dt + 0.2 * dt
        # The picture this step scored, already decoded: previews cost no extra decoder pass.
        shown = out[i : i + 1].detach()
        infos.append(
            StepInfo(
                iteration=p.iteration,
                total=p.config.iterations,
                loss=mine[0],
                losses=mine[1 : 1 + n_terms],
                its=1.0 / p._ema_dt if p._ema_dt > 0 else float("inf"),
                elapsed=now - p._start,
                image=lambda shown=shown: _to_pil(shown),
                init_loss=mine[-1] if init_term is not None else None,
                stage=stage,
                stages=p.stages,
                specs=p.banks[stage].specs,
                stage_end=p.stage != stage and p.iteration < p.config.iterations,
                converged=converged,
            )
        )
    return infos


class BatchPainter:
    """Steps several Painters of the same models, size and engine options together.

    One decoder pass and one CLIP pass over the concatenated batch per step; each painter keeps its own
    latent, optimiser, generator (cutouts drawn in the same order as alone), prompts, init picture and
    iteration count. Painters join (`add`) at their own iteration and leave (`remove`) at any time.
    A painter's pictures equal those it paints alone up to the last bits of batched kernels.
    """

    def __init__(self, models: LoadedModels, painters: list[Painter] | None = None) -> None:
        self.models = models
        self.painters: list[Painter] = []
        for painter in painters or []:
            self.add(painter)

    def add(self, painter: Painter) -> None:
        """Join the batch; refused unless it shares the models, picture size and engine runtime."""
        if painter.models is not self.models:
            raise ValueError("a BatchPainter steps painters of one LoadedModels only")
        if any(p is painter for p in self.painters):
            raise ValueError("this painter is already in the batch")
        if self.painters:
            first = self.painters[0]
            if painter.size != first.size:
                raise ValueError(f"picture size {painter.size} differs from the batch's {first.size}")
            if painter.runtime is not first.runtime:
                raise ValueError("painters in one batch must share engine options")
        self.painters.append(painter)

    def remove(self, painter: Painter) -> None:
        """Leave the batch (canceled or finished); the others go on unchanged."""
        for i, p in enumerate(self.painters):
            if p is painter:
                del self.painters[i]
                return
        raise ValueError("this painter is not in the batch")

    def step(self) -> list[StepInfo]:
        """One iteration of every painter; StepInfos in the order of `.painters`. Remove finished painters
        first: stepping one past its iteration count (or its plateau) is refused."""
        if not self.painters:
            return []
        done = [p.seed for p in self.painters if p.finished]
        if done:
            raise ValueError(f"painters with seeds {done} have finished; remove them before stepping")
        return _step_together(self.painters)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def generate(
    models: LoadedModels,
    config: GenerationConfig,
    on_step: Callable[[StepInfo], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    resume_state: dict[str, Any] | None = None,
    options: EngineOptions | None = None,
) -> GenerationResult:
    """Paint one picture; `should_cancel()` is checked before every iteration."""
    painter = Painter(models, config, options)
    if resume_state is not None:
        painter.load_state_dict(resume_state)
    started = time.perf_counter()
    last: StepInfo | None = None
    canceled = False
    while not painter.finished:
        if should_cancel is not None and should_cancel():
            canceled = True
            break
        last = painter.step()
        if on_step is not None:
            on_step(last)
    return GenerationResult(
        image=painter.image(),
        seed=painter.seed,
        iterations=painter.iteration,
        canceled=canceled,
        losses=last.losses if last else [],
        elapsed=time.perf_counter() - started,
        loss=last.loss if last else None,
        stopped_at=painter.stopped_at,
    )


def png_bytes(image: Image.Image, metadata: dict[str, str] | None = None) -> bytes:
    """The picture as PNG with `metadata` as tEXt chunks (deterministic: no timestamps)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, str(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
