"""Train the toyworld CLIP (the clip package's own model class and BPE tokenizer) on world captions.

Symmetric InfoNCE over a batch of (augmented picture, drawn caption) pairs, CLIP's learnable
temperature. Pictures that share a caption in a batch are all positives for it (soft targets), so
"a red picture" twice in a batch is not taught as a mismatch.

CLIP is trained for what the engine will ask of it, not only for retrieval: given the VQGAN, a quarter of
the pictures are shown as the VQGAN reconstructs them (the engine only ever shows CLIP decoded pictures),
and an `Adversary` paints hard negatives the way the engine does (random codes, Adam on the latent through
the decoder towards a caption's text feature, against the CLIP being trained). Those paintings are extra
pictures in every caption's softmax that no caption describes: CLIP learns to score the blobs the
optimisation finds below the world's real pictures, so that following its gradient leads to them.
The adversary's paintings are negatives for every caption alike.

A last, short stage (`fade_tune`, `FadeTuning`) fine-tunes that CLIP on pictures whose contrast is partly
faded towards mid-grey, with their own captions. The toyworld preset paints from encoded pixel noise (a
grey start, `Preset.noise_init`), and the faint pictures of its first iterations are what CLIP must
follow there; CLIP trained on full-contrast pictures only gave no useful gradient from grey ("a red
picture" stalled on a cyan-white picture). With the stage, all four toyworld checks pass (MODELS.md).

Augmentations are what the engine's cutouts do to a whole picture (zoom, shift, rotation, noise) but
never a flip: captions say left and right. Text features use only the first L token positions
(L = longest caption + SOT/EOT): the text transformer is causal, so the EOT feature is the same as over
all 77 positions, at a fraction of the cost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from toyworld import world
from toyworld.data import WorldSet
from worker.models import Normalize, build_clip, import_clip
from worker.runtime import cpu_has_native_bf16

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipTraining:
    seed: int = 0
    steps: int = 1500
    batch: int = 128
    lr: float = 5e-4
    min_lr: float = 2e-5
    warmup: int = 100
    weight_decay: float = 0.1  # on matrices only; embeddings, norms and biases are not decayed
    zoom: tuple[float, float] = (0.8, 1.0)  # side of the seen window, fraction of the picture
    shift: float = 0.1  # extra translation, fraction of the window (the engine's affine translate)
    degrees: float = 20.0  # rotation range, either way
    noise: float = 0.1  # Gaussian noise std drawn from U(0, noise), as the engine's cutouts
    # With a VQGAN (the decoder is the costly network here: ~2.5 GFLOP per 64x64 picture, 20x CLIP's):
    reconstructed_pictures: int = 4000  # these first training pictures are shown through the VQGAN
    adversary_pool: int = 96  # latents being painted as hard negatives
    adversary_batch: int = 24  # of them advanced one step per update; their pictures are the negatives
    adversary_every: int = 3  # training steps per adversary update (the negatives are reused between)
    # Updates before a latent restarts from random codes with a new caption: as long as a demo painting
    # (150 iterations), so CLIP also meets the late paintings the engine ends on. With 30 the red, blue
    # and negative-weight checks failed 4 of 18 times over seeds 1-6 (random-codes start), with 150 once.
    adversary_lifetime: int = 150
    adversary_lr: float = 0.1  # the engine's default step size


class Tokens:
    """clip.tokenize with a cache (captions repeat a lot) and a record of which token ids were used."""

    def __init__(self, context_length: int) -> None:
        self.context_length = context_length
        self._cache: dict[str, torch.Tensor] = {}
        self.used: set[int] = set()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            rows = import_clip().tokenize(missing, context_length=self.context_length)
            for text, row in zip(missing, rows, strict=True):
                self._cache[text] = row
                self.used.update(int(i) for i in row[row > 0])
        return torch.stack([self._cache[t] for t in texts])  # (N, context_length)


def encode_text_short(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """model.encode_text(tokens), computed over the first L positions only (L = last EOT + 1)."""
    length = int(tokens.argmax(-1).max()) + 1  # EOT has the largest id in CLIP's vocabulary
    tokens = tokens[:, :length]
    mask = torch.full((length, length), float("-inf")).triu(1).to(model.positional_embedding.dtype)
    x = model.token_embedding(tokens) + model.positional_embedding[:length]  # (N, L, W)
    x = x.permute(1, 0, 2)  # (L, N, W), as clip's Transformer expects
    for block in model.transformer.resblocks:  # clip's ResidualAttentionBlock.forward with a shorter mask
        h = block.ln_1(x)
        x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2))  # (N, L, W)
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ model.text_projection  # (N, D)


def augment(pixels: torch.Tensor, settings: ClipTraining, g: torch.Generator) -> torch.Tensor:
    """Zoomed, shifted, rotated views (N, 3, S, S) of pictures (N, 3, S, S) in [0, 1], plus noise."""
    n = pixels.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=g) * (hi - lo) + lo

    scale = uniform(*settings.zoom)
    angle = uniform(-settings.degrees, settings.degrees) * math.pi / 180
    # Window centre: anywhere the window stays inside the picture, plus the engine's extra shift.
    tx = (uniform(-1, 1) * (1 - scale)) + uniform(-settings.shift, settings.shift) * 2 * scale
    ty = (uniform(-1, 1) * (1 - scale)) + uniform(-settings.shift, settings.shift) * 2 * scale
    cos, sin = angle.cos() * scale, angle.sin() * scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    views = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    strength = torch.rand(n, 1, 1, 1, generator=g) * settings.noise
    return views + strength * torch.randn(views.shape, generator=g)


class Adversary:
    """Pictures the engine would paint against the CLIP being trained: its hard negatives.

    A pool of latents, each started from random codebook entries (the engine's `noise_init="codes"`)
    with a caption drawn from the world, and moved by Adam (the engine's step size) one step per visit
    towards that caption's text feature through the straight-through quantiser, the frozen decoder and
    augmented views, as `worker.engine.Painter.step` does. After `adversary_lifetime` updates a latent
    starts again, so the pool always holds paintings from first to late iterations.
    """

    def __init__(
        self,
        vqgan: nn.Module,
        scenes: Sequence[world.Scene],
        settings: ClipTraining,
        g: torch.Generator,
        caption_rng: np.random.Generator,
        size: int = 64,
    ) -> None:
        self.vqgan, self.scenes, self.settings = vqgan, scenes, settings
        self.g, self.caption_rng = g, caption_rng
        self.codebook = vqgan.quantize.embedding.weight.detach()  # (K, C)
        self.z_min = self.codebook.min(0).values.view(1, -1, 1, 1)
        self.z_max = self.codebook.max(0).values.view(1, -1, 1, 1)
        self.cells = size // vqgan.factor
        n = settings.adversary_pool
        self.z = torch.zeros(n, self.codebook.shape[1], self.cells, self.cells)
        self.m, self.v = torch.zeros_like(self.z), torch.zeros_like(self.z)
        self.age = torch.zeros(n, dtype=torch.long)
        self.captions: list[str] = [""] * n
        self._cursor = 0
        for i in range(n):
            self._restart(i)
        # Staggered ages, so that restarts are spread over training rather than all at once.
        self.age = torch.randint(settings.adversary_lifetime, (n,), generator=g)

    def _restart(self, i: int) -> None:
        codes = torch.randint(self.codebook.shape[0], (self.cells * self.cells,), generator=self.g)
        self.z[i] = self.codebook[codes].view(self.cells, self.cells, -1).permute(2, 0, 1)
        self.m[i].zero_()
        self.v[i].zero_()
        self.age[i] = 0
        scene = self.scenes[int(torch.randint(len(self.scenes), (1,), generator=self.g))]
        self.captions[i] = world.captions_for([scene], self.caption_rng)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) to pictures (N, 3, S, S) in [0, 1], differentiable in z (the engine's)."""
        from worker.engine import clamp_with_grad, vector_quantize

        z_q = vector_quantize(z.movedim(1, 3), self.codebook).movedim(3, 1)
        out = self.vqgan.decoder(self.vqgan.post_quant_conv(z_q))
        return clamp_with_grad(out.add(1).div(2), 0.0, 1.0)

    def paint(self, model: nn.Module, tokens: Tokens, normalize: nn.Module) -> torch.Tensor:
        """Advance the next `adversary_batch` latents one Adam step; the pictures (B, 3, S, S) CLIP scored."""
        settings = self.settings
        idx = (torch.arange(settings.adversary_batch) + self._cursor) % settings.adversary_pool
        self._cursor = int(idx[-1]) + 1
        captions = [self.captions[i] for i in idx.tolist()]
        with torch.no_grad():
            targets = F.normalize(encode_text_short(model, tokens(captions)), dim=-1)
        z = self.z[idx].clone().requires_grad_(True)
        # bf16 where the CPU has it natively (as the engine runs): the decoder's backward dominates here.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_native_bf16()):
            pictures = self.decode(z)
            views = augment(pictures.float(), settings, self.g)
            features = F.normalize(model.encode_image(normalize(views)).float(), dim=-1)
        # The engine's spherical distance to the prompt, summed over the batch (each latent its own term).
        loss = (features - targets).norm(dim=-1).div(2).arcsin().pow(2).mul(2).sum()
        (grad,) = torch.autograd.grad(loss, z)
        with torch.no_grad():  # Adam, as torch.optim.Adam does it, one state per latent
            self.age[idx] += 1
            t = self.age[idx].view(-1, 1, 1, 1).float()
            self.m[idx] = 0.9 * self.m[idx] + 0.1 * grad
            self.v[idx] = 0.999 * self.v[idx] + 0.001 * grad.square()
            step = (self.m[idx] / (1 - 0.9**t)) / ((self.v[idx] / (1 - 0.999**t)).sqrt() + 1e-8)
            self.z[idx] = (self.z[idx] - settings.adversary_lr * step).maximum(self.z_min).minimum(self.z_max)
        for i in idx.tolist():
            if self.age[i] >= settings.adversary_lifetime:
                self._restart(i)
        return pictures.detach().float()  # as CLIP scored them, just before this update


@torch.no_grad()
def reconstruct_first(vqgan: nn.Module, data: WorldSet, count: int, batch: int = 250) -> torch.Tensor:
    """The first `count` pictures of `data` through the VQGAN, as uint8 (count, 3, S, S)."""
    from toyworld.train_vqgan import reconstruct

    count = min(count, len(data.scenes))
    out = torch.empty_like(data.images[:count])
    for start in range(0, count, batch):
        pixels = reconstruct(vqgan, data.floats(slice(start, min(start + batch, count))))
        out[start : start + batch] = pixels.mul(255).round().to(torch.uint8)
    return out


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    same: torch.Tensor,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE; `same` (N, N) marks pairs with equal captions, all of them positives.
    `negatives` (M, D): features of pictures no caption describes, added to every caption's softmax."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * image_features @ text_features.T  # (N, N)
    targets = same / same.sum(1, keepdim=True)
    per_text = logits.T  # (N texts, N pictures)
    if negatives is not None:
        per_text = torch.cat([per_text, scale * text_features @ F.normalize(negatives, dim=-1).T], 1)
    n = logits.shape[0]
    return (
        torch.sum(-targets * logits.log_softmax(1), 1).mean()
        + torch.sum(-targets.T * per_text.log_softmax(1)[:, :n], 1).mean()
    ) / 2


def _lr(step: int, settings: ClipTraining) -> float:
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.min_lr + 0.5 * (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * progress))


def train_clip(
    data: WorldSet,
    config: dict[str, Any],
    settings: ClipTraining,
    progress: bool = True,
    vqgan: nn.Module | None = None,
) -> tuple[nn.Module, Tokens, dict[str, Any]]:
    """A CLIP of `config` trained on `data` with freshly drawn captions every step; with `vqgan`, also on
    its reconstructions and against the `Adversary`'s paintings."""
    torch.manual_seed(settings.seed)  # module init
    g = torch.Generator().manual_seed(settings.seed)
    caption_rng = np.random.default_rng(settings.seed)
    model = build_clip(config).float().train()
    normalize = Normalize()
    tokens = Tokens(config["context_length"])
    decayed = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    kept = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": settings.weight_decay}, {"params": kept, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    adversary, reconstructed = None, None
    if vqgan is not None:
        vqgan = vqgan.float().eval().requires_grad_(False)
        reconstructed = reconstruct_first(vqgan, data, settings.reconstructed_pictures)
        adversary = Adversary(vqgan, data.scenes, settings, g, caption_rng)
    painted: torch.Tensor | None = None
    bar = tqdm(range(settings.steps), desc="clip", disable=not progress, mininterval=2.0)
    for step in bar:
        idx = torch.randint(len(data.scenes), (settings.batch,), generator=g)
        texts = world.captions_for([data.scenes[i] for i in idx.tolist()], caption_rng)
        pixels = data.floats(idx)  # (B, 3, S, S)
        if reconstructed is not None:
            shown = idx < len(reconstructed)
            pixels[shown] = reconstructed[idx[shown]].float().div(255)
        # The random draws keep this order (batch views, adversary, its paintings' views): the shipped
        # weights were trained with it.
        views = augment(pixels, settings, g)
        negatives = None
        if adversary is not None:
            if step % settings.adversary_every == 0:
                painted = adversary.paint(model, tokens, normalize)  # (M, 3, S, S)
            assert painted is not None
            negatives = model.encode_image(normalize(augment(painted, settings, g)))  # (M, D)
        image_features = model.encode_image(normalize(views))  # (B, D)
        text_features = encode_text_short(model, tokens(texts))
        same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
        loss = contrastive_loss(image_features, text_features, model.logit_scale, same, negatives)

        for group in optimizer.param_groups:
            group["lr"] = _lr(step, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    model.eval()
    stats = {"settings": asdict(settings), "final_loss": float(loss.item()), "tokens_used": len(tokens.used)}
    return model, tokens, stats


@dataclass(frozen=True)
class FadeTuning:
    """The fade stage: a trained CLIP fine-tuned on the world's pictures, some with contrast reduced."""

    seed: int = 1
    steps: int = 200
    batch: int = 128
    lr: float = 5e-5  # constant; AdamW without weight decay: a small move from the trained CLIP
    pictures: int = 4000  # the first training pictures, shown as rendered
    faded: float = 0.5  # chance that a picture in the batch is faded
    # A faded picture is 0.5 + c * (picture - 0.5), c ~ U(low, 1). Shapes are faded less: with 0.3 for
    # every kind the white circle failed (mean +0.27 against 0.3), and with 0.4 or more for every kind
    # "a red picture" failed from the grey start.
    shape_low: float = 0.6  # scenes of one or two shapes
    other_low: float = 0.3  # fills, stripes, checkerboards and dots


def fade(
    pixels: torch.Tensor, scenes: Sequence[world.Scene], settings: FadeTuning, g: torch.Generator
) -> torch.Tensor:
    """Pictures (N, 3, S, S) in [0, 1], each faded towards mid-grey with chance `settings.faded`."""
    n = pixels.shape[0]
    faded = torch.rand(n, generator=g) < settings.faded
    low = torch.tensor(
        [settings.shape_low if s.kind in ("shape", "two_shapes") else settings.other_low for s in scenes]
    )
    contrast = (low + (1 - low) * torch.rand(n, generator=g)).view(n, 1, 1, 1)
    return torch.where(faded.view(n, 1, 1, 1), 0.5 + contrast * (pixels - 0.5), pixels)


def fade_tune(
    model: nn.Module, data: WorldSet, settings: FadeTuning, progress: bool = True
) -> tuple[nn.Module, Tokens, dict[str, Any]]:
    """`model` (a trained CLIP, changed in place) fine-tuned on the first `settings.pictures` of `data`
    with freshly drawn captions, each picture faded with chance `settings.faded`; views as in training."""
    g = torch.Generator().manual_seed(settings.seed)
    caption_rng = np.random.default_rng(settings.seed)
    views_settings = ClipTraining()  # the same augmentations as the main stage
    model = model.float().train().requires_grad_(True)
    normalize = Normalize()
    tokens = Tokens(model.context_length)
    # The main stage's betas and eps. In one side-by-side pair of seed-1 runs, torch's defaults (0.999, 1e-8)
    # left the negative weight's check a smaller margin (+0.14 against +0.25); other fade seeds failed
    # with either: the recipe is seed-sensitive (MODELS.md, Limits).
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0
    )
    count = min(settings.pictures, len(data.scenes))
    bar = tqdm(range(settings.steps), desc="fade", disable=not progress, mininterval=2.0)
    loss = torch.zeros(())
    for step in bar:
        idx = torch.randint(count, (settings.batch,), generator=g)
        scenes = [data.scenes[i] for i in idx.tolist()]
        texts = world.captions_for(scenes, caption_rng)
        views = augment(fade(data.floats(idx), scenes, settings, g), views_settings, g)
        image_features = model.encode_image(normalize(views))
        text_features = encode_text_short(model, tokens(texts))
        same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
        loss = contrastive_loss(image_features, text_features, model.logit_scale, same)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval().requires_grad_(False)
    stats = {"settings": asdict(settings), "final_loss": float(loss.item()), "tokens_used": len(tokens.used)}
    return model, tokens, stats


def used_token_rows(model: nn.Module) -> set[int]:
    """Token ids whose embedding row is not zero (in a CLIP read back from a `shippable_state`)."""
    rows = model.token_embedding.weight.detach().abs().sum(1) > 0
    return {int(i) for i in rows.nonzero().flatten()}


def shippable_state(model: nn.Module, used_tokens: set[int]) -> dict[str, torch.Tensor]:
    """The state dict in fp16, with the token-embedding rows no caption ever used set to zero (they
    received no training, and zero rows compress to almost nothing in git and in wheels)."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    keep = torch.zeros(state["token_embedding.weight"].shape[0], dtype=torch.bool)
    keep[sorted(used_tokens)] = True
    state["token_embedding.weight"][~keep] = 0
    return state


@torch.no_grad()
def evaluate_clip(
    model: nn.Module,
    held_out: WorldSet,
    texts: Sequence[str],
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Caption retrieval among the held-out pictures' distinct full captions (chance 1/len(texts)).
    `transform` maps pictures first (e.g. through the VQGAN, as the engine shows CLIP decoded pictures)."""
    pixels = held_out.floats(slice(0, len(texts)))
    if transform is not None:
        pixels = transform(pixels)
    image_features = F.normalize(model.encode_image(Normalize()(pixels)).float(), dim=-1)
    tokens = import_clip().tokenize(list(texts), context_length=model.context_length)
    text_features = F.normalize(model.encode_text(tokens).float(), dim=-1)
    similarity = image_features @ text_features.T  # (N, N); the diagonal is the true pairs
    truth = torch.arange(len(texts))
    ranks = (similarity > similarity[truth, truth][:, None]).sum(1)  # texts scored above the true one
    ranks_t = (similarity[truth, truth][:, None] < similarity.T).sum(1)
    return {
        "candidates": len(texts),
        "image_to_text_top1": float((ranks == 0).float().mean()),
        "image_to_text_top5": float((ranks < 5).float().mean()),
        "text_to_image_top1": float((ranks_t == 0).float().mean()),
        "chance_top1": 1 / len(texts),
    }


@torch.no_grad()
def colour_accuracy(model: nn.Module, size: int = 64) -> dict[str, Any]:
    """Plain fills of each palette colour against the prompts "a <colour> picture": fraction right."""
    pictures = torch.tensor(
        [[rgb] for rgb in world.PALETTE.values()], dtype=torch.float32
    )  # (C, 1, 3) in 0..255
    pixels = (pictures / 255).view(-1, 3, 1, 1).expand(-1, 3, size, size)
    image_features = F.normalize(model.encode_image(Normalize()(pixels)).float(), dim=-1)
    prompts = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} picture" for c in world.PALETTE]
    tokens = import_clip().tokenize(prompts, context_length=model.context_length)
    text_features = F.normalize(model.encode_text(tokens).float(), dim=-1)
    right = (image_features @ text_features.T).argmax(1) == torch.arange(len(prompts))
    return {"colours": len(prompts), "accuracy": float(right.float().mean())}
