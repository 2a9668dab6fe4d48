"""What the service adds around the engine, and how much polling its progress endpoint takes.

(a) The same job run through HTTP + Redis + Celery and directly through the engine, interleaved in one
    run: medians, their ratio, and the time from the job starting to its first stored frame.
(b) N concurrent pollers of GET /v1/jobs/{id} for T seconds, driven by `wrk` from its own process:
    requests per second and latency percentiles.

Starts its own redis-server, one `artgen worker` and one `artgen api`; needs `wrk` (`make system-deps`).

    python bench/service.py --model tiny --size 64 --iterations 50 --repeats 7 --pollers 50 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch.stack import LocalStack  # noqa: E402
from shared.keys import Keys  # noqa: E402


def run_through_service(
    http: httpx.Client, client: redis.Redis, keys: Keys, body: dict[str, Any]
) -> dict[str, float]:
    """Submit, wait for the end as a client would (SSE), and read the timings the worker recorded."""
    start = time.perf_counter()
    job = http.post("/v1/jobs", json=body).raise_for_status().json()
    with http.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=600) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:") and line.split(":", 1)[1].strip() == "finished":
                break
    result = http.get(f"/v1/jobs/{job['id']}/result")
    wall = time.perf_counter() - start
    result.raise_for_status()
    view = http.get(f"/v1/jobs/{job['id']}").json()
    assert view["status"] == "succeeded", view
    # Stream ids are Redis' millisecond clock: the first frame event is when the first frame was stored.
    first_frame_ms = next(
        int(entry_id.decode().split("-")[0])
        for entry_id, fields in client.xrange(keys.events(job["id"]))
        if fields[b"event"] == b"frame"
    )
    return {
        "wall_s": wall,
        "run_s": view["finished_at"] - view["started_at"],
        "queue_wait_s": view["started_at"] - view["created_at"],
        "first_frame_s": first_frame_ms / 1000 - view["started_at"],
    }


def run_directly(model: str, size: int, iterations: int, cutn: int, seed: int) -> float:
    from worker.engine import GenerationConfig, generate
    from worker.models import get_models

    models = get_models(model, Path(os.environ.get("ARTGEN_MODELS_DIR", tempfile.gettempdir())), "cpu")
    config = GenerationConfig(
        prompts="flowering magenta orchids",
        width=size,
        height=size,
        iterations=iterations,
        seed=seed,
        cutn=cutn,
    )
    start = time.perf_counter()
    generate(models, config)
    return time.perf_counter() - start


def wrk_poll(url: str, pollers: int, duration_s: int, if_none_match: str | None = None) -> dict[str, float]:
    """`wrk` on one URL (with `If-None-Match` when given): requests/s, p50/p99 ms, non-2xx/3xx answers."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run `make system-deps` (Debian package wrk)")
    threads = min(2, pollers)
    header = ["-H", f"If-None-Match: {if_none_match}"] if if_none_match else []
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{pollers}", f"-d{duration_s}s", "--latency", *header, url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def percentile(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_s": rps,
        "p50_ms": percentile("50"),
        "p99_ms": percentile("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="artgen-bench-"))
    models_dir = os.environ.get("ARTGEN_MODELS_DIR", str(work / "models"))
    os.environ["ARTGEN_MODELS_DIR"] = models_dir  # the engine run directly loads from the same place
    settings = {
        "redis_prefix": f"bench-{uuid.uuid4().hex[:6]}",
        "model": args.model,
        "device": "cpu",
        "models_dir": models_dir,
        "log_level": "WARNING",
    }
    with LocalStack(work, settings, cwd=REPO) as stack:
        url = stack.up()
        keys = Keys(stack.prefix)
        body = {
            "prompt": "flowering magenta orchids",
            "width": args.size,
            "height": args.size,
            "iterations": args.iterations,
            "cutn": args.cutn,
            "seed": 7,
        }
        with httpx.Client(base_url=url, timeout=600) as http:
            run_through_service(http, stack.client, keys, body)  # warm-up: first request, first job
            run_directly(args.model, args.size, args.iterations, args.cutn, 7)
            service, direct = [], []
            for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
                service.append(run_through_service(http, stack.client, keys, body))
                direct.append(run_directly(args.model, args.size, args.iterations, args.cutn, 7))
            probe = http.post("/v1/jobs", json={**body, "iterations": 5}).json()["id"]

        def median(key: str) -> float:
            return statistics.median(s[key] for s in service)

        direct_s = statistics.median(direct)
        report: dict[str, Any] = {
            "job": f"{args.model} {args.size}x{args.size}, {args.iterations} iterations, {args.cutn} cutouts",
            "repeats": args.repeats,
            "direct_engine_s": direct_s,
            "service_wall_s": median("wall_s"),
            "service_run_s": median("run_s"),
            "queue_wait_s": median("queue_wait_s"),
            "first_frame_after_start_s": median("first_frame_s"),
            "overhead_ratio": median("wall_s") / direct_s,
            "polling": {"pollers": args.pollers, "duration_s": args.duration}
            | wrk_poll(f"{url}/v1/jobs/{probe}", args.pollers, args.duration),
        }

    if args.json:
        print(json.dumps(report, indent=2))
        return
    poll = report["polling"]
    print(f"## Service overhead ({report['job']}; medians of {args.repeats}, interleaved)\n")
    print("| path | median wall s |")
    print("|---|---|")
    print(f"| engine called directly | {direct_s:.3f} |")
    print(f"| API + Redis + Celery worker (submit to result) | {report['service_wall_s']:.3f} |")
    print(f"| of which the worker ran the job | {report['service_run_s']:.3f} |")
    print(f"| of which it waited in the queue | {report['queue_wait_s']:.3f} |")
    print(f"\nratio service/direct: **{report['overhead_ratio']:.3f}**; ", end="")
    print(f"first frame stored {report['first_frame_after_start_s'] * 1000:.0f} ms after the job started\n")
    print(f"## Progress endpoint under load ({poll['pollers']} pollers, {poll['duration_s']} s, wrk)\n")
    print("| requests/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---|---|")
    row = (poll["requests_per_s"], poll["p50_ms"], poll["p99_ms"], poll["non_2xx"])
    print("| {:.0f} | {:.2f} | {:.2f} | {:.0f} |".format(*row))


if __name__ == "__main__":
    main()
