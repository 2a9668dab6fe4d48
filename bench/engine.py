"""Seconds per iteration of the engine against a bare forward+backward of the same networks.

    python bench/engine.py --model imagenet-16384 --random-weights --size 64 --cutn 8 --iterations 5

The bare loop is the floor: straight-through VQ, decoder, one resized cutout repeated cutn times, CLIP's
image encoder, spherical loss, Adam; no cutout sampling, no augmentations. The engine is `Painter.step`
with everything on. Steps of the two alternate so that load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from worker.engine import GenerationConfig, Painter, spherical_distance, vector_quantize
from worker.models import LoadedModels, build_random, get_models, import_clip

PROMPT = "a watercolour painting of a lighthouse at dawn"


class BareLoop:
    """The minimum work one step must do, for the same picture size and cutout count."""

    def __init__(self, models: LoadedModels, size: int, cutn: int) -> None:
        self.models, self.cutn = models, cutn
        vqgan, device = models.vqgan, models.device
        clip = import_clip()
        with torch.no_grad():
            tokens = clip.tokenize([PROMPT]).to(device)
            self.embed = models.clip.encode_text(tokens).float()  # (1, D)
        toks = size // vqgan.factor
        idx = torch.randint(vqgan.codebook.shape[0], (toks * toks,), device=device)
        z = vqgan.codebook[idx].view(1, toks, toks, -1).permute(0, 3, 1, 2)
        self.z = z.detach().clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.z], lr=0.1)

    def step(self) -> float:
        m = self.models
        z_q = vector_quantize(self.z.movedim(1, 3), m.vqgan.codebook).movedim(3, 1)
        out = m.vqgan.decoder(m.vqgan.post_quant_conv(z_q)).add(1).div(2)  # (1, 3, H, W)
        cut = F.interpolate(out, size=(m.clip_size, m.clip_size), mode="bilinear", align_corners=False)
        embeds = m.clip.encode_image(m.normalize(cut.expand(self.cutn, -1, -1, -1))).float()  # (cutn, D)
        loss = spherical_distance(embeds, self.embed).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()  # the same one sync as the engine


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def measure(models: LoadedModels, size: int, cutn: int, iterations: int) -> dict[str, float | int | str]:
    config = GenerationConfig(PROMPT, width=size, height=size, iterations=iterations + 1, cutn=cutn, seed=0)
    painter, bare = Painter(models, config), BareLoop(models, size, cutn)
    painter.step(), bare.step()  # warm-up: allocator, kernels, first-touch memory
    engine_times, bare_times = [], []
    for _ in range(iterations):  # alternate, so background load falls on both alike
        engine_times.append(_timed(painter.step, models.device))
        bare_times.append(_timed(bare.step, models.device))
    engine, floor = statistics.median(engine_times), statistics.median(bare_times)
    return {
        "model": models.name,
        "size": size,
        "cutn": cutn,
        "iterations": iterations,
        "engine_s_per_it": round(engine, 4),
        "bare_s_per_it": round(floor, 4),
        "ratio": round(engine / floor, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(models.device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="imagenet-16384")
    parser.add_argument(
        "--random-weights", action="store_true", help="the preset's architecture, random weights"
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="for pretrained weights")
    parser.add_argument("--size", type=int, nargs="+", default=[64])
    parser.add_argument("--cutn", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", action="store_true", help="one JSON object per size")
    args = parser.parse_args(argv)

    if args.random_weights:
        models = build_random(args.model, args.device, seed=0)
    else:
        from shared.settings import get_settings

        models = get_models(args.model, args.models_dir or get_settings().models_dir, args.device)
    rows = [measure(models, size, args.cutn, args.iterations) for size in args.size]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    threads = torch.get_num_threads()
    weights = "random" if args.random_weights else "pretrained"
    print(
        f"model {args.model} ({weights} weights), cutn {args.cutn}, "
        f"{args.iterations} timed iterations (median), "
        f"device {models.device}, torch {torch.__version__}, {threads} threads, {platform.machine()}"
    )
    print("| size | engine s/it | bare s/it | engine/bare | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        cells = (row["size"], f"{row['engine_s_per_it']:.3f}", f"{row['bare_s_per_it']:.3f}")
        print(f"| {' | '.join(map(str, cells))} | {row['ratio']:.2f} | {row['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
