"""What the `toyworld` demo model paints: the prompt suite per seed, and the settings at which it paints best.

    python bench/toyworld_quality.py checks --seeds 1 2 3 4 5 6
    python bench/toyworld_quality.py defaults --sizes 64 96 128 --iterations 50 100 150 200 --cutn 8 16 32 \
        --seeds 1 2 3 --out out/toyworld-defaults

`checks` runs the four checks of tests/integration/test_toyworld_prompts.py (its measures, thresholds
and settings: 64x64, 150 iterations, 8 cutouts) for each seed apart, on `toyworld` and on the untrained
`tiny`, and prints one row per check and model.

`defaults` paints "a red circle on a blue background" on `toyworld` over a grid and judges each picture
with `one_red_circle_on_blue` (below). One painting per (size, cutouts, seed) runs to the largest
iteration count; the pictures at the smaller counts are taken on the way (the loop's random draws do not
depend on the total, so each equals a job of that many iterations). Seconds are the engine's wall time
from the Painter's set-up to that iteration, in a warm process (models loaded, one short warm-up painting
per size), as a worker runs a job; picture saving is not counted. CPU seconds are the process's CPU
time over the same span: on a shared machine they move much less than wall time (with `--threads 1`
they are about the wall time the painting takes on one idle core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from worker.engine import GenerationConfig, Painter
from worker.models import LoadedModels, load_models

PROMPT = "a red circle on a blue background"


@dataclass(frozen=True)
class CircleVerdict:
    red_regions: int  # 4-connected red regions covering 1% of the picture or more
    red_share: float  # fraction of the picture that is red
    largest_share: float  # fraction of the red pixels in the largest region
    roundness: float  # largest region's area / area of the circle through its farthest pixel
    blue_background: float  # fraction of the non-red pixels that are blue
    centre_offset: float  # distance of the red centroid from the picture's centre, fraction of the side
    one_shape: bool  # one red region on blue, whatever its form
    one_circle: bool  # and round


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected regions of a boolean mask, largest first, as boolean masks."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    found: list[np.ndarray] = []
    height, width = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        label = len(found) + 1
        labels[y0, x0] = label
        stack = [(y0, x0)]
        while stack:
            y, x = stack.pop()
            for v, u in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= v < height and 0 <= u < width and mask[v, u] and not labels[v, u]:
                    labels[v, u] = label
                    stack.append((v, u))
        found.append(labels == label)
    return sorted(found, key=lambda m: -int(m.sum()))


def one_red_circle_on_blue(image: np.ndarray) -> CircleVerdict:
    """Whether a picture (H, W, 3) in [0, 1] shows one red circle on a blue background.

    `one_shape`: one red region of 3-50% of the picture holding at least 90% of its red pixels, and at
    least 70% of the rest blue. `one_circle`: that region is also round (at least 0.75 of the circle
    through its farthest pixel: a rendered circle scores about 0.93, a square 0.70). Position is
    reported, not judged.
    """
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    red = (r - np.maximum(g, b) > 0.3) & (g < 0.4)  # not orange (G 0.53) nor pink
    blue = b - np.maximum(r, g) > 0.15
    regions = [m for m in _regions(red) if m.sum() >= 0.01 * red.size]
    red_pixels = int(red.sum())
    largest_share = roundness = 0.0
    centre_offset = 1.0
    if regions:
        main = regions[0]
        largest_share = float(main.sum()) / red_pixels
        ys, xs = np.nonzero(main)
        cy, cx = ys.mean(), xs.mean()
        radius = float(np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max()) + 0.5
        roundness = float(main.sum()) / (np.pi * radius**2)
        centre_offset = float(np.hypot((cy + 0.5) / red.shape[0] - 0.5, (cx + 0.5) / red.shape[1] - 0.5))
    blue_background = float(blue[~red].mean()) if (~red).any() else 0.0
    area = regions[0].mean() if regions else 0.0
    one_shape = bool(
        len(regions) == 1 and 0.03 <= area <= 0.5 and largest_share >= 0.9 and blue_background >= 0.7
    )
    return CircleVerdict(
        red_regions=len(regions),
        red_share=round(float(red.mean()), 3),
        largest_share=round(largest_share, 2),
        roundness=round(roundness, 2),
        blue_background=round(blue_background, 2),
        centre_offset=round(centre_offset, 2),
        one_shape=one_shape,
        one_circle=one_shape and roundness >= 0.75,
    )


def defaults(
    models: LoadedModels,
    sizes: list[int],
    iterations: list[int],
    cutns: list[int],
    seeds: list[int],
    out: Path | None,
) -> list[dict[str, object]]:
    """The grid's rows: size, cutn, iterations, seed, seconds and the verdict's fields."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for size in sizes:  # warm-up: first-call allocations and kernel choices, as a worker's first job pays
        warm = Painter(models, GenerationConfig(PROMPT, width=size, height=size, iterations=2, seed=0))
        warm.step(), warm.step()
    rows: list[dict[str, object]] = []
    counts, last = sorted(iterations), max(iterations)
    for seed in seeds:  # seed-major: a cut-short run still covers every size and cutn
        for size in sizes:
            for cutn in cutns:
                started, cpu_started = time.perf_counter(), time.process_time()
                config = GenerationConfig(
                    PROMPT, width=size, height=size, iterations=last, seed=seed, cutn=cutn
                )
                painter = Painter(models, config)
                paused = cpu_paused = 0.0
                while painter.iteration < last:
                    painter.step()
                    if painter.iteration in counts:
                        seconds = time.perf_counter() - started - paused
                        cpu_seconds = time.process_time() - cpu_started - cpu_paused
                        mark, cpu_mark = time.perf_counter(), time.process_time()
                        picture = painter.image()
                        verdict = one_red_circle_on_blue(np.asarray(picture, dtype=np.float64) / 255)
                        if out is not None:
                            picture.save(out / f"{size}_cutn{cutn}_it{painter.iteration}_seed{seed}.png")
                        paused += time.perf_counter() - mark
                        cpu_paused += time.process_time() - cpu_mark
                        row = {"size": size, "cutn": cutn, "iterations": painter.iteration, "seed": seed}
                        times = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2)}
                        rows.append({**row, **times, **asdict(verdict)})
                        print(json.dumps(rows[-1]), flush=True)
    return rows


def _defaults_table(rows: list[dict[str, object]]) -> str:
    """One line per (size, cutn, iterations): seconds per seed and how many seeds gave one circle."""
    groups: dict[tuple[object, object, object], list[dict[str, object]]] = {}
    for row in sorted(rows, key=lambda r: (r["size"], r["cutn"], r["iterations"], r["seed"])):
        groups.setdefault((row["size"], row["cutn"], row["iterations"]), []).append(row)
    lines = [
        "| size | cutn | iterations | seconds (per seed) | CPU s (per seed) | red regions (per seed) |"
        " one red shape on blue | one red circle on blue |",
        "|---:|---:|---:|---|---|---|---:|---:|",
    ]
    for (size, cutn, its), group in groups.items():
        seconds = ", ".join(f"{r['seconds']:.1f}" for r in group)
        cpu = ", ".join(f"{r['cpu_seconds']:.1f}" for r in group)
        regions = ", ".join(str(r["red_regions"]) for r in group)
        shapes, circles = (
            f"{sum(bool(r[k]) for r in group)} of {len(group)}" for k in ("one_shape", "one_circle")
        )
        lines.append(f"| {size} | {cutn} | {its} | {seconds} | {cpu} | {regions} | {shapes} | {circles} |")
    return "\n".join(lines)


def checks(presets: dict[str, LoadedModels], seeds: list[int]) -> str:
    """The prompt suite's checks, one value per seed, as a markdown table."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
    import test_toyworld_prompts as suite  # its measures and settings, so the two cannot drift apart

    paint = suite.paint
    measures: list[tuple[str, float, Callable[[LoadedModels, int], float]]] = [
        ('"a red picture": R above G and B', 0.25, lambda m, s: suite.lead(0)(paint(m, "a red picture", s))),
        (
            '"a blue picture": B above R and G',
            0.25,
            lambda m, s: suite.lead(2)(paint(m, "a blue picture", s)),
        ),
        (
            '"a white circle on a black background": middle minus corners',
            0.3,
            lambda m, s: suite.middle_minus_corners(paint(m, "a white circle on a black background", s)),
        ),
        (
            '"a picture:1\\|a red picture:-1" less red than "a picture"',
            0.1,
            lambda m, s: (
                suite.redness(paint(m, "a picture", s))
                - suite.redness(paint(m, "a picture:1|a red picture:-1", s))
            ),
        ),
    ]
    head = " | ".join(f"seed {s}" for s in seeds)
    with_suite = set(suite.SEEDS) <= set(seeds)  # then also the suite's own measure: the mean over them
    lines = [
        f"| check (threshold) | model | {head} | passes |" + (" suite (mean) |" if with_suite else ""),
        "|---|---|" + "---:|" * (len(seeds) + 1 + with_suite),
    ]
    for name, threshold, measure in measures:
        for model, loaded in presets.items():
            values = [measure(loaded, s) for s in seeds]
            cells = " | ".join(f"{v:+.2f}" for v in values)
            passes = sum(v > threshold for v in values)
            label = f"{name} ({threshold})" if model == "toyworld" else ""
            row = f"| {label} | {model} | {cells} | {passes} of {len(seeds)} |"
            if with_suite:
                mean = np.mean([v for s, v in zip(seeds, values, strict=True) if s in suite.SEEDS])
                row += f" {mean:+.2f} |"
            lines.append(row)
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the figures used 2)")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("checks", help="the prompt suite's checks, per seed")
    check.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    grid = sub.add_parser("defaults", help='"a red circle on a blue background" over sizes and iterations')
    grid.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    grid.add_argument("--iterations", type=int, nargs="+", default=[50, 100, 150, 200])
    grid.add_argument("--cutn", type=int, nargs="+", default=[32])
    grid.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    grid.add_argument("--out", type=Path, default=None, help="folder for the pictures (none: not saved)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models_dir = Path("/nonexistent")  # toyworld ships its files and tiny needs none
    if args.command == "checks":
        presets = {name: load_models(name, models_dir, "cpu") for name in ("toyworld", "tiny")}
        print(checks(presets, args.seeds))
    else:
        models = load_models("toyworld", models_dir, "cpu")
        rows = defaults(models, args.sizes, args.iterations, args.cutn, args.seeds, args.out)
        print(_defaults_table(rows))
        if args.out is not None:
            (args.out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
