"""The shipped toyworld files: pinned hashes, the manifest, and loading through the preset loaders."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from toyworld import world
from toyworld.data import HELD_OUT_START
from worker import models
from worker.models import ChecksumMismatch, get_preset, load_models, sha256_file, weights_present
from worker.toyworld import spec

FILES = {spec.VQGAN_FILE: spec.VQGAN_SHA256, spec.CLIP_FILE: spec.CLIP_SHA256}


@pytest.fixture(scope="module")
def toyworld() -> models.LoadedModels:
    return load_models("toyworld", Path("/nonexistent-models-dir"), "cpu")  # bundled: models_dir unused


@pytest.mark.parametrize("filename", sorted(FILES))
def test_shipped_files_match_their_pinned_sha256(filename: str) -> None:
    assert len(FILES[filename]) == 64
    assert sha256_file(spec.WEIGHTS_DIR / filename) == FILES[filename]


def test_manifest_records_the_same_files_and_configs() -> None:
    manifest = json.loads((spec.WEIGHTS_DIR / spec.MANIFEST_FILE).read_text())
    assert {name: f["sha256"] for name, f in manifest["files"].items()} == FILES
    assert manifest["vqgan_config"] == spec.VQGAN_CONFIG
    assert manifest["clip_config"] == spec.CLIP_CONFIG


def test_shipped_files_stay_small() -> None:
    total = sum((spec.WEIGHTS_DIR / name).stat().st_size for name in FILES)
    assert total < 16 * 2**20


def test_the_preset_points_at_the_shipped_files() -> None:
    preset = get_preset("toyworld")
    assert preset.weights_dir(Path("/elsewhere")) == spec.WEIGHTS_DIR
    assert {f.filename: f.sha256 for f in preset.files()} == FILES
    assert weights_present("toyworld", Path("/elsewhere"))
    # Its CLIP was fade-tuned for a grey start; every other preset starts from random codes.
    assert preset.noise_init == "pixels"
    assert {p.noise_init for p in models.PRESETS.values() if p.name != "toyworld"} == {"codes"}


def test_loads_into_the_preset_architectures(toyworld: models.LoadedModels) -> None:
    assert toyworld.vqgan.factor == 8
    assert toyworld.clip_size == spec.CLIP_CONFIG["image_resolution"]
    assert toyworld.vqgan.codebook.shape == (spec.VQGAN_CONFIG["n_embed"], spec.VQGAN_CONFIG["embed_dim"])
    assert toyworld.clip.context_length == 77
    assert all(p.dtype == torch.float32 for p in toyworld.clip.parameters())  # fp16 files, upcast on load


@torch.no_grad()
def test_the_vqgan_reconstructs_held_out_pictures(toyworld: models.LoadedModels) -> None:
    from toyworld.train_vqgan import reconstruct

    pictures = torch.stack(
        [
            torch.from_numpy(world.sample(0, HELD_OUT_START + i).image).permute(2, 0, 1).float() / 255
            for i in range(16)
        ]
    )
    mse = torch.mean((reconstruct(toyworld.vqgan, pictures) - pictures) ** 2).item()
    assert mse < 0.005  # PSNR above 23 dB; an untrained VQGAN is near 0.1


@torch.no_grad()
def test_clip_tells_plain_colours_apart(toyworld: models.LoadedModels) -> None:
    from toyworld.train_clip import colour_accuracy

    assert colour_accuracy(toyworld.clip)["accuracy"] >= 0.9


def test_a_tampered_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FILES:
        shutil.copy(spec.WEIGHTS_DIR / name, tmp_path / name)
    path = tmp_path / spec.CLIP_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    preset = get_preset("toyworld")
    monkeypatch.setitem(models.PRESETS, "toyworld", replace(preset, bundled_dir=tmp_path))
    with pytest.raises(ChecksumMismatch):
        load_models("toyworld", tmp_path, "cpu")
