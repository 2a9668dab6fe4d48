"""Train the toyworld VQGAN: taming's Encoder/Decoder and a codebook, to reconstruct the toy world.

Loss: L1 + MSE on pixels in [-1, 1], plus the VQ-VAE codebook and commitment terms (straight-through
gradient to the encoder). No perceptual or adversarial loss: the world is flat colours and sharp edges.
Codes unused for `restart_every` steps are restarted on random encoder outputs, so the codebook stays
alive. Most steps see 32x32 crops (4x cheaper; the network is convolutional), the last ones whole
pictures so the mid-block attention trains on the 8x8 grid it will see in use.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from toyworld.data import WorldSet
from worker.models import VQGAN, build_vqgan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VqganTraining:
    seed: int = 0
    steps: int = 2000
    full_from: float = 0.9  # fraction of steps after which batches are whole pictures, not crops
    batch: int = 24
    crop: int = 32  # side of the training crops, a multiple of the downsampling factor
    lr: float = 1e-3
    min_lr: float = 5e-5  # cosine decay target
    warmup: int = 100
    beta: float = 0.25  # commitment weight, as in VQ-VAE and taming
    restart_every: int = 100  # steps between restarts of unused codes


def quantize(z_e: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest codes for z_e (B, C, h, w): straight-through z_q, indices (B*h*w,), [codebook, commit] loss."""
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])  # (B*h*w, C)
    d = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.T  # (B*h*w, K)
    indices = d.argmin(1)
    z_q = codebook[indices].view(z_e.shape[0], z_e.shape[2], z_e.shape[3], -1).permute(0, 3, 1, 2)
    losses = torch.stack([F.mse_loss(z_q, z_e.detach()), F.mse_loss(z_e, z_q.detach())])  # codebook, commit
    return z_e + (z_q - z_e).detach(), indices, losses


def _lr(step: int, settings: VqganTraining) -> float:
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.min_lr + 0.5 * (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * progress))


def _batch(data: WorldSet, settings: VqganTraining, full: bool, g: torch.Generator) -> torch.Tensor:
    """A batch in [-1, 1]: whole pictures, or crops aligned to the code grid."""
    idx = torch.randint(len(data.scenes), (settings.batch,), generator=g)
    pixels = data.floats(idx) * 2 - 1  # (B, 3, S, S)
    if full:
        return pixels
    side, crop = pixels.shape[-1], settings.crop
    cells = (side - crop) // 8 + 1
    ox, oy = (torch.randint(cells, (settings.batch,), generator=g) * 8 for _ in range(2))
    return torch.stack(
        [p[:, y : y + crop, x : x + crop] for p, x, y in zip(pixels, ox.tolist(), oy.tolist(), strict=True)]
    )


def _restart_dead_codes(
    codebook: torch.Tensor, usage: torch.Tensor, z_e: torch.Tensor, g: torch.Generator
) -> int:
    """Move codes unused since the last restart onto random encoder outputs of this batch."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead):
        flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        pick = torch.randint(len(flat), (len(dead),), generator=g)
        codebook.data[dead] = flat[pick] + 0.01 * torch.randn(len(dead), flat.shape[1], generator=g)
    usage.zero_()
    return len(dead)


def train_vqgan(
    data: WorldSet, config: dict[str, Any], settings: VqganTraining, progress: bool = True
) -> tuple[VQGAN, dict[str, Any]]:
    """A VQGAN of `config` trained on `data`; returns it (float32, eval mode) and training stats."""
    torch.manual_seed(settings.seed)  # module init
    g = torch.Generator().manual_seed(settings.seed)
    model = build_vqgan(config).train()
    codebook = model.quantize.embedding.weight
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    usage = torch.zeros(codebook.shape[0], dtype=torch.long)
    full_from = int(settings.steps * settings.full_from)
    restarted = 0
    bar = tqdm(range(settings.steps), desc="vqgan", disable=not progress, mininterval=2.0)
    for step in bar:
        x = _batch(data, settings, step >= full_from, g)  # (B, 3, s, s)
        z_e = model.quant_conv(model.encoder(x))  # (B, C, s/8, s/8)
        if step == 0:  # start the codebook on encoder outputs: no code starts dead
            with torch.no_grad():
                flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
                codebook.data.copy_(flat[torch.randint(len(flat), (codebook.shape[0],), generator=g)])
        z_q, indices, vq_losses = quantize(z_e, codebook)
        usage += torch.bincount(indices, minlength=codebook.shape[0])
        out = model.decoder(model.post_quant_conv(z_q))  # (B, 3, s, s)
        recon = F.l1_loss(out, x) + F.mse_loss(out, x)
        loss = recon + vq_losses[0] + settings.beta * vq_losses[1]

        for group in optimizer.param_groups:
            group["lr"] = _lr(step, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % settings.restart_every == 0 and step + 1 < settings.steps:
            with torch.no_grad():
                restarted += _restart_dead_codes(codebook, usage, z_e, g)
        if step % 20 == 0:
            bar.set_postfix(recon=f"{recon.item():.4f}", vq=f"{vq_losses.sum().item():.4f}")
    model.eval()
    stats = {
        "settings": asdict(settings),
        "final_recon_loss": float(recon.item()),
        "codes_restarted": restarted,
    }
    return model, stats


@torch.no_grad()
def reconstruct(model: VQGAN, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (N, 3, S, S) in [0, 1] through encoder, nearest codes and decoder, clamped to [0, 1]."""
    z_e = model.quant_conv(model.encoder(pixels * 2 - 1))
    z_q, _, _ = quantize(z_e, model.quantize.embedding.weight)
    return model.decoder(model.post_quant_conv(z_q)).add(1).div(2).clamp(0, 1)


@torch.no_grad()
def evaluate_vqgan(model: VQGAN, held_out: WorldSet, batch: int = 100) -> dict[str, float]:
    """Reconstruction MSE and PSNR (pixels in [0, 1]) on held-out pictures; codes in use."""
    squared, used = 0.0, torch.zeros(model.quantize.embedding.weight.shape[0], dtype=torch.bool)
    count = len(held_out.scenes)
    for start in range(0, count, batch):
        pixels = held_out.floats(slice(start, start + batch))
        squared += F.mse_loss(reconstruct(model, pixels), pixels, reduction="sum").item()
        z_e = model.quant_conv(model.encoder(pixels * 2 - 1))
        used[quantize(z_e, model.quantize.embedding.weight)[1]] = True
    mse = squared / held_out.images[:count].numel()
    return {
        "pictures": count,
        "mse": mse,
        "psnr_db": 10 * math.log10(1 / mse),
        "codes_used": int(used.sum()),
        "codebook_abs_max": float(model.quantize.embedding.weight.abs().max()),
    }
