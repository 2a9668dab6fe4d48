"""Redis memory under sustained load, through the real stack.

Starts its own redis-server, one `artgen worker` and one `artgen api` (the launcher's `LocalStack`),
submits N jobs over HTTP (all at once, so the queue holds them), samples Redis' `used_memory` every
`--sample-s` while they run, waits for the grace TTL (`ARTGEN_FINISHED_BYTES_TTL_S`) to pass after the
last one, and reports:

- base: `used_memory` with the stack up and no job yet;
- peak: the highest sample while jobs ran;
- steady: `used_memory` once the grace TTL has passed after the last job;
- per finished job: (steady - base) / N, next to what `MEMORY USAGE` says each kept key takes;
- that every job succeeded and that every result and time-lapse is still downloadable (now from the store).

With `--sizes` it instead measures, per picture size, the bytes one job holds in Redis while it runs
(its frames list, latest frame and record, read just before its end) and once finished (within and after
the grace TTL), by `MEMORY USAGE` of each of its keys: the figures of README's capacity model.

    python bench/soak.py --jobs 200 --size 128 --iterations 20 --grace 20
    python bench/soak.py --sizes 64 128 256 --iterations 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.stacks import bench_settings  # noqa: E402
from launch.processes import wait_for  # noqa: E402
from launch.stack import LocalStack  # noqa: E402
from shared.keys import Keys  # noqa: E402

TERMINAL = {"succeeded", "failed", "canceled"}


class Soak(LocalStack):
    """The launcher's stack with the soak's settings: its own redis-server (AOF off, so that `used_memory`
    counts no AOF buffer), one `artgen worker` and one `artgen api` once `up` is called."""

    def __init__(self, work: Path, model: str, grace_s: int, batch: int) -> None:
        settings = bench_settings(
            model, work, prefix="soak", finished_bytes_ttl_s=str(grace_s), batch_size=str(batch)
        )
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        super().__init__(work, settings, appendonly=False, env=env, cwd=REPO)
        self.keys = Keys(self.prefix)

    def used(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def usage(self, key: str) -> int:
        value = self.client.memory_usage(key, samples=0)
        return int(value or 0)


class Sampler(threading.Thread):
    """`used_memory` every `interval_s`, on its own connection."""

    def __init__(self, url: str, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.monotonic(), int(self.client.info("memory")["used_memory"])))
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _body(size: int, iterations: int, cutn: int, index: int) -> dict[str, Any]:
    return {
        "prompt": f"a lighthouse at dusk, number {index}",
        "width": size,
        "height": size,
        "iterations": iterations,
        "cutn": cutn,
        "seed": index,
    }


def _wait_all(http: httpx.Client, ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Every job's view once all have ended, read through the list endpoint (a hundred per request), so
    the polling itself stays a small load beside the jobs."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout_s
    while True:
        views: dict[str, dict[str, Any]] = {}
        for offset in range(0, len(ids) + 100, 100):
            page = http.get("/v1/jobs", params={"limit": 100, "offset": offset}).raise_for_status().json()
            views.update({view["id"]: view for view in page["jobs"] if view["id"] in wanted})
        if len(views) == len(wanted) and all(view["status"] in TERMINAL for view in views.values()):
            return views
        if time.monotonic() > deadline:
            left = sum(view["status"] not in TERMINAL for view in views.values())
            raise TimeoutError(f"{left} jobs did not end within {timeout_s} s")
        time.sleep(2.0)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="artgen-soak-"))
    try:
        with (
            Soak(work, args.model, args.grace, args.batch) as stack,
            httpx.Client(base_url=stack.up(), timeout=60) as http,
        ):
            time.sleep(2)  # let the worker's first heartbeat and Celery's bindings settle
            base = stack.used()
            sampler = Sampler(stack.redis_url, args.sample_s)
            sampler.start()
            started = time.monotonic()
            ids = [
                http.post("/v1/jobs", json=_body(args.size, args.iterations, args.cutn, i))
                .raise_for_status()
                .json()["id"]
                for i in range(args.jobs)
            ]
            views = _wait_all(http, ids, args.timeout)
            ran_s = time.monotonic() - started
            last_end = max(view["finished_at"] for view in views.values())
            # The grace TTL counts from each job's end; a second more for Redis' expiry cycle.
            time.sleep(max(0.0, last_end + args.grace + 2 - time.time()))
            sampler.stop()
            steady = stack.used()
            states = statistics.multimode(view["status"] for view in views.values())
            succeeded = sum(view["status"] == "succeeded" for view in views.values())
            keys = stack.keys
            bytes_left = sum(stack.client.exists(key) for job_id in ids for key in keys.bytes_for_job(job_id))
            kept = [sum(stack.usage(key) for key in keys.kept_for_job(job_id)) for job_id in ids]
            downloads = 0
            for job_id in ids:
                result = http.get(f"/v1/jobs/{job_id}/result")
                timelapse = http.get(f"/v1/jobs/{job_id}/timelapse")
                downloads += result.status_code == 200 and timelapse.status_code == 200
            peak = max(used for _, used in sampler.samples)
            # What is not any one job's: the indexes of all jobs and the finished-job statistics.
            shared_keys = [keys.recent(), keys.stats(), keys.running(), keys.workers()]
            indexes = sum(stack.usage(key) for key in shared_keys)
            return {
                "jobs": args.jobs,
                "size": args.size,
                "iterations": args.iterations,
                "cutn": args.cutn,
                "grace_s": args.grace,
                "batch": args.batch,
                "run_s": round(ran_s, 1),
                "succeeded": succeeded,
                "states": states,
                "base_bytes": base,
                "peak_bytes": peak,
                "steady_bytes": steady,
                "per_finished_job_bytes": round((steady - base) / args.jobs),
                "kept_keys_per_job_bytes_median": statistics.median(kept),
                "kept_keys_all_jobs_bytes": sum(kept),
                "indexes_and_stats_bytes": indexes,
                "rest_bytes": steady - base - sum(kept) - indexes,
                "byte_keys_left_after_grace": bytes_left,
                "results_and_timelapses_downloadable": downloads,
                "samples": len(sampler.samples),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sizes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Bytes per running and per finished job by picture size, from `MEMORY USAGE` of each key."""
    work = Path(tempfile.mkdtemp(prefix="artgen-sizes-"))
    # A long grace TTL: the finished job's bytes are read while they are still there.
    rows = []
    try:
        with Soak(work, args.model, 3600, 1) as stack, httpx.Client(base_url=stack.up(), timeout=60) as http:
            keys = stack.keys
            for size in args.sizes:
                job_id = (
                    http.post("/v1/jobs", json=_body(size, args.iterations, args.cutn, size))
                    .raise_for_status()
                    .json()["id"]
                )
                running_peak: dict[str, int] = {}
                while True:
                    view = http.get(f"/v1/jobs/{job_id}").json()
                    if view["status"] in TERMINAL:
                        break
                    if view["status"] == "running":
                        now = {
                            "frames": stack.usage(keys.frames(job_id)),
                            "frame": stack.usage(keys.frame(job_id)),
                            "checkpoint": stack.usage(keys.checkpoint(job_id)),
                            "record": stack.usage(keys.job(job_id)),
                            "events": stack.usage(keys.events(job_id)),
                        }
                        if sum(now.values()) > sum(running_peak.values()):
                            running_peak = now
                    time.sleep(0.2)
                assert view["status"] == "succeeded", view
                timelapse_key = keys.timelapse(job_id)
                wait_for(lambda: stack.client.exists(timelapse_key), 60, "the time-lapse", 0.1)  # noqa: B023
                finished = {
                    "frames": stack.usage(keys.frames(job_id)),
                    "timelapse": stack.usage(keys.timelapse(job_id)),
                    "result": stack.usage(keys.result(job_id)),
                    "frame": stack.usage(keys.frame(job_id)),
                    "record": stack.usage(keys.job(job_id)),
                    "events": stack.usage(keys.events(job_id)),
                }
                rows.append(
                    {
                        "size": size,
                        "iterations": args.iterations,
                        "frames_kept": stack.client.llen(keys.frames(job_id)),
                        "running_peak": running_peak,
                        "running_bytes": sum(running_peak.values()),
                        "finished": finished,
                        "finished_in_grace_bytes": sum(finished.values()),
                        "finished_after_grace_bytes": finished["record"] + finished["events"],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--cutn", type=int, default=8)
    parser.add_argument("--grace", type=int, default=20, help="ARTGEN_FINISHED_BYTES_TTL_S for the run")
    parser.add_argument("--batch", type=int, default=4, help="ARTGEN_BATCH_SIZE of the worker")
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=7200)
    parser.add_argument("--sizes", type=int, nargs="*", help="measure bytes per job at these sizes instead")
    args = parser.parse_args()
    if args.sizes:
        print(json.dumps(sizes(args), indent=2))
    else:
        print(json.dumps(soak(args), indent=2))


if __name__ == "__main__":
    main()
