"""Pieces of the toyworld training: text shortcut, augmentation, losses, quantiser, determinism."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toyworld import world
from toyworld.data import distinct_caption_set, render_set
from toyworld.train_clip import (
    Adversary,
    ClipTraining,
    FadeTuning,
    Tokens,
    augment,
    contrastive_loss,
    encode_text_short,
    fade,
    fade_tune,
    shippable_state,
    train_clip,
    used_token_rows,
)
from toyworld.train_vqgan import VqganTraining, quantize, train_vqgan
from worker.models import (
    Normalize,
    build_clip,
    clip_from_state,
    import_clip,
    load_clip,
    load_vqgan,
    sha256_file,
)
from worker.toyworld import spec

SMALL_CLIP = {**spec.CLIP_CONFIG, "vision_layers": 1, "transformer_layers": 1, "vision_width": 64}


@torch.no_grad()
def test_short_text_encoding_equals_clips_own() -> None:
    torch.manual_seed(0)
    model = build_clip(SMALL_CLIP).float().eval()
    tokens = import_clip().tokenize(["a red circle", "a small green square on the left on a blue background"])
    torch.testing.assert_close(
        encode_text_short(model, tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5
    )


def test_augmentation_never_mirrors_left_and_right() -> None:
    pictures = torch.zeros(64, 3, 64, 64)
    pictures[..., :32] = 1.0  # light on the left
    views = augment(pictures, ClipTraining(noise=0.0), torch.Generator().manual_seed(0))
    assert (views[..., :24].mean((1, 2, 3)) > views[..., 40:].mean((1, 2, 3)) + 0.5).all()


def test_augmentation_changes_the_views() -> None:
    pictures = torch.from_numpy(world.sample(0, 1).image).permute(2, 0, 1)[None].float().div(255)
    views = augment(pictures.expand(4, -1, -1, -1), ClipTraining(), torch.Generator().manual_seed(0))
    assert views.shape == (4, 3, 64, 64)
    assert not torch.allclose(views[0], views[1])


def test_contrastive_loss_prefers_matching_pairs_and_shares_duplicates() -> None:
    features = torch.eye(4)
    scale = torch.tensor(2.0)
    same = torch.eye(4)
    assert contrastive_loss(features, features, scale, same) < contrastive_loss(
        features, features.roll(1, 0), scale, same
    )
    # Two pictures with one caption: both texts are right for both, so swapping them costs nothing.
    same[0, 1] = same[1, 0] = 1
    swapped = features[[1, 0, 2, 3]]
    torch.testing.assert_close(
        contrastive_loss(features, swapped, scale, same), contrastive_loss(features, features, scale, same)
    )


def test_negatives_that_look_like_a_caption_cost_more_than_unrelated_ones() -> None:
    features, scale, same = torch.eye(4, 8), torch.tensor(2.0), torch.eye(4)
    plain = contrastive_loss(features, features, scale, same)
    unrelated = contrastive_loss(features, features, scale, same, negatives=torch.eye(8)[4:6])
    lookalike = contrastive_loss(features, features, scale, same, negatives=features[:2].clone())
    assert plain < unrelated < lookalike


def test_the_adversary_paints_towards_its_captions_and_restarts() -> None:
    vqgan = load_vqgan(spec.VQGAN_CONFIG, spec.WEIGHTS_DIR / spec.VQGAN_FILE).float().eval()
    clip_model = load_clip(spec.WEIGHTS_DIR / spec.CLIP_FILE, expected=spec.CLIP_CONFIG).float().eval()
    scenes = world.scenes(0, range(50))
    settings = ClipTraining(adversary_pool=4, adversary_batch=4, adversary_lifetime=8, noise=0.0)
    adversary = Adversary(vqgan, scenes, settings, torch.Generator().manual_seed(0), np.random.default_rng(0))
    adversary.age.zero_()  # all start now, so none restarts during the first 7 updates
    tokens, normalize = Tokens(spec.CLIP_CONFIG["context_length"]), Normalize()

    def distance() -> float:
        with torch.no_grad():
            targets = F.normalize(encode_text_short(clip_model, tokens(adversary.captions)), dim=-1)
            pictures = adversary.decode(adversary.z)
            features = F.normalize(clip_model.encode_image(normalize(pictures)), dim=-1)
            return float((features - targets).norm(dim=-1).mean())

    before, z_start = distance(), adversary.z.clone()
    pictures = [adversary.paint(clip_model, tokens, normalize) for _ in range(7)]
    assert pictures[0].shape == (4, 3, 64, 64) and pictures[0].min() >= 0 and pictures[0].max() <= 1
    assert distance() < before  # seven Adam steps towards each caption
    assert not torch.equal(adversary.z, z_start) and (adversary.age == 7).all()
    captions = list(adversary.captions)
    adversary.paint(clip_model, tokens, normalize)  # the eighth update ends every latent's life
    assert (adversary.age == 0).all()
    assert adversary.captions != captions or not torch.equal(adversary.z, z_start)


def test_quantize_picks_the_nearest_code_and_passes_gradients_straight_through() -> None:
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    z = torch.tensor([[0.9, 1.2], [-1.5, 0.1]]).T.reshape(1, 2, 1, 2).requires_grad_(True)
    z_q, indices, _ = quantize(z, codebook)
    assert indices.tolist() == [1, 2]
    torch.testing.assert_close(z_q.detach().reshape(2, 2).T, codebook[[1, 2]])
    z_q.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def test_tokens_records_the_ids_used_and_unused_rows_ship_as_zero() -> None:
    tokens = Tokens(77)
    rows = tokens(["a red circle", "a red circle"])
    assert rows.shape == (2, 77)
    assert tokens.used == {int(i) for i in rows[0] if i > 0}
    torch.manual_seed(0)
    state = shippable_state(build_clip(SMALL_CLIP), tokens.used)
    embedding = state["token_embedding.weight"]
    assert embedding.dtype == torch.float16
    assert int((embedding.abs().sum(1) > 0).sum()) == len(tokens.used)


def test_fading_pulls_pictures_towards_grey_by_their_kinds_bounds() -> None:
    data = render_set(0, 0, 400)
    pixels = data.floats(slice(None))
    settings = FadeTuning(faded=1.0, shape_low=0.6, other_low=0.3)
    faded = fade(pixels, data.scenes, settings, torch.Generator().manual_seed(0))
    # Per picture, the contrast left: (faded - 0.5) / (picture - 0.5), over pixels away from grey
    # (pictures with none, such as a grey fill, are left out).
    away = (pixels - 0.5).abs() > 0.1
    measurable = away.flatten(1).any(1)
    ratio = torch.stack(
        [
            ((f - 0.5)[a] / (p - 0.5)[a]).median()
            for f, p, a in zip(faded, pixels, away, strict=True)
            if a.any()
        ]
    )
    shapes = torch.tensor([s.kind in ("shape", "two_shapes") for s in data.scenes])[measurable]
    assert 0 < int(shapes.sum()) < len(shapes)
    assert float(ratio[shapes].min()) >= 0.6 - 1e-5 and float(ratio[~shapes].min()) >= 0.3 - 1e-5
    assert float(ratio[~shapes].min()) < 0.45 and float(ratio.max()) <= 1 + 1e-5  # the range is used
    untouched = fade(pixels, data.scenes, replace(settings, faded=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(untouched, pixels)
    half = fade(pixels, data.scenes, replace(settings, faded=0.5), torch.Generator().manual_seed(0))
    kept = (half == pixels).flatten(1).all(1).float().mean()
    assert 0.4 < float(kept) < 0.6


@pytest.mark.slow
def test_fade_tuning_is_deterministic_moves_the_model_and_keeps_unused_rows_zero() -> None:
    data = render_set(0, 0, 64)
    settings = FadeTuning(steps=2, batch=16, pictures=64)
    torch.manual_seed(0)
    tokens = Tokens(77)
    tokens(world.captions_for(data.scenes, np.random.default_rng(0)))
    base_state = shippable_state(build_clip(SMALL_CLIP), tokens.used)

    def tuned() -> dict[str, torch.Tensor]:
        model, _, stats = fade_tune(clip_from_state(base_state), data, settings, progress=False)
        assert np.isfinite(stats["final_loss"])
        return model.state_dict()

    a, b = tuned(), tuned()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.conv1.weight"], base_state["visual.conv1.weight"].float())
    model = clip_from_state(a)
    assert used_token_rows(model) <= tokens.used  # rows no caption uses got no gradient: still zero


def test_distinct_caption_set_has_distinct_full_captions() -> None:
    pictures, texts = distinct_caption_set(0, 30)
    assert len(set(texts)) == 30 and pictures.images.shape == (30, 3, 64, 64)


@pytest.mark.slow
def test_vqgan_training_is_deterministic() -> None:
    data = render_set(0, 0, 32)
    settings = VqganTraining(steps=3, warmup=1, batch=4, restart_every=2)
    a, _ = train_vqgan(data, spec.VQGAN_CONFIG, settings, progress=False)
    b, _ = train_vqgan(data, spec.VQGAN_CONFIG, settings, progress=False)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute alone; a loaded 2-core machine takes several
def test_quick_training_run_writes_loadable_files(tmp_path: Path) -> None:
    from toyworld.train import main

    argv = ["--quick", "--no-progress", "--out", str(tmp_path), "--held-out-pictures", "50"]
    assert main([*argv, "--adversary-lifetime", "2"]) == 0
    manifest = json.loads((tmp_path / spec.MANIFEST_FILE).read_text())
    for name, entry in manifest["files"].items():
        assert sha256_file(tmp_path / name) == entry["sha256"]
    assert manifest["evaluation"]["clip_retrieval"]["candidates"] == 100
    assert manifest["clip_training"]["settings"]["adversary_lifetime"] == 2  # the flag beats --quick's 3
    assert manifest["clip_fade_tuning"]["settings"]["steps"] == 3
    load_vqgan(spec.VQGAN_CONFIG, tmp_path / spec.VQGAN_FILE)
    load_clip(tmp_path / spec.CLIP_FILE, expected=spec.CLIP_CONFIG)

    # The main stage's CLIP, written without the fade stage, has the SHA-256 the manifest records for it;
    # fade-tuning that file (--base-clip) writes the same CLIP as the whole run did.
    faded_sha = manifest["files"][spec.CLIP_FILE]["sha256"]
    base = tmp_path / "base"
    base.mkdir()
    (base / spec.VQGAN_FILE).write_bytes((tmp_path / spec.VQGAN_FILE).read_bytes())
    common = ["--quick", "--no-progress", "--held-out-pictures", "50", "--adversary-lifetime", "2"]
    assert main([*common, "--out", str(base), "--reuse-vqgan", "--fade-steps", "0"]) == 0
    assert sha256_file(base / spec.CLIP_FILE) == manifest["clip_training"]["base_sha256"]
    again = tmp_path / "again"
    again.mkdir()
    (again / spec.VQGAN_FILE).write_bytes((tmp_path / spec.VQGAN_FILE).read_bytes())
    reuse = ["--reuse-vqgan", "--base-clip", str(base / spec.CLIP_FILE)]
    assert main([*common, "--out", str(again), *reuse]) == 0
    assert sha256_file(again / spec.CLIP_FILE) == faded_sha


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fade-steps", "-1"], "--fade-steps must be 0 or more"),
        (["--base-clip", "/nonexistent/clip.safetensors"], "no such file"),
        (["--reuse-vqgan"], "does not exist"),
    ],
)
def test_training_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    from toyworld.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_clip_training_is_deterministic_and_its_seed_changes_it() -> None:
    data = render_set(0, 0, 64)
    settings = ClipTraining(steps=2, warmup=1, batch=16)

    def weights(seed: int) -> dict[str, torch.Tensor]:
        model, _, _ = train_clip(data, spec.CLIP_CONFIG, replace(settings, seed=seed), False)
        return model.state_dict()

    plain, again, other_seed = weights(0), weights(0), weights(1)
    assert all(torch.equal(plain[k], again[k]) for k in plain)
    assert not all(torch.equal(plain[k], other_seed[k]) for k in plain)
