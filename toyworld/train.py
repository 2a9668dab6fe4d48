"""Train both toyworld models, save them, reload them through the preset loaders and print evaluations.

    python -m toyworld.train --out worker/toyworld     # reproduce the shipped files
    python -m toyworld.train --quick --out out/quick     # a fast smoke run (meaningless figures)

CLIP is trained in two stages: the main one (`train_clip`, about 30 minutes) and a short fade stage
(`fade_tune`, about 2 minutes) on its fp16 weights. `--base-clip FILE` skips the main stage and fade-tunes
FILE (the main stage's output); `--fade-steps 0` skips the fade stage.

Writes toyworld_vqgan.safetensors, toyworld_clip.safetensors and manifest.json (configs, SHA-256s,
settings, figures) into --out. Everything is drawn from --seed; the figures printed are measured on the
files as written (fp16), loaded by worker.models.load_vqgan / load_clip like any real checkpoint.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from toyworld.data import HELD_OUT_START, distinct_caption_set, render_set
from toyworld.train_clip import (
    ClipTraining,
    FadeTuning,
    colour_accuracy,
    evaluate_clip,
    fade_tune,
    shippable_state,
    train_clip,
    used_token_rows,
)
from toyworld.train_vqgan import VqganTraining, evaluate_vqgan, reconstruct, train_vqgan
from worker.models import clip_from_state, load_clip, load_vqgan, sha256_file
from worker.toyworld import spec

log = logging.getLogger(__name__)


def _save(state: dict[str, torch.Tensor], path: Path) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return sha256_file(path)


def _state_sha256(state: dict[str, torch.Tensor]) -> str:
    """The SHA-256 the state's file would have (`_save` writes the same bytes)."""
    from safetensors.torch import save

    return hashlib.sha256(save({k: v.contiguous() for k, v in state.items()})).hexdigest()


def run(
    out: Path,
    seed: int,
    train_pictures: int,
    held_out_pictures: int,
    vqgan_settings: VqganTraining,
    clip_settings: ClipTraining,
    fade_settings: FadeTuning,
    progress: bool = True,
    reuse_vqgan: bool = False,
    base_clip: Path | None = None,
) -> dict[str, Any]:
    """Train, save, reload and evaluate; returns the manifest written to out/manifest.json.
    reuse_vqgan: keep the VQGAN file already in `out` (its training is deterministic) and train CLIP only.
    base_clip: a file of CLIP's main stage (its training is deterministic too) to fade-tune instead of
    training one. fade_settings.steps == 0: no fade stage, the main stage's CLIP is the one written."""
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    train_set = render_set(seed, 0, train_pictures)
    held_out = render_set(seed, HELD_OUT_START, held_out_pictures)
    retrieval_set, retrieval_texts = distinct_caption_set(seed, 100)
    timings["render_s"] = time.perf_counter() - started

    if reuse_vqgan:
        vqgan_sha = sha256_file(out / spec.VQGAN_FILE)
        vqgan_stats: dict[str, Any] = {"settings": asdict(vqgan_settings), "reused_file": vqgan_sha}
    else:
        started = time.perf_counter()
        vqgan, vqgan_stats = train_vqgan(train_set, spec.VQGAN_CONFIG, vqgan_settings, progress)
        timings["vqgan_s"] = time.perf_counter() - started
        vqgan_state = {k: v.detach().to(torch.float16) for k, v in vqgan.state_dict().items()}
        vqgan_sha = _save(vqgan_state, out / spec.VQGAN_FILE)

    if base_clip is not None:
        base_sha = sha256_file(base_clip)
        clip_model = load_clip(base_clip, expected=spec.CLIP_CONFIG)
        clip_stats: dict[str, Any] = {"settings": asdict(clip_settings), "reused_file": base_sha}
    else:
        started = time.perf_counter()
        # CLIP trains against the VQGAN as shipped (fp16 weights read back), the one the engine will use.
        decoder = load_vqgan(spec.VQGAN_CONFIG, out / spec.VQGAN_FILE).float().eval()
        trained, tokens, clip_stats = train_clip(
            train_set, spec.CLIP_CONFIG, clip_settings, progress, vqgan=decoder
        )
        timings["clip_s"] = time.perf_counter() - started
        # The main stage's CLIP as it would ship (fp16, unused token rows zero), so that the fade stage
        # starts from the same weights here as from that file given to --base-clip.
        base_state = shippable_state(trained, tokens.used)
        base_sha = _state_sha256(base_state)
        clip_model = clip_from_state(base_state)
    clip_stats["base_sha256"] = base_sha  # the main stage's CLIP file
    fade_stats: dict[str, Any] = {"settings": asdict(fade_settings)}
    used = used_token_rows(clip_model)
    if fade_settings.steps:
        started = time.perf_counter()
        clip_model, fade_tokens, fade_stats = fade_tune(clip_model, train_set, fade_settings, progress)
        timings["fade_s"] = time.perf_counter() - started
        used |= fade_tokens.used
    clip_sha = _save(shippable_state(clip_model, used), out / spec.CLIP_FILE)

    # Evaluate the files as shipped, read back through the same loaders as real checkpoints.
    shipped_vqgan = load_vqgan(spec.VQGAN_CONFIG, out / spec.VQGAN_FILE).float().eval()
    shipped_clip = load_clip(out / spec.CLIP_FILE, expected=spec.CLIP_CONFIG).float().eval()
    evaluation = {
        "vqgan_reconstruction": evaluate_vqgan(shipped_vqgan, held_out),
        "clip_retrieval": evaluate_clip(shipped_clip, retrieval_set, retrieval_texts),
        "clip_retrieval_on_vqgan_reconstructions": evaluate_clip(
            shipped_clip, retrieval_set, retrieval_texts, lambda x: reconstruct(shipped_vqgan, x)
        ),
        "clip_plain_colours": colour_accuracy(shipped_clip),
    }
    manifest = {
        "seed": seed,
        "train_pictures": train_pictures,
        "held_out_pictures": held_out_pictures,
        "held_out_start_index": HELD_OUT_START,
        "files": {
            spec.VQGAN_FILE: {"sha256": vqgan_sha, "bytes": (out / spec.VQGAN_FILE).stat().st_size},
            spec.CLIP_FILE: {"sha256": clip_sha, "bytes": (out / spec.CLIP_FILE).stat().st_size},
        },
        "vqgan_config": spec.VQGAN_CONFIG,
        "clip_config": spec.CLIP_CONFIG,
        "vqgan_training": vqgan_stats,
        "clip_training": clip_stats,
        "clip_fade_tuning": fade_stats,
        "evaluation": evaluation,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "command": "python -m toyworld.train " + " ".join(sys.argv[1:]),
    }
    (out / spec.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _report(manifest: dict[str, Any]) -> str:
    ev = manifest["evaluation"]
    rec, ret, ret_vq = (
        ev["vqgan_reconstruction"],
        ev["clip_retrieval"],
        ev["clip_retrieval_on_vqgan_reconstructions"],
    )
    lines = [
        f"VQGAN reconstruction on {rec['pictures']} held-out pictures: MSE {rec['mse']:.5f}, "
        f"PSNR {rec['psnr_db']:.2f} dB, {rec['codes_used']}/{spec.VQGAN_CONFIG['n_embed']} codes used",
        f"CLIP caption retrieval, {ret['candidates']} held-out pictures with distinct captions "
        f"(chance {ret['chance_top1']:.0%}): image->text top-1 {ret['image_to_text_top1']:.0%}, "
        f"top-5 {ret['image_to_text_top5']:.0%}, text->image top-1 {ret['text_to_image_top1']:.0%}",
        f"  same, on VQGAN reconstructions: image->text top-1 {ret_vq['image_to_text_top1']:.0%}, "
        f"top-5 {ret_vq['image_to_text_top5']:.0%}, text->image top-1 {ret_vq['text_to_image_top1']:.0%}",
        f"CLIP plain colours (a <colour> picture, {ev['clip_plain_colours']['colours']} colours): "
        f"{ev['clip_plain_colours']['accuracy']:.0%}",
        f"time: {manifest['timings_s']}",
    ]
    lines += [f"{name}  sha256 {f['sha256']}  {f['bytes']} bytes" for name, f in manifest["files"].items()]
    return "\n".join(lines)


def _fixed_mmap_threshold() -> None:
    """Allocations over 1 MiB always come from mmap and go back to the OS when freed. glibc's adaptive
    threshold otherwise moves the dense 12 MB token-embedding gradients of every step onto the heap,
    which fragments: the process grew by about 12 MB a step (10 GB by step 800)."""
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # -3: M_MMAP_THRESHOLD


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("out/toyworld"), help="folder for the files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the figures used 2)")
    parser.add_argument("--train-pictures", type=int, default=16000)
    parser.add_argument("--held-out-pictures", type=int, default=500)
    parser.add_argument("--vqgan-steps", type=int, default=VqganTraining.steps)
    parser.add_argument("--clip-steps", type=int, default=ClipTraining.steps)
    parser.add_argument(
        "--adversary-lifetime",
        type=int,
        default=None,
        help=f"updates an adversary painting gets before it restarts from random codes "
        f"(default {ClipTraining.adversary_lifetime}; 3 with --quick)",
    )
    parser.add_argument(
        "--fade-steps",
        type=int,
        default=FadeTuning.steps,
        help="steps of the fade stage (0 skips it: the main stage's CLIP is written)",
    )
    parser.add_argument(
        "--base-clip",
        type=Path,
        default=None,
        help="skip CLIP's main stage and fade-tune this file (a CLIP the main stage wrote)",
    )
    parser.add_argument("--quick", action="store_true", help="a few steps of each: checks the pipeline only")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--reuse-vqgan", action="store_true", help="keep the VQGAN file in --out and train CLIP only"
    )
    args = parser.parse_args(argv)
    if args.fade_steps < 0:
        parser.error(f"--fade-steps must be 0 or more, not {args.fade_steps}")
    if args.base_clip is not None and not args.base_clip.is_file():
        parser.error(f"--base-clip {args.base_clip}: no such file")
    if args.reuse_vqgan and not (args.out / spec.VQGAN_FILE).is_file():
        parser.error(f"--reuse-vqgan: {args.out / spec.VQGAN_FILE} does not exist")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    torch.set_num_threads(args.threads)
    _fixed_mmap_threshold()
    vqgan_settings = VqganTraining(seed=args.seed, steps=args.vqgan_steps)
    clip_settings = ClipTraining(seed=args.seed, steps=args.clip_steps)
    fade_settings = FadeTuning(steps=args.fade_steps)
    train_pictures = args.train_pictures
    if args.quick:
        vqgan_settings = replace(vqgan_settings, steps=10, warmup=2, restart_every=5)
        clip_settings = replace(
            clip_settings,
            steps=10,
            warmup=2,
            batch=16,
            reconstructed_pictures=32,
            adversary_pool=8,
            adversary_batch=4,
            adversary_lifetime=3,
        )
        fade_settings = replace(fade_settings, steps=min(fade_settings.steps, 3), batch=16, pictures=32)
        train_pictures = min(train_pictures, 200)
    if args.adversary_lifetime is not None:
        clip_settings = replace(clip_settings, adversary_lifetime=args.adversary_lifetime)
    manifest = run(
        args.out,
        args.seed,
        train_pictures,
        args.held_out_pictures,
        vqgan_settings,
        clip_settings,
        fade_settings,
        progress=not args.no_progress,
        reuse_vqgan=args.reuse_vqgan,
        base_clip=args.base_clip,
    )
    print(_report(manifest))
    print(f"wrote {args.out / spec.MANIFEST_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
