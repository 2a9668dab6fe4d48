"""How fast the engine paints: the original API's table, optimised against unoptimised, and batching.

    python bench/speed.py table --sizes 64 128 256 512 --cutn 64 --measure 3   # the original API's table
    python bench/speed.py compare --size 128 --cutn 32 --measure 6             # optimised vs all off
    python bench/speed.py batch --sizes 64 128 --batch 1 2 4 8 --cutn 8        # jobs per hour

Every variant is built on the preset's real architecture with random weights (the pretrained model's
FLOPs, no files). Variants are measured side by side: one step of each in turn, round after round, so that
load from other processes falls on all of them alike; figures are medians after one warm-up step. A
100-iteration total is the median s/it times 100 (plus the Painter's set-up) and says how many
iterations were measured. Peak memory: CUDA's peak allocation per variant, or on CPU the process's peak
resident set sampled during that variant's steps (models included). `--device cuda` runs the same code
on a GPU (with a synchronise around each timed step).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.engine import PROMPT, BareLoop
from worker.engine import BatchPainter, GenerationConfig, Painter
from worker.models import LoadedModels, build_random
from worker.runtime import EngineOptions

ITERATIONS = 100  # a job, as the original API ran it


class _PeakRss:
    """The process's peak resident set while active, sampled every 5 ms (CPU memory per variant)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> _PeakRss:
        self._stop.clear()
        self.peak = max(self.peak, self._rss())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class Variant:
    name: str
    step: Callable[[], object]
    setup_s: float
    times: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    memory: _PeakRss = field(default_factory=_PeakRss)

    @property
    def s_per_it(self) -> float:
        return statistics.median(self.times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _run_interleaved(variants: list[Variant], device: torch.device, measure: int) -> None:
    """One warm-up step each, then `measure` rounds of one timed step per variant."""
    for rnd in range(measure + 1):
        for v in variants:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            with v.memory:
                start = time.perf_counter()
                v.step()
                _sync(device)
                elapsed = time.perf_counter() - start
            if rnd:  # round 0 is the warm-up
                v.times.append(elapsed)
            if device.type == "cuda":
                v.peak_bytes = max(v.peak_bytes, torch.cuda.max_memory_allocated(device))
            else:
                v.peak_bytes = v.memory.peak
            print(f"  round {rnd} {v.name}: {elapsed:.3f} s", file=sys.stderr, flush=True)


def _step_flops(step: Callable[[], object]) -> int:
    """Matrix-multiply and convolution FLOPs of one step, forward and backward (torch's own counter).
    The step runs once to be counted: call it before the timed rounds, as one more warm-up step."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of one large square matmul in `dtype` on `device` (median of `repeats`): what this machine's
    matrix units deliver to PyTorch, the ceiling for a step made of matrix products."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def _painter(models: LoadedModels, size: int, cutn: int, seed: int, options: EngineOptions) -> Painter:
    config = GenerationConfig(PROMPT, width=size, height=size, iterations=10**6, cutn=cutn, seed=seed)
    return Painter(models, config, options)


def _timed_painter(name: str, models: LoadedModels, size: int, cutn: int, options: EngineOptions) -> Variant:
    start = time.perf_counter()
    painter = _painter(models, size, cutn, 0, options)
    return Variant(name, painter.step, time.perf_counter() - start)


def _bare(models: LoadedModels, size: int, cutn: int) -> Variant:
    start = time.perf_counter()
    bare = BareLoop(models, size, cutn)
    return Variant("bare fp32", bare.step, time.perf_counter() - start)


def _header(args: argparse.Namespace, models: LoadedModels) -> str:
    device = models.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    return (
        f"model {args.model} (random weights), device {device} ({name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; optimised = {EngineOptions().resolve(device).describe()}"
    )


def table(args: argparse.Namespace, models: LoadedModels) -> list[dict[str, object]]:
    """Per size: optimised engine, every optimisation off, bare forward+backward floor."""
    rows = []
    for size in args.sizes:
        variants = [
            _timed_painter("optimised", models, size, args.cutn, EngineOptions()),
            _timed_painter("all off", models, size, args.cutn, EngineOptions.off()),
            _bare(models, size, args.cutn),
        ]
        measure = args.measure_large if size >= 256 else args.measure
        _run_interleaved(variants, models.device, measure)
        row: dict[str, object] = {"size": size, "cutn": args.cutn, "measured_iterations": measure}
        for v in variants:
            key = v.name.split()[0].replace("all", "off")
            row[f"{key}_s_per_it"] = round(v.s_per_it, 4)
            row[f"{key}_total_s"] = round(v.setup_s + ITERATIONS * v.s_per_it, 1)
            row[f"{key}_peak_mb"] = round(v.peak_bytes / 2**20)
        row["speedup"] = round(row["off_s_per_it"] / row["optimised_s_per_it"], 2)  # type: ignore[operator]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def compare(args: argparse.Namespace, models: LoadedModels) -> list[dict[str, object]]:
    """One size: optimised, every optimisation off, and each optimisation alone, interleaved."""
    off = EngineOptions.off()
    variants = [
        _timed_painter("optimised", models, args.size, args.cutn, EngineOptions()),
        _timed_painter("all off", models, args.size, args.cutn, off),
        _timed_painter(
            "optimised, channels_last off", models, args.size, args.cutn, EngineOptions(channels_last="off")
        ),
        _timed_painter(
            "bf16 only",
            models,
            args.size,
            args.cutn,
            EngineOptions(
                precision="bf16", fast_clip=False, weight_cache=False, channels_last="off", compile="off"
            ),
        ),
        _timed_painter(
            "fast_clip only (fp32)",
            models,
            args.size,
            args.cutn,
            EngineOptions(precision="fp32", channels_last="off", compile="off"),
        ),
        _bare(models, args.size, args.cutn),
    ]
    if args.with_compile:
        variants.append(
            _timed_painter("optimised + compile", models, args.size, args.cutn, EngineOptions(compile="on"))
        )
        # Compilation happens on the first call: time it apart from the steady state.
        start = time.perf_counter()
        variants[-1].step()
        print(f"  compile + first step: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    _run_interleaved(variants, models.device, args.measure)
    base = variants[1].s_per_it
    return [
        {
            "variant": v.name,
            "size": args.size,
            "cutn": args.cutn,
            "s_per_it": round(v.s_per_it, 4),
            "speedup_vs_off": round(base / v.s_per_it, 2),
            "measured_iterations": len(v.times),
        }
        for v in variants
    ]


def batch(args: argparse.Namespace, models: LoadedModels) -> list[dict[str, object]]:
    """Jobs per hour at each size for each batch size (a job = 100 iterations, `cutn` cutouts)."""
    rows = []
    for size in args.sizes:
        variants = []
        for n in args.batch:
            start = time.perf_counter()
            painters = [_painter(models, size, args.cutn, seed, EngineOptions()) for seed in range(n)]
            variants.append(
                Variant(f"batch {n}", BatchPainter(models, painters).step, time.perf_counter() - start)
            )
        flops = [_step_flops(v.step) for v in variants]
        _run_interleaved(variants, models.device, args.measure)
        base = None
        for n, v, f in zip(args.batch, variants, flops, strict=True):
            job_s = ITERATIONS * v.s_per_it  # the batch finishes n jobs in this time
            jobs_per_hour = 3600 * n / job_s
            base = base or jobs_per_hour
            rows.append(
                {
                    "size": size,
                    "cutn": args.cutn,
                    "batch": n,
                    "s_per_step": round(v.s_per_it, 4),
                    "jobs_per_hour": round(jobs_per_hour, 1),
                    "vs_batch_1": round(jobs_per_hour / base, 2),
                    "peak_mb": round(v.peak_bytes / 2**20),
                    "gflop_per_job_step": round(f / n / 1e9, 1),
                    "gflop_per_s": round(f / v.s_per_it / 1e9),
                    "measured_iterations": len(v.times),
                }
            )
    return rows


def _markdown(kind: str, rows: list[dict[str, object]]) -> str:
    if kind == "table":
        lines = [
            "| size | cutn | optimised s/it | total (100 it) | peak MB | all off s/it | total | peak MB "
            "| bare s/it | total | peak MB | speed-up | measured its |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            cells = [r["size"], r["cutn"]]
            for k in ("optimised", "off", "bare"):
                cells += [f"{r[k + '_s_per_it']:.3f}", f"{r[k + '_total_s']:.0f} s", r[k + "_peak_mb"]]
            cells += [f"{r['speedup']:.2f}x", r["measured_iterations"]]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    elif kind == "compare":
        lines = ["| variant | s/it | speed-up vs all off |", "|---|---:|---:|"]
        lines += [f"| {r['variant']} | {r['s_per_it']:.3f} | {r['speedup_vs_off']:.2f}x |" for r in rows]
    else:
        lines = [
            "| size | cutn | batch | s/step | jobs/hour | vs batch 1 | GFLOP per job-step | GFLOP/s "
            "| peak MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['size']} | {r['cutn']} | {r['batch']} | {r['s_per_step']:.3f} | {r['jobs_per_hour']:.1f} "
            f"| {r['vs_batch_1']:.2f}x | {r['gflop_per_job_step']} | {r['gflop_per_s']} | {r['peak_mb']} |"
            for r in rows
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="imagenet-16384")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", action="store_true", help="one JSON object per row instead of markdown")
    sub = parser.add_subparsers(dest="kind", required=True)
    p_table = sub.add_parser("table", help="the original API's table: sizes x (optimised, all off, bare)")
    p_table.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    p_table.add_argument("--cutn", type=int, default=64)
    p_table.add_argument("--measure", type=int, default=3, help="timed iterations per variant (size < 256)")
    p_table.add_argument("--measure-large", type=int, default=2, help="timed iterations at 256 and above")
    p_compare = sub.add_parser("compare", help="one size: optimised vs all off vs each optimisation")
    p_compare.add_argument("--size", type=int, default=128)
    p_compare.add_argument("--cutn", type=int, default=32)
    p_compare.add_argument("--measure", type=int, default=5)
    p_compare.add_argument(
        "--with-compile", action="store_true", help="add the optimised engine + torch.compile"
    )
    p_batch = sub.add_parser("batch", help="jobs per hour by batch size")
    p_batch.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p_batch.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    p_batch.add_argument("--cutn", type=int, default=8)
    p_batch.add_argument("--measure", type=int, default=3)
    args = parser.parse_args(argv)

    models = build_random(args.model, args.device, seed=0)
    rows = {"table": table, "compare": compare, "batch": batch}[args.kind](args, models)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(_header(args, models))
        print(_markdown(args.kind, rows))
        if args.kind == "batch":
            dtype = EngineOptions().resolve(models.device).dtype
            ceiling = matmul_ceiling(models.device, dtype)
            print(f"ceiling: one 2048x2048 {dtype} matmul runs at {ceiling / 1e9:.0f} GFLOP/s here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
