"""Jobs per hour through the real service, by the worker's batch size (`ARTGEN_BATCH_SIZE`).

One stack per batch size (its own redis-server, one `artgen worker --concurrency 1`, one `artgen api`),
all started before measuring. Each round submits the same N jobs to every stack in turn (never two at
once) and times from the first submission to the last job finished; rounds alternate between stacks so
that drift in machine load falls on all alike. Figures are medians over rounds after a warm-up round.

    python bench/throughput.py --model toyworld --size 64 --iterations 100 --cutn 32 --jobs 4 --batch 1 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.stacks import bench_settings  # noqa: E402
from launch.stack import LocalStack  # noqa: E402

TERMINAL = {"succeeded", "failed", "canceled"}
PROMPTS = ["a red circle on a blue background", "blue and yellow stripes", "a small green square", "a dot"]


def batch_stack(work: Path, model: str, batch: int) -> LocalStack:
    """redis-server + worker + API with one batch size (started by `with`, then `up()`)."""
    root = work / f"batch{batch}"
    settings = bench_settings(model, work, root / "results", batch_size=str(batch))
    return LocalStack(root, settings, cwd=REPO)


def run_round(url: str, bodies: list[dict[str, Any]]) -> dict[str, float]:
    """Submit every job at once; wall seconds until the last one finished, and the batches seen."""
    with httpx.Client(base_url=url, timeout=60) as http:
        start = time.perf_counter()
        ids = [http.post("/v1/jobs", json=body).raise_for_status().json()["id"] for body in bodies]
        views: dict[str, dict[str, Any]] = {}
        while len(views) < len(ids):
            for job_id in ids:
                if job_id not in views:
                    view = http.get(f"/v1/jobs/{job_id}").json()
                    if view["status"] in TERMINAL:
                        views[job_id] = view
            time.sleep(0.05)
        wall = time.perf_counter() - start
    failed = [v for v in views.values() if v["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"jobs did not succeed: {failed}")
    return {
        "wall_s": wall,
        "largest_batch": max(v["batch"] or 1 for v in views.values()),
        "longest_run_s": max(v["run_s"] for v in views.values()),
        "longest_wait_s": max(v["queue_wait_s"] for v in views.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=4, help="jobs submitted at once per round")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="ARTGEN_BATCH_SIZE values")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    bodies = [
        {
            "prompt": prompt,
            "width": args.size,
            "height": args.size,
            "iterations": args.iterations,
            "cutn": args.cutn,
            "seed": seed,
        }
        for seed, prompt in enumerate(PROMPTS * args.jobs)
    ][: args.jobs]
    work = Path(tempfile.mkdtemp(prefix="artgen-throughput-"))
    rows: dict[int, list[dict[str, float]]] = {b: [] for b in args.batch}
    with ExitStack() as running:
        urls = {b: running.enter_context(batch_stack(work, args.model, b)).up() for b in args.batch}
        for rnd in range(args.rounds + 1):
            for batch, url in urls.items():
                result = run_round(url, bodies)
                print(f"  round {rnd} batch {batch}: {result}", file=sys.stderr, flush=True)
                if rnd:  # round 0 warms up models, kernels and connections
                    rows[batch].append(result)

    base = statistics.median(r["wall_s"] for r in rows[args.batch[0]])
    report = []
    for b in args.batch:
        wall = statistics.median(r["wall_s"] for r in rows[b])
        report.append(
            {
                "batch_size": b,
                "jobs": args.jobs,
                "wall_s": round(wall, 2),
                "jobs_per_hour": round(args.jobs * 3600 / wall, 1),
                "vs_first": round(base / wall, 2),
                "largest_batch_seen": max(int(r["largest_batch"]) for r in rows[b]),
            }
        )
    if args.json:
        print(json.dumps(report, indent=2))
        return
    job = f"{args.model} {args.size}x{args.size}, {args.iterations} iterations, {args.cutn} cutouts"
    print(f"## Jobs per hour through the service ({args.jobs} jobs at once; {job}; medians of {args.rounds})")
    first = args.batch[0]
    print(f"\n| ARTGEN_BATCH_SIZE | wall s, {args.jobs} jobs | jobs/hour | vs batch {first} | max batch |")
    print("|---:|---:|---:|---:|---:|")
    for r in report:
        print(
            f"| {r['batch_size']} | {r['wall_s']:.2f} | {r['jobs_per_hour']:.1f} | {r['vs_first']:.2f}x "
            f"| {r['largest_batch_seen']} |"
        )


if __name__ == "__main__":
    main()
