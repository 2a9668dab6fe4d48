"""`GET /v1/jobs/{id}` (and `/frame`) against the floor, side by side in one run.

Starts its own redis-server, one `artgen api` (one process, no worker, API keys off, access log off) and
`bench/anchor.py` (FastAPI + redis.asyncio, one HGETALL, the same uvicorn settings). A queued job is
submitted (so artgen's answer includes its queue position) and given a stored frame. Then `wrk` (50
connections) alternates, round after round: artgen's GET, the anchor's GET, artgen's /frame with
If-None-Match (the 304 a polling page gets). Medians over the rounds, and artgen's ratios to the anchor.
Needs `wrk` (`make system-deps`).

    python bench/progress.py --rounds 5 --duration 8 --connections 50
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.service import wrk_poll  # noqa: E402
from launch.processes import free_port, wait_for  # noqa: E402
from launch.stack import LocalStack  # noqa: E402
from shared.keys import Keys  # noqa: E402


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured(
    url: str, connections: int, duration_s: int, header: str | None, server: int, redis: int
) -> dict[str, float]:
    """One wrk run, plus the CPU the server process and Redis spent per request meanwhile (microseconds)."""
    before = _cpu_s(server), _cpu_s(redis)
    run = wrk_poll(url, connections, duration_s, header)
    requests = run["requests_per_s"] * duration_s
    run["server_cpu_us"] = (_cpu_s(server) - before[0]) / requests * 1e6
    run["redis_cpu_us"] = (_cpu_s(redis) - before[1]) / requests * 1e6
    return run


def _png(size: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), (200, 90, 40)).save(out, format="PNG")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8, help="seconds of each wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="artgen-bench-progress-"))
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    settings = {"redis_prefix": prefix, "model": "tiny", "device": "cpu", "log_level": "WARNING"}
    with LocalStack(work, settings, appendonly=False, cwd=REPO) as stack:
        artgen = stack.start_api()
        keys = Keys(prefix)
        body = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "iterations": 10, "seed": 7}
        job = httpx.post(f"{artgen}/v1/jobs", json=body, timeout=30).raise_for_status().json()
        job_id = job["id"]
        # A frame as a worker would store it, so /frame has something to answer (and an ETag).
        stack.client.set(keys.frame(job_id), _png(64))
        stack.client.hset(keys.job(job_id), "frame_seq", 1)
        etag = httpx.get(f"{artgen}/v1/jobs/{job_id}/frame").raise_for_status().headers["etag"]

        anchor_port = free_port()
        anchor = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bench" / "anchor.py"),
                "--port",
                str(anchor_port),
                "--redis-url",
                stack.redis_url,
                "--prefix",
                prefix,
            ],
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if not k.startswith("ARTGEN_")},
        )
        try:
            floor = f"http://127.0.0.1:{anchor_port}"
            wait_for(lambda: _answers(f"{floor}/v1/jobs/{job_id}"), 30, "the anchor endpoint")
            api_pid = stack.services[-1].pid  # one process: uvicorn serves in `artgen api` itself
            assert stack.redis is not None and stack.redis.process is not None
            redis_pid = stack.redis.process.pid
            targets = {
                "artgen GET /v1/jobs/{id}": (f"{artgen}/v1/jobs/{job_id}", None, api_pid),
                "anchor GET (one HGETALL)": (f"{floor}/v1/jobs/{job_id}", None, anchor.pid),
                "artgen GET /v1/jobs/{id}/frame (304)": (f"{artgen}/v1/jobs/{job_id}/frame", etag, api_pid),
            }
            for url, header, _ in targets.values():  # warm-up: connections, caches, first-request imports
                wrk_poll(url, args.connections, 2, header)
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for _ in range(args.rounds):  # alternated, so drift in machine load hits each alike
                for name, (url, header, server) in targets.items():
                    measured = _measured(url, args.connections, args.duration, header, server, redis_pid)
                    runs[name].append(measured)
        finally:
            anchor.terminate()
            anchor.wait(10)

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    anchor_name = "anchor GET (one HGETALL)"
    rows: dict[str, dict[str, float]] = {
        name: {
            key: median(name, key)
            for key in ("requests_per_s", "p50_ms", "p99_ms", "non_2xx", "server_cpu_us", "redis_cpu_us")
        }
        for name in runs
    }
    for row in rows.values():
        row["rps_ratio"] = row["requests_per_s"] / rows[anchor_name]["requests_per_s"]
        row["p99_ratio"] = row["p99_ms"] / rows[anchor_name]["p99_ms"]
    report: dict[str, Any] = {
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "rows": rows,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"## GET /v1/jobs/{{id}} against the floor ({args.connections} connections, "
        f"{args.duration} s x {args.rounds} rounds, medians)\n"
    )
    print(
        "| endpoint | requests/s | p50 ms | p99 ms | non-2xx | req/s vs anchor | p99 vs anchor "
        "| server CPU µs/request | Redis CPU µs/request |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['requests_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['non_2xx']:.0f} | {row['rps_ratio']:.2f}x | {row['p99_ratio']:.2f}x | "
            f"{row['server_cpu_us']:.0f} | {row['redis_cpu_us']:.0f} |"
        )


if __name__ == "__main__":
    main()
