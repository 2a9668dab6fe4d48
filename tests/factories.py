"""Shared test factories: small model configs and checkpoint writers in the real on-disk formats."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Small but real architectures: taming's GroupNorm needs channels divisible by 32.
SMALL_VQGAN_CONFIG: dict[str, Any] = {
    "embed_dim": 8,
    "n_embed": 16,
    "ddconfig": {
        "double_z": False, "z_channels": 8, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16], "dropout": 0.0,
    },
}  # fmt: skip
SMALL_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32, "image_resolution": 32, "vision_layers": 1, "vision_width": 64, "vision_patch_size": 16,
    "context_length": 77, "vocab_size": 49408, "transformer_width": 64, "transformer_heads": 1,
    "transformer_layers": 1,
}  # fmt: skip


class TrainerJunk:
    """Stands for the trainer objects real Lightning checkpoints pickle; weights_only=True refuses it."""

    def __init__(self) -> None:
        self.monitor = "val/rec_loss"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_vqgan(seed: int = 0) -> nn.Module:
    from worker.models import build_vqgan

    torch.manual_seed(seed)
    model = build_vqgan(SMALL_VQGAN_CONFIG).eval()
    with torch.no_grad():  # spread the codebook, as a trained one is
        model.quantize.embedding.weight.normal_()
    return model


def small_clip(seed: int = 0) -> nn.Module:
    from worker.models import build_clip

    torch.manual_seed(seed)
    return build_clip(SMALL_CLIP_CONFIG).float().eval()


def write_lightning_ckpt(path: Path, vqgan: nn.Module, unpicklable_junk: bool = False) -> Path:
    """A taming-style Lightning checkpoint: state_dict with loss.* entries, plus trainer state."""
    state = {k: v.clone() for k, v in vqgan.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    state["loss.logvar"] = torch.zeros(())
    ckpt: dict[str, Any] = {
        "epoch": 3,
        "global_step": 12345,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": state,
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 4.5e-6}]}],
        "lr_schedulers": [],
        "callbacks": {
            "ModelCheckpoint": {"best_model_score": torch.tensor(0.5), "best_model_path": "x.ckpt"}
        },
        "hyper_parameters": {"embed_dim": SMALL_VQGAN_CONFIG["embed_dim"]},
    }
    if unpicklable_junk:
        ckpt["hparams"] = TrainerJunk()
    torch.save(ckpt, path)
    return path


def write_vqgan_yaml(path: Path, config: dict[str, Any] = SMALL_VQGAN_CONFIG) -> Path:
    """taming's model.yaml layout (model.target / model.params.{embed_dim, n_embed, ddconfig, lossconfig})."""
    from omegaconf import OmegaConf

    document = {
        "model": {
            "base_learning_rate": 4.5e-6,
            "target": "taming.models.vqgan.VQModel",
            "params": {
                **config,
                "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"},
            },
        }
    }
    OmegaConf.save(OmegaConf.create(document), path)
    return path


def write_clip_state_dict(path: Path, clip_model: nn.Module) -> Path:
    torch.save(clip_model.state_dict(), path)
    return path


def write_clip_torchscript(path: Path, clip_model: nn.Module) -> Path:
    """A traced archive, the way OpenAI ships CLIP checkpoints."""
    size = clip_model.visual.input_resolution
    image = torch.rand(1, 3, size, size)
    text = torch.randint(0, 100, (1, clip_model.context_length))
    with torch.no_grad():
        traced = torch.jit.trace(clip_model, (image, text), check_trace=False)
    torch.jit.save(traced, str(path))
    return path


def file_preset(name: str, folder: Path, files: dict[str, str | None], yaml: str | None = None) -> Any:
    """A Preset over files in `folder` (bundled_dir): {"vqgan": filename, "clip": filename} -> sha or None."""
    from worker.models import ClipSpec, Preset, VqganSpec, WeightFile

    (vq_name, vq_sha), (clip_name, clip_sha) = files.items()
    return Preset(
        name=name,
        description="test preset",
        vqgan=VqganSpec(
            config=SMALL_VQGAN_CONFIG,
            checkpoint=WeightFile(vq_name, sha256=vq_sha),
            config_file=WeightFile(yaml) if yaml else None,
        ),
        clip=ClipSpec(
            variant="small", config=SMALL_CLIP_CONFIG, checkpoint=WeightFile(clip_name, sha256=clip_sha)
        ),
        bundled_dir=folder,
    )
