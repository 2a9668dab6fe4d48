"""What webhooks cost the GPU worker, how late they arrive, and what `Prefer: wait` saves a client.

(a) The same job, interleaved, with no webhook, with every event (start, progress every 0.2 s,
    completed) to a live receiver, and with every event to a dead host (accepts connections, never
    answers: each attempt waits for the read timeout): the worker's run time of each, medians and ratios.
(b) From the job's end (`finished_at`) to its signed `completed` delivery at the live receiver: median.
(c) `Prefer: wait=30` on a short job: the one request's wall time, against the job's own run time.

Starts its own redis-server, one `artgen worker` (one job at a time), one `artgen webhooks` and one
`artgen api`; the receiver and the dead host listen on 127.0.0.1.

    python bench/webhooks.py --model tiny --size 64 --iterations 60 --cutn 8 --repeats 5
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.stacks import bench_settings  # noqa: E402
from launch.stack import LocalStack  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"bench-webhooks-secret-0123456789").decode()
EVENTS = ["start", "progress", "completed"]


class Receiver:
    """Answers 204 to every POST and notes when each webhook-id arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        arrived = self.arrived

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                arrived.setdefault(self.headers["webhook-id"], time.time())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def wait_done(http: httpx.Client, job_id: str) -> dict[str, Any]:
    while True:
        view: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if view["status"] in ("succeeded", "failed", "canceled"):
            assert view["status"] == "succeeded", view
            return view
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--cutn", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args()

    receiver = Receiver()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(1024)
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/hook"
    body = {"prompt": "a red circle", "width": args.size, "height": args.size}
    body |= {"iterations": args.iterations, "cutn": args.cutn, "seed": 1}
    runs: dict[str, list[float]] = {"none": [], "live": [], "dead": []}
    lateness: list[float] = []

    with tempfile.TemporaryDirectory(prefix="artgen-bench-") as tmp:
        work = Path(tmp)
        settings = bench_settings(
            args.model,
            work,
            batch_size="1",
            log_level="INFO",  # start_worker and start_webhooks wait for Celery's "ready" line
            webhook_secret=SECRET,
            webhook_allow_hosts="127.0.0.1",
            webhook_timeout_s="2",
            webhook_progress_interval_s="0.2",
        )
        with LocalStack(work / "stack", settings, cwd=REPO) as stack:
            stack.start_worker("bench", concurrency=1)
            stack.start_webhooks()
            url = stack.start_api()
            with httpx.Client(base_url=url, timeout=120) as http:
                wait_done(http, http.post("/v1/jobs", json=body).json()["id"])  # warm-up
                for _ in range(args.repeats):
                    for kind, hook in (("none", None), ("live", receiver.url), ("dead", dead_url)):
                        extra = {"webhook": hook, "webhook_events_filter": EVENTS} if hook else {}
                        job = http.post("/v1/jobs", json={**body, **extra}).raise_for_status().json()
                        view = wait_done(http, job["id"])
                        runs[kind].append(view["run_s"])
                        if kind == "live":
                            completed = f"msg_{job['id']}_completed"
                            while completed not in receiver.arrived:
                                time.sleep(0.01)
                            lateness.append(receiver.arrived[completed] - view["finished_at"])
                short = {**body, "iterations": 10}
                started = time.perf_counter()
                answer = http.post("/v1/jobs", json=short, headers={"Prefer": "wait=30"})
                wait_wall = time.perf_counter() - started
                assert answer.status_code == 201, answer.text
                wait_run = answer.json()["run_s"]
    dead.close()

    medians = {kind: statistics.median(values) for kind, values in runs.items()}
    report = {
        "job": f"{args.model} {args.size}x{args.size}, {args.iterations} iterations, {args.cutn} cutouts",
        "repeats": args.repeats,
        "run_s": runs,
        "median_run_s": medians,
        "live_over_none": medians["live"] / medians["none"],
        "dead_over_none": medians["dead"] / medians["none"],
        "completed_delivery_after_end_s": statistics.median(lateness),
        "prefer_wait_wall_s": wait_wall,
        "prefer_wait_run_s": wait_run,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"## Webhooks ({report['job']}; medians of {args.repeats}, interleaved)\n")
    print("| webhook | median run s | ratio to none |")
    print("|---|---|---|")
    for kind, label in (
        ("none", "none"),
        ("live", "every event, live receiver"),
        ("dead", "every event, dead host"),
    ):
        print(f"| {label} | {medians[kind]:.3f} | {medians[kind] / medians['none']:.3f} |")
    late_ms = report["completed_delivery_after_end_s"] * 1000
    print(f"\n`completed` reached the receiver {late_ms:.0f} ms after the job ended (median).")
    print(
        f"`Prefer: wait=30`, 10 iterations: one request of {wait_wall:.3f} s; the job ran {wait_run:.3f} s."
    )


if __name__ == "__main__":
    main()
