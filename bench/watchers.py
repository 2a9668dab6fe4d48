"""Many Server-Sent Events watchers of one job on one API process, and a plain client polling meanwhile.

For each N: a job is held in the queue behind a blocker job (one worker slot, batches of one) while N
watchers connect to its event stream (at `--rate` a second, from a process of their own); then the
blocker is canceled, the job runs and ends. Reported per N:
- watchers that saw `finished`, and their lag from the job's `finished_at` (p50, p99, max);
- errors (a refused or broken stream, a stream that ended without `finished`);
- the API process's RSS (before, peak) and Redis `connected_clients` (peak);
- a plain client polling `GET /v1/jobs/{id}` every `--poll-ms` from a third process, from the first
  watcher's connect to the last `finished`: requests, errors, p50/p99, split into the connect phase and
  the watch phase (all connected: the job runs and ends).
`--slow` measures a watcher that reads nothing for `--slow-s` seconds beside `--slow-others` normal ones
while a job runs: the API's RSS growth, and whether the others kept up.

Starts its own redis-server, one `artgen worker` (tiny model) and one `artgen api`; raises `ulimit -n`.

    python bench/watchers.py --watchers 100,1000,5000 --slow
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STACK_SETTINGS = {
    "model": "tiny",
    "device": "cpu",
    "preview_every": "5",
    "batch_size": "1",  # the watched job must wait behind the blocker, not join its batch
    "rate_limit_per_minute": "0",
    "max_iterations": "100000",
    "max_watchers": "20000",
    "log_level": "INFO",  # the launcher sees a worker ready by its INFO line
}
JOB = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "cutn": 4, "seed": 1}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)  # nearest rank: the smallest value with at least q% of them at or below it
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# --- the watchers' process ------------------------------------------------------------------------


async def _watch(session: Any, url: str, out: dict[str, Any]) -> None:
    """One SSE client: records when its snapshot and its `finished` came, and how many events it got.

    It scans raw chunks for the event names instead of parsing lines: the client shares the machine with
    the API, and the less CPU it takes, the more the lag measures the API."""
    try:
        async with session.get(url, headers={"Accept": "text/event-stream"}) as response:
            if response.status != 200:
                out["error"] = f"HTTP {response.status}"
                return
            tail = b""
            async for chunk in response.content.iter_any():
                text = tail + chunk
                out["events"] = out.get("events", 0) + text.count(b"event: ") - tail.count(b"event: ")
                if "snapshot" not in out and b"event: snapshot" in text:
                    out["snapshot"] = time.time()
                if b"event: finished" in text:
                    out["finished"] = time.time()
                    return
                if b"event: error" in text:
                    out["error"] = "error event"
                    return
                tail = text[-32:]
            out["error"] = "stream ended without finished"
    except Exception as exc:  # counted, never fatal: the bench reports errors
        out["error"] = f"{type(exc).__name__}: {exc}"[:200]


async def _watchers_main(url: str, count: int, rate: float, timeout_s: float) -> None:
    import aiohttp

    results: list[dict[str, Any]] = [{} for _ in range(count)]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        started = time.monotonic()
        for index in range(count):
            # A steady arrival rate, as people opening a shared link.
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_watch(session, url, results[index])))
        # Connected = every stream has its snapshot (or failed).
        while any("snapshot" not in r and "error" not in r for r in results):
            if time.monotonic() - started > timeout_s:
                break
            await asyncio.sleep(0.05)
        print(json.dumps({"connected": sum("snapshot" in r for r in results), "at": time.time()}), flush=True)
        await asyncio.wait(tasks, timeout=timeout_s)
    print(json.dumps({"results": results}), flush=True)


# --- the poller's process -------------------------------------------------------------------------


def _poller_main(url: str, period_s: float) -> None:
    """GET the job every `period_s` until stdin closes; then print every (time, latency, status)."""
    import httpx

    samples: list[tuple[float, float, int]] = []
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with httpx.Client(timeout=10) as http:
        while not stop.is_set():
            start = time.perf_counter()
            at = time.time()
            try:
                status = http.get(url).status_code
            except httpx.HTTPError:
                status = 0
            samples.append((at, time.perf_counter() - start, status))
            stop.wait(max(0.0, period_s - (time.perf_counter() - start)))
    print(json.dumps({"samples": samples}), flush=True)


# --- the orchestrator -----------------------------------------------------------------------------


class Sampler:
    """API RSS and Redis connected_clients every 0.2 s, in a thread."""

    def __init__(self, api_pid: int, client: Any) -> None:
        import psutil

        self.process = psutil.Process(api_pid)
        self.client = client
        self.rss: list[tuple[float, int]] = []
        self.clients: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            self.rss.append((now, self.process.memory_info().rss))
            self.clients.append((now, int(self.client.info("clients")["connected_clients"])))
            self._stop.wait(0.2)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def _read_json(proc: subprocess.Popen[str], key: str, timeout_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    box: dict[str, Any] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            data = json.loads(line)
            if key in data:
                box.update(data)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if key not in box:
        raise RuntimeError(f"no {key!r} from the client process within {timeout_s:.0f} s")
    return box


def _wait_state(http: Any, job_id: str, states: set[str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        view: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if view["status"] in states:
            return view
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {view['status']} after {timeout_s} s")
        time.sleep(0.1)


def _api_pid(stack: Any) -> int:
    return next(proc.process.pid for proc in stack.services if proc.name.startswith("api-"))


def _poll_summary(samples: list[tuple[float, float, int]], start: float, end: float) -> dict[str, Any]:
    chosen = [(lat, status) for at, lat, status in samples if start <= at <= end]
    latencies = [lat * 1000 for lat, _ in chosen]
    return {
        "requests": len(chosen),
        "errors": sum(status != 200 for _, status in chosen),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=float("nan")),
    }


def run_watchers(stack: Any, api_url: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=api_url, timeout=30) as http:
        blocker = http.post("/v1/jobs", json={**JOB, "iterations": 100000}).raise_for_status().json()
        _wait_state(http, blocker["id"], {"running"}, 120)
        job = http.post("/v1/jobs", json={**JOB, "iterations": args.iterations}).raise_for_status().json()
        events_url = f"{api_url}/v1/jobs/{job['id']}/events"
        with Sampler(_api_pid(stack), stack.client) as sampler:
            time.sleep(0.5)
            rss_before = sampler.rss[-1][1]
            poller = _spawn("_poller", f"{api_url}/v1/jobs/{job['id']}", str(args.poll_ms / 1000))
            time.sleep(0.5)
            t_connect = time.time()
            watchers = _spawn("_watchers", events_url, str(count), str(args.rate), str(args.timeout_s))
            connected = _read_json(watchers, "connected", args.timeout_s)
            t_connected = connected["at"]
            http.post(f"/v1/jobs/{blocker['id']}/cancel").raise_for_status()
            final = _wait_state(http, job["id"], {"succeeded", "failed", "canceled"}, args.timeout_s)
            results = _read_json(watchers, "results", args.timeout_s)["results"]
            t_end = max([r.get("finished", 0.0) for r in results] + [final["finished_at"]])
            time.sleep(0.3)
        assert poller.stdin is not None
        poller.stdin.close()
        samples = _read_json(poller, "samples", 30)["samples"]
        for proc in (poller, watchers):
            proc.wait(30)
    finished_at = final["finished_at"]
    lags = [r["finished"] - finished_at for r in results if "finished" in r]
    errors: dict[str, int] = {}
    for r in results:
        if "error" in r:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    return {
        "watchers": count,
        "connected": connected["connected"],
        "saw_finished": len(lags),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "job_state": final["status"],
        "job_run_s": final["run_s"],
        "connect_s": t_connected - t_connect,
        "lag_p50_s": percentile(lags, 50),
        "lag_p99_s": percentile(lags, 99),
        "lag_max_s": max(lags, default=float("nan")),
        "events_per_watcher_median": statistics.median([r.get("events", 0) for r in results]),
        "api_rss_before_mb": rss_before / 2**20,
        "api_rss_peak_mb": max(v for _, v in sampler.rss) / 2**20,
        "redis_clients_peak": max(v for _, v in sampler.clients),
        "poll_connect_phase": _poll_summary(samples, t_connect, t_connected),
        "poll_watch_phase": _poll_summary(samples, t_connected, t_end),
        "poll_all": _poll_summary(samples, t_connect, t_end),
    }


def _slow_socket(api_url: str, path: str) -> socket.socket:
    """An SSE client that sends its request and then reads nothing (a small receive buffer, so the
    server's side fills soon)."""
    host, port = api_url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def run_slow(stack: Any, api_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Watchers that read nothing for `slow_s` beside `slow_others` normal ones, while a job runs."""
    import httpx

    with httpx.Client(base_url=api_url, timeout=30) as http:
        job = http.post("/v1/jobs", json={**JOB, "iterations": 100000}).raise_for_status().json()
        _wait_state(http, job["id"], {"running"}, 120)
        path = f"/v1/jobs/{job['id']}/events"
        with Sampler(_api_pid(stack), stack.client) as sampler:
            time.sleep(1.0)
            rss_before = sampler.rss[-1][1]
            slow = [_slow_socket(api_url, path) for _ in range(args.slow_count)]
            others = _spawn("_watchers", api_url + path, str(args.slow_others), "200", str(args.timeout_s))
            _read_json(others, "connected", args.timeout_s)
            time.sleep(1.0)
            connected_at = time.time()
            rss_connected = sampler.rss[-1][1]
            time.sleep(args.slow_s)
            rss_during = [v for at, v in sampler.rss if at >= connected_at]
            view = http.post(f"/v1/jobs/{job['id']}/cancel").raise_for_status().json()
            final = _wait_state(http, job["id"], {"canceled"}, 60)
            results = _read_json(others, "results", args.timeout_s)["results"]
            others.wait(30)
            # Now the slow ones read: what they get is bounded, ends with `finished`.
            slow_bytes, slow_finished = [], 0
            for sock in slow:
                sock.settimeout(10)
                data = b""
                with contextlib.suppress(TimeoutError):
                    while b"event: finished" not in data:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                slow_bytes.append(len(data))
                slow_finished += b"event: finished" in data
                sock.close()
    lags = [r["finished"] - final["finished_at"] for r in results if "finished" in r]
    return {
        "slow_watchers": args.slow_count,
        "slow_s": args.slow_s,
        "others": args.slow_others,
        "others_saw_finished": len(lags),
        "others_errors": sum("error" in r for r in results),
        "others_events_median": statistics.median([r.get("events", 0) for r in results]),
        "others_lag_p99_s": percentile(lags, 99),
        "iterations_run": view["iteration"],
        "api_rss_before_mb": rss_before / 2**20,
        "api_rss_all_connected_mb": rss_connected / 2**20,
        "api_rss_peak_in_the_minute_mb": max(rss_during) / 2**20,
        "api_rss_growth_in_the_minute_mb": (max(rss_during) - rss_connected) / 2**20,
        "slow_saw_finished": slow_finished,
        "slow_bytes_read_max": max(slow_bytes),
    }


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| watchers | saw finished | errors | lag p50 / p99 / max (s) | API RSS before → peak (MB) "
        "| Redis clients (peak) | poller: requests, errors, p50 / p99 (ms), connect phase "
        "| poller, watch phase |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, w = r["poll_connect_phase"], r["poll_watch_phase"]
        lines.append(
            f"| {r['watchers']:,} | {r['saw_finished']:,} | {r['errors']} "
            f"| {r['lag_p50_s']:.2f} / {r['lag_p99_s']:.2f} / {r['lag_max_s']:.2f} "
            f"| {r['api_rss_before_mb']:.0f} → {r['api_rss_peak_mb']:.0f} | {r['redis_clients_peak']} "
            f"| {c['requests']}, {c['errors']}, {c['p50_ms']:.1f} / {c['p99_ms']:.1f} "
            f"| {w['requests']}, {w['errors']}, {w['p50_ms']:.1f} / {w['p99_ms']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_watchers":
        url, count, rate, timeout_s = sys.argv[2:6]
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_watchers_main(url, int(count), float(rate), float(timeout_s)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_poller":
        _poller_main(sys.argv[2], float(sys.argv[3]))
        return

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--watchers", default="100,1000,5000", help="comma-separated N (up to 10,000)")
    parser.add_argument("--rate", type=float, default=500.0, help="watchers connecting per second")
    parser.add_argument("--iterations", type=int, default=60, help="iterations of the watched job")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="the poller's period")
    parser.add_argument("--timeout-s", type=float, default=180.0)
    parser.add_argument("--slow", action="store_true", help="also the slow-watcher measurement")
    parser.add_argument("--slow-count", type=int, default=1, help="watchers that read nothing")
    parser.add_argument("--slow-s", type=float, default=60.0)
    parser.add_argument("--slow-others", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    counts = [int(n) for n in args.watchers.split(",") if n]
    if not args.slow and not counts:
        parser.error("nothing to measure: give --watchers and/or --slow")
    if any(not 1 <= n <= 10_000 for n in counts):
        parser.error("--watchers: each N from 1 to 10,000")

    # Every socket is a descriptor, in the watchers' process and the API's: children inherit this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max(counts, default=0) + 1024  # each of the API and the watchers holds one per watcher
    if hard != resource.RLIM_INFINITY and hard < needed:
        sys.exit(f"ulimit -Hn is {hard}; {needed} open files are needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))

    from launch.stack import LocalStack

    rows: list[dict[str, Any]] = []
    slow: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="artgen-watchers-") as tmp:
        settings = {
            **STACK_SETTINGS,
            "redis_prefix": f"bench-{uuid.uuid4().hex[:6]}",
            "models_dir": f"{tmp}/models",
            "results_dir": f"{tmp}/results",
        }
        with LocalStack(Path(tmp), settings, appendonly=False, env={"OMP_NUM_THREADS": "1"}) as stack:
            stack.start_worker("bench")
            api_url = stack.start_api()
            for count in counts:
                row = run_watchers(stack, api_url, count, args)
                rows.append(row)
                print(json.dumps(row), flush=True)
            if args.slow:
                slow = run_slow(stack, api_url, args)
                print(json.dumps(slow), flush=True)
    print(f"\nmachine: {_machine()}\n")
    if rows:
        print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": _machine(), "watchers": rows, "slow": slow}, indent=2))


if __name__ == "__main__":
    main()
