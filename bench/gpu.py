"""The GPU run: one prepared script for the day a GPU is lent (an H100 or H200 with Python 3.12 and its own
torch; nothing downloadable there, so what it lacks travels as wheels).

    make bench-gpu-wheels                    # here: the wheels it lacks there, into .whl/
    make bench-gpu BENCH_GPU_OUT="$OUT"      # there: install them, then every stage below (< 8 minutes)
    python bench/gpu.py --dry-run            # here: every stage on CPU with the tiny preset (< 3 minutes)

Stages, in order, each with a time budget of its own (printed, and kept: a stage over it stops measuring,
says how many iterations it measured and marks what it extrapolated):
1. `cuda_tests`: tests/unit/worker/test_cuda.py on the device, in a pytest subprocess.
2. `table`: the original API's table: 64 to 512 pixels, 100 iterations, 64 cutouts, the imagenet-16384
   architecture with random weights (the pretrained model's FLOPs): the optimised engine against every
   optimisation off, steps of the two alternating. A job's seconds are its Painter's set-up plus its
   100 steps, after a warm-up job of the same shape (cuDNN's autotuning and the allocator's growth are
   a worker's first job of a shape only). torch.compile is off here; it costs a compile per shape.
3. `batch`: jobs per hour at 256 pixels for batches of 1, 2, 4 and 8 jobs, and each step's peak memory
   above what was held before it, per job.
4. `compile`: torch.compile on (the CUDA default) against off at 512: the compile's cost, then a job each.
5. `flops`: FLOPs per iteration from the networks' shapes (bench/flops.py) beside torch's own count of one
   eager step, and the achieved TFLOP/s of stages 2 and 4 against the chip's bf16 peak (datasheet) and
   against a large bf16 matmul measured here.

Writes PREFIX.json and PREFIX.md (the dry run: bench/gpu-dry-run.json and .md, the schema's example),
and PREFIX-tests.log; the JSON is rewritten after every stage, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.engine import PROMPT  # noqa: E402
from bench.flops import step_flops  # noqa: E402
from bench.speed import _step_flops, _sync, matmul_ceiling  # noqa: E402
from worker.batching import DeviceMemory  # noqa: E402
from worker.engine import BatchPainter, GenerationConfig, Painter  # noqa: E402
from worker.models import LoadedModels, build_random  # noqa: E402
from worker.runtime import EngineOptions, ResolvedOptions  # noqa: E402

log = logging.getLogger("bench.gpu")

SCHEMA = "artgen-bench-gpu/1"
MIB = 2**20
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s), by what torch names the device.
BF16_PEAK_TFLOPS = {
    "H100 PCIe": 756.5,
    "H100 NVL": 835.5,
    "H100": 989.4,  # SXM: "NVIDIA H100 80GB HBM3"
    "H200": 989.4,  # SXM: "NVIDIA H200"
}
TARGET_512_S = 10.0  # 512x512, 100 iterations, 64 cutouts on an H100/H200 (the original API's T4: 232 s)
TARGET_BATCH4 = 3.0  # batch 4 against batch 1, jobs per hour at 256x256
TESTS = "tests/unit/worker/test_cuda.py"
# A run still going this long after its total budget is stopped with what it has: the device's lease ends
# a command at 10 minutes (the 8-minute budget, this, and the wheels' install and imports fit inside).
WATCHDOG_GRACE_S = 60.0


@dataclass(frozen=True)
class RunConfig:
    """What one run measures; the real run and the dry run differ only here."""

    model: str
    device: str
    sizes: tuple[int, ...]
    iterations: int  # a job
    cutn: int
    batch_px: int
    batches: tuple[int, ...]
    batch_rounds: int  # timed steps of each batch size
    compile_px: int
    matmul_n: int  # side of the square bf16 matmul whose rate is the measured ceiling
    budget_s: dict[str, float]  # per stage; their sum is the run's
    total_budget_s: float
    # A device's lease ends a command at its limit: a watchdog then stops the run with what it has, and
    # the tests' subprocess is cut at twice its budget. Without one, stages only keep their budgets.
    lease: bool = False


REAL = RunConfig(
    model="imagenet-16384",
    device="cuda",
    sizes=(64, 128, 256, 512),
    iterations=100,
    cutn=64,
    batch_px=256,
    batches=(1, 2, 4, 8),
    batch_rounds=20,
    compile_px=512,
    matmul_n=8192,
    # On an H100/H200 (estimates for planning, from FLOPs and the published compile times of models of
    # this size): the tests ~40 s; the table's fp32 512 job ~20 s; compiling CLIP and the decoder ~2 min.
    budget_s={"setup": 30, "cuda_tests": 90, "table": 120, "batch": 60, "compile": 150, "flops": 30},
    total_budget_s=480,
    lease=True,
)
DRY = RunConfig(
    model="tiny",
    device="cpu",
    sizes=(32, 64, 96, 128),
    iterations=3,
    cutn=64,
    batch_px=64,
    batches=(1, 2, 4, 8),
    batch_rounds=2,
    compile_px=128,
    matmul_n=1024,
    # On a loaded 2-core CPU: compiling the tiny networks takes 1.5 minutes on a cold cache, 7 s on a warm.
    budget_s={"setup": 10, "cuda_tests": 40, "table": 20, "batch": 15, "compile": 85, "flops": 10},
    total_budget_s=180,
)


# ------------------------------------------------------------------------------------------------
# Time budgets
# ------------------------------------------------------------------------------------------------


class Deadline:
    """A stage's time budget: what is left of it, and whether a step estimated at `need` s still fits."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed

    def allows(self, need: float) -> bool:
        return self.left() >= need


def _share(deadline: Deadline, parts_left: int) -> Deadline:
    """The next of `parts_left` parts of a stage: an even share of what is left of it."""
    return Deadline(max(0.0, deadline.left()) / max(1, parts_left))


# ------------------------------------------------------------------------------------------------
# Timing jobs
# ------------------------------------------------------------------------------------------------


@contextmanager
def _cudnn_benchmark(on: bool) -> Iterator[None]:
    """cuDNN autotuning as the variant asks (the runtime switches it on process-wide once it is built)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@dataclass
class Job:
    """One variant's job being timed: its painters (a batch), their options, and what was measured."""

    name: str
    painters: list[Painter]
    setup_s: float
    times: list[float] = field(default_factory=list)
    peak_above: int = 0  # the largest step's peak memory above what was held before it, bytes

    def __post_init__(self) -> None:
        lead = self.painters[0]
        self.step: Callable[[], object] = (
            lead.step if len(self.painters) == 1 else BatchPainter(lead.models, self.painters).step
        )

    @property
    def jobs(self) -> int:
        return len(self.painters)

    @property
    def options(self) -> ResolvedOptions:
        return self.painters[0].runtime.options

    def timed_step(self, memory: DeviceMemory) -> float:
        with _cudnn_benchmark(self.options.cudnn_benchmark):
            _sync(memory.device)
            memory.reset()
            held = memory.in_use()
            start = time.perf_counter()
            self.step()
            _sync(memory.device)
            elapsed = time.perf_counter() - start
        self.peak_above = max(self.peak_above, memory.peak() - held)
        return elapsed

    @property
    def s_per_it(self) -> float:
        return statistics.median(self.times)


def _config(size: int, cutn: int, iterations: int, seed: int) -> GenerationConfig:
    return GenerationConfig(PROMPT, width=size, height=size, iterations=iterations, cutn=cutn, seed=seed)


def _job(
    name: str,
    models: LoadedModels,
    options: EngineOptions | ResolvedOptions,
    size: int,
    cutn: int,
    iterations: int,
    jobs: int = 1,
) -> Job:
    start = time.perf_counter()
    painters = [Painter(models, _config(size, cutn, iterations, seed), options) for seed in range(jobs)]
    _sync(models.device)
    return Job(name, painters, time.perf_counter() - start)


def _warm_up(models: LoadedModels, options: EngineOptions, size: int, cutn: int, jobs: int = 1) -> float:
    """Two steps of a throw-away job of this shape (autotuning, compiling, allocator growth); seconds."""
    job = _job("warm-up", models, options, size, cutn, 2, jobs)
    memory = DeviceMemory(models.device)
    return job.timed_step(memory) + job.timed_step(memory)


def _alternate(jobs: list[Job], models: LoadedModels, steps: int, deadline: Deadline) -> None:
    """Up to `steps` timed steps of each job, one of each in turn, while the deadline allows another round."""
    memory = DeviceMemory(models.device)
    for _ in range(steps):
        round_s = sum(j.times[-1] for j in jobs) if jobs[0].times else 0.0
        if jobs[0].times and not deadline.allows(round_s):
            break
        for j in jobs:
            j.times.append(j.timed_step(memory))


def _job_row(job: Job, iterations: int) -> dict[str, Any]:
    measured = len(job.times)
    complete = measured >= iterations
    job_s = job.setup_s + (sum(job.times) if complete else iterations * job.s_per_it)
    return {
        "variant": job.name,
        "options": job.options.describe(),
        "setup_s": round(job.setup_s, 3),
        "s_per_it": round(job.s_per_it, 5),
        "job_s": round(job_s, 2),
        "measured_iterations": measured,
        "extrapolated": not complete,
        "peak_step_mib": round(job.peak_above / MIB, 1),
    }


# ------------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------------


def stage_cuda_tests(cfg: RunConfig, deadline: Deadline, log_path: Path) -> dict[str, Any]:
    """The engine's CUDA tests on the device, in a pytest subprocess (its log beside the results)."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", TESTS, "-q", "-rs", "-p", "no:cacheprovider"]
        env = {**os.environ, "ARTGEN_TEST_DEVICE": cfg.device, "PYTHONUNBUFFERED": "1"}
        try:
            done = subprocess.run(
                [*command, f"--junitxml={junit}"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=2 * deadline.budget_s if cfg.lease else None,  # slow is "over budget"; stuck is cut
            )
            output, rc = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            # (TimeoutExpired keeps bytes even when the run was asked for text)
            parts = [
                p.decode(errors="replace") if isinstance(p, bytes) else p or ""
                for p in (exc.stdout, exc.stderr)
            ]
            output, rc = "".join(parts) + "\nstopped at twice the stage's budget", None
        log_path.write_text(output)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        failed: list[str] = []
        if junit.exists():
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite[0]
            counts = {k: int(suite.get(k, 0)) for k in counts}
            for case in suite.iter("testcase"):
                problem = case.find("failure")
                if problem is None:
                    problem = case.find("error")
                if problem is not None:
                    failed.append(
                        f"{case.get('name')}: {(problem.get('message') or '').splitlines()[0][:300]}"
                    )
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {
        "command": f"ARTGEN_TEST_DEVICE={cfg.device} python -m pytest {TESTS}",
        "returncode": rc,
        "passed": passed,
        "failed": counts["failures"] + counts["errors"],
        "skipped": counts["skipped"],
        "failures": failed,
        "log": log_path.name,
    }


def stage_table(cfg: RunConfig, models: LoadedModels, deadline: Deadline) -> dict[str, Any]:
    """Per size: the optimised engine (compile off) against every optimisation off, a job each."""
    optimised, off = EngineOptions(compile="off"), EngineOptions.off()
    rows = []
    for i, size in enumerate(cfg.sizes):
        share = _share(deadline, len(cfg.sizes) - i)
        for options in (optimised, off):
            _warm_up(models, options, size, cfg.cutn)
        jobs = [
            _job("optimised", models, optimised, size, cfg.cutn, cfg.iterations),
            _job("all off", models, off, size, cfg.cutn, cfg.iterations),
        ]
        _alternate(jobs, models, cfg.iterations, share)
        fast, slow = (_job_row(j, cfg.iterations) for j in jobs)
        rows.append(
            {
                "size": size,
                "cutn": cfg.cutn,
                "iterations": cfg.iterations,
                "optimised": fast,
                "all_off": slow,
                "speedup": round(slow["s_per_it"] / fast["s_per_it"], 2),
            }
        )
        log.info("table %d px: optimised %.2f s a job, all off %.2f s", size, fast["job_s"], slow["job_s"])
    return {"rows": rows}


def stage_batch(cfg: RunConfig, models: LoadedModels, deadline: Deadline) -> dict[str, Any]:
    """Jobs per hour by batch size at one picture size (optimised, compile off), steps interleaved."""
    options = EngineOptions(compile="off")
    jobs = []
    for n in cfg.batches:
        _warm_up(models, options, cfg.batch_px, cfg.cutn, n)
        jobs.append(_job(f"batch {n}", models, options, cfg.batch_px, cfg.cutn, 10**6, n))
    _alternate(jobs, models, cfg.batch_rounds, deadline)
    rows, base = [], None
    for j in jobs:
        jobs_per_hour = 3600 * j.jobs / (cfg.iterations * j.s_per_it)
        base = base or jobs_per_hour
        rows.append(
            {
                "size": cfg.batch_px,
                "cutn": cfg.cutn,
                "batch": j.jobs,
                "s_per_step": round(j.s_per_it, 5),
                "jobs_per_hour": round(jobs_per_hour, 1),
                "vs_batch_1": round(jobs_per_hour / base, 2),
                "peak_step_mib": round(j.peak_above / MIB, 1),
                "peak_step_mib_per_job": round(j.peak_above / MIB / j.jobs, 1),
                "measured_steps": len(j.times),
            }
        )
    return {"options": jobs[0].options.describe(), "rows": rows}


def stage_compile(cfg: RunConfig, models: LoadedModels, deadline: Deadline) -> dict[str, Any]:
    """torch.compile on against off at one size: the first job's compile, then a job of each."""
    size = cfg.compile_px
    on, off = EngineOptions(compile="on"), EngineOptions(compile="off")
    _warm_up(models, off, size, cfg.cutn)
    first = _job("compile on", models, on, size, cfg.cutn, 2)
    memory = DeviceMemory(models.device)
    first_step = first.timed_step(memory)  # compiles CLIP and the decoder for this shape
    second_step = first.timed_step(memory)
    runtime = first.painters[0].runtime
    jobs = [
        _job("compile on", models, on, size, cfg.cutn, cfg.iterations),
        _job("compile off", models, off, size, cfg.cutn, cfg.iterations),
    ]
    _alternate(jobs, models, cfg.iterations, deadline)
    compiled, eager = (_job_row(j, cfg.iterations) for j in jobs)
    return {
        "size": size,
        "cutn": cfg.cutn,
        "iterations": cfg.iterations,
        "compile_s": round(first_step - second_step, 1),
        "compile_error": runtime.compile_error,
        "compile_on": compiled,
        "compile_off": eager,
        "speedup": round(eager["s_per_it"] / compiled["s_per_it"], 2),
    }


def peak_tflops(device_name: str) -> tuple[float | None, str]:
    """The datasheet's dense bf16 peak for a GPU of this name, and where it comes from."""
    for key, value in BF16_PEAK_TFLOPS.items():  # the most specific names come first
        if key in device_name:
            return value, f"NVIDIA datasheet, dense bf16, {key}"
    return None, f"no datasheet figure for {device_name}"


def stage_flops(
    cfg: RunConfig,
    models: LoadedModels,
    deadline: Deadline,
    table: dict[str, Any] | None,
    comp: dict[str, Any] | None,
) -> dict[str, Any]:
    """FLOPs per iteration (shapes, and torch's counter over one eager step) and the TFLOP/s achieved."""
    name = torch.cuda.get_device_name(models.device) if models.device.type == "cuda" else "a CPU"
    peak, source = peak_tflops(name)
    ceiling = matmul_ceiling(models.device, torch.bfloat16, n=cfg.matmul_n, repeats=10) / 1e12
    timed: dict[tuple[int, str], float] = {}
    for row in (table or {}).get("rows", []):
        timed[(row["size"], "optimised, compile off")] = row["optimised"]["s_per_it"]
    if comp:
        timed[(comp["size"], "optimised, compile on")] = comp["compile_on"]["s_per_it"]
    rows = []
    for size in cfg.sizes:
        flops = step_flops(models, size, cfg.cutn)
        # one eager step, CLIP's attention as matmuls: every product visible to the counter (one step: cheap)
        countable = replace(EngineOptions(compile="off").resolve(models.device), math_attention=True)
        counted = _step_flops(_job("count", models, countable, size, cfg.cutn, 2).step)
        for (timed_size, variant), s_per_it in sorted(timed.items()):
            if timed_size != size:
                continue
            achieved = flops.total / s_per_it / 1e12
            rows.append(
                {
                    "size": size,
                    "cutn": cfg.cutn,
                    "variant": variant,
                    "gflop_per_iteration": round(flops.total / 1e9, 1),
                    "gflop_decoder": round(flops.decoder / 1e9, 1),
                    "gflop_clip": round(flops.clip / 1e9, 1),
                    "gflop_counted_eager": round(counted / 1e9, 1),
                    "s_per_it": s_per_it,
                    "achieved_tflops": round(achieved, 4),
                    "fraction_of_peak": None if peak is None else round(achieved / peak, 3),
                    "fraction_of_matmul": round(achieved / ceiling, 3),
                }
            )
    return {
        "peak_bf16_tflops": peak,
        "peak_source": source,
        "matmul_bf16_tflops": round(ceiling, 2),
        "matmul": f"{cfg.matmul_n}x{cfg.matmul_n}x{cfg.matmul_n} bf16, random data, median of 10",
        "rows": rows,
    }


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def _machine(device: torch.device) -> dict[str, Any]:
    """The machine's facts; the same keys on a GPU and a CPU (None where a CPU has no such fact)."""
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {
        "device": str(device),
        "name": props.name if props else f"{platform.machine()} CPU",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "capability": f"{props.major}.{props.minor}" if props else None,
        "memory_gib": round(props.total_memory / 2**30, 1) if props else None,
        "multiprocessors": props.multi_processor_count if props else None,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        # whether fp32 ("all off") matmuls and convolutions may run as TF32 (torch: no and yes by default)
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else None,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32 if cuda else None,
    }


def targets(result: dict[str, Any], dry_run: bool) -> list[dict[str, Any]]:
    """The issue's two targets, judged on a real run's figures (a dry run's are not the targets' work)."""
    stages = result["stages"]
    comp = stages.get("compile", {}).get("result")
    batch = stages.get("batch", {}).get("result")
    at_512 = comp["compile_on"]["job_s"] if comp else None
    ratio = next((r["vs_batch_1"] for r in batch["rows"] if r["batch"] == 4), None) if batch else None
    met: Callable[[bool], bool | None] = lambda ok: None if dry_run else ok  # noqa: E731
    return [
        {
            "target": f"512x512, 100 iterations, 64 cutouts in at most {TARGET_512_S:g} s (compile on)",
            "measured_at": f"{comp['size']}x{comp['size']}, {comp['iterations']} iterations"
            if comp
            else None,
            "value": at_512,
            "met": None if at_512 is None else met(at_512 <= TARGET_512_S),
        },
        {
            "target": f"batch 4 gives at least {TARGET_BATCH4:g}x the jobs per hour of batch 1 at 256x256",
            "measured_at": f"{batch['rows'][0]['size']}x{batch['rows'][0]['size']}" if batch else None,
            "value": ratio,
            "met": None if ratio is None else met(ratio >= TARGET_BATCH4),
        },
    ]


class Run:
    """The results so far, written after every stage (and by the watchdog if the run overstays)."""

    def __init__(self, cfg: RunConfig, dry_run: bool, prefix: Path, models_device: torch.device) -> None:
        self.cfg, self.dry_run, self.prefix = cfg, dry_run, prefix
        self.lock = threading.Lock()
        self.result: dict[str, Any] = {
            "schema": SCHEMA,
            "dry_run": dry_run,
            "machine": _machine(models_device),
            "config": {
                k: v for k, v in asdict(cfg).items() if k not in ("budget_s", "total_budget_s", "lease")
            },
            "budget_s": {**cfg.budget_s, "total": cfg.total_budget_s},
            "stages": {},
            "elapsed_s": 0.0,
            "targets": [],
        }
        self.start = time.perf_counter()

    def record(
        self, name: str, status: str, elapsed: float, budget: float, result: Any, error: str | None
    ) -> None:
        with self.lock:
            self.result["stages"][name] = {
                "status": status,
                "elapsed_s": round(elapsed, 1),
                "budget_s": budget,
                "error": error,
                "result": result,
            }
            self.write()

    def write(self, status: str | None = None) -> None:
        self.result["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        self.result["status"] = status or (
            "complete" if len(self.result["stages"]) == len(STAGES) + 1 else "running"
        )
        self.result["targets"] = targets(self.result, self.dry_run)
        self.prefix.with_suffix(".json").write_text(json.dumps(self.result, indent=2) + "\n")
        self.prefix.with_suffix(".md").write_text(markdown(self.result))

    def stage(
        self, name: str, fn: Callable[[Deadline], Any], view: Callable[[Any], Any] = lambda r: r
    ) -> Any:
        budget = self.cfg.budget_s[name]
        log.info(
            "stage %s: budget %.0f s (%.0f s into the run)", name, budget, time.perf_counter() - self.start
        )
        deadline = Deadline(budget)
        try:
            result = fn(deadline)
        except Exception as exc:  # a broken stage is a finding of the run: record it, go on to the next
            log.exception("stage %s failed", name)
            self.record(name, "failed", deadline.elapsed, budget, None, f"{type(exc).__name__}: {exc}")
            return None
        status = "ok" if deadline.elapsed <= budget else "over budget"
        log.info("stage %s: %s in %.1f s", name, status, deadline.elapsed)
        self.record(name, status, deadline.elapsed, budget, view(result), None)
        return result


STAGES = ("cuda_tests", "table", "batch", "compile", "flops")


def run(cfg: RunConfig, dry_run: bool, prefix: Path, only: tuple[str, ...]) -> dict[str, Any]:
    device = torch.device(cfg.device)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    state = Run(cfg, dry_run, prefix, device)

    def overstayed() -> None:
        with state.lock:
            state.write(
                status=f"stopped: over the budget of {cfg.total_budget_s:.0f} s + {WATCHDOG_GRACE_S:.0f} s"
            )
        log.error("the run is over its budget; stopping with what it measured")
        os._exit(3)

    watchdog = threading.Timer(cfg.total_budget_s + WATCHDOG_GRACE_S, overstayed)
    watchdog.daemon = True
    if cfg.lease:
        watchdog.start()

    models = state.stage(
        "setup",
        lambda d: build_random(cfg.model, device, seed=0),
        lambda m: {
            "model": m.name,
            "random_weights": True,
            "held_mib": round(DeviceMemory(device).in_use() / MIB),
        },
    )
    if models is None:
        with state.lock:
            state.write(status="failed: the models could not be built")
        return state.result
    results: dict[str, Any] = {}
    runs: dict[str, Callable[[Deadline], Any]] = {
        "cuda_tests": lambda d: stage_cuda_tests(cfg, d, prefix.parent / f"{prefix.name}-tests.log"),
        "table": lambda d: stage_table(cfg, models, d),
        "batch": lambda d: stage_batch(cfg, models, d),
        "compile": lambda d: stage_compile(cfg, models, d),
        "flops": lambda d: stage_flops(cfg, models, d, results.get("table"), results.get("compile")),
    }
    for name in STAGES:
        if name in only:
            results[name] = state.stage(name, runs[name])
        else:
            state.record(name, "skipped", 0.0, cfg.budget_s[name], None, "not asked for (--stages)")
    watchdog.cancel()
    with state.lock:
        state.write()
    return state.result


# ------------------------------------------------------------------------------------------------
# The markdown table
# ------------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]


def _rows(stage: dict[str, Any] | None, columns: dict[str, Callable[[dict[str, Any]], Any]]) -> list[str]:
    """A markdown table of a stage's rows, one column per (header, how to read it from a row)."""
    rows = [[read(r) for read in columns.values()] for r in (stage or {}).get("rows", [])]
    return _table(list(columns), rows)


def markdown(result: dict[str, Any]) -> str:
    m, stages = result["machine"], result["stages"]
    got = {name: (s.get("result") or None) for name, s in stages.items()}
    dry = "DRY RUN: the tiny preset on a CPU, a schema example, not a measurement"
    out = [
        f"# bench/gpu.py: {dry if result['dry_run'] else 'the GPU run'}",
        "",
        f"{m['name']} ({m['device']}), torch {m['torch']}, Python {m['python']}; model "
        f"{result['config']['model']}, random weights; {result['status']} after {result['elapsed_s']} s "
        f"(budget {result['budget_s']['total']:g} s).",
        "",
        *_table(
            ["stage", "status", "seconds", "budget s", "error"],
            [[n, s["status"], s["elapsed_s"], s["budget_s"], s["error"]] for n, s in stages.items()],
        ),
    ]
    if tests := got.get("cuda_tests"):
        out += ["", "## The engine's CUDA tests", ""]
        out += [f"`{tests['command']}`: {tests['passed']} passed, {tests['failed']} failed, "]
        out[-1] += f"{tests['skipped']} skipped."
        out += [f"- {f}" for f in tests["failures"]]
    if got.get("table"):
        out += ["", "## The original API's table: a job is its set-up and its iterations (compile off)", ""]
        out += _rows(
            got["table"],
            {
                "size": lambda r: r["size"],
                "cutn": lambda r: r["cutn"],
                "its": lambda r: r["iterations"],
                "optimised s/it": lambda r: r["optimised"]["s_per_it"],
                "optimised job s": lambda r: r["optimised"]["job_s"],
                "step MiB": lambda r: r["optimised"]["peak_step_mib"],
                "all off s/it": lambda r: r["all_off"]["s_per_it"],
                "all off job s": lambda r: r["all_off"]["job_s"],
                "step MiB ": lambda r: r["all_off"]["peak_step_mib"],
                "speed-up": lambda r: f"{r['speedup']}x",
                "measured its": lambda r: r["optimised"]["measured_iterations"],
            },
        )
    if batch := got.get("batch"):
        out += ["", f"## Jobs per hour by batch size ({batch['options']})", ""]
        out += _rows(
            batch,
            {
                "size": lambda r: r["size"],
                "cutn": lambda r: r["cutn"],
                "batch": lambda r: r["batch"],
                "s/step": lambda r: r["s_per_step"],
                "jobs/hour": lambda r: r["jobs_per_hour"],
                "vs batch 1": lambda r: f"{r['vs_batch_1']}x",
                "step MiB": lambda r: r["peak_step_mib"],
                "step MiB per job": lambda r: r["peak_step_mib_per_job"],
                "measured steps": lambda r: r["measured_steps"],
            },
        )
    if comp := got.get("compile"):
        out += ["", f"## torch.compile at {comp['size']}x{comp['size']}, {comp['cutn']} cutouts", ""]
        out += [f"Compiling took {comp['compile_s']} s (error: {comp['compile_error']}); speed-up "]
        out[-1] += f"{comp['speedup']}x."
        out += [
            "",
            *_rows(
                {"rows": [comp["compile_on"], comp["compile_off"]]},
                {
                    "variant": lambda r: r["variant"],
                    "s/it": lambda r: r["s_per_it"],
                    "job s": lambda r: r["job_s"],
                    "step MiB": lambda r: r["peak_step_mib"],
                    "measured its": lambda r: r["measured_iterations"],
                },
            ),
        ]
    if flops := got.get("flops"):
        out += ["", "## Achieved TFLOP/s", ""]
        out += [f"bf16 peak {flops['peak_bf16_tflops']} TFLOP/s ({flops['peak_source']}); "]
        out[-1] += f"measured {flops['matmul']}: {flops['matmul_bf16_tflops']} TFLOP/s."
        out += [
            "",
            *_rows(
                flops,
                {
                    "size": lambda r: r["size"],
                    "variant": lambda r: r["variant"],
                    "GFLOP/it": lambda r: r["gflop_per_iteration"],
                    "decoder": lambda r: r["gflop_decoder"],
                    "CLIP": lambda r: r["gflop_clip"],
                    "torch's count (eager)": lambda r: r["gflop_counted_eager"],
                    "s/it": lambda r: r["s_per_it"],
                    "TFLOP/s": lambda r: r["achieved_tflops"],
                    "of peak": lambda r: r["fraction_of_peak"],
                    "of matmul": lambda r: r["fraction_of_matmul"],
                },
            ),
        ]
    out += ["", "## Targets" + (" (a dry run judges none)" if result["dry_run"] else ""), ""]
    out += _table(
        ["target", "measured at", "value", "met"],
        [[t["target"], t["measured_at"], t["value"], t["met"]] for t in result["targets"]],
    )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="every stage on CPU with the tiny preset")
    parser.add_argument(
        "--out-prefix", type=Path, help="PREFIX.json, PREFIX.md [bench/gpu-dry-run or bench/gpu]"
    )
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="a subset, for a rerun"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = DRY if args.dry_run else REAL
    if not args.dry_run and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here; --dry-run runs every stage on the CPU", file=sys.stderr)
        return 2
    prefix = args.out_prefix or REPO / "bench" / ("gpu-dry-run" if args.dry_run else "gpu")
    result = run(cfg, args.dry_run, prefix, tuple(args.stages))
    print(markdown(result))
    bad = [n for n, s in result["stages"].items() if s["status"] == "failed"]
    return 1 if bad or (result["stages"].get("cuda_tests", {}).get("result") or {}).get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
