"""Many Server-Sent Events watchers of one job over real HTTP and a real redis-server: one Redis reader."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from api.fanout import WATCHERS_RETRY_AFTER_S
from api.main import REDIS_CONNECTIONS
from shared.keys import Keys
from tests.integration.conftest import Stack
from tests.integration.test_service import submit, wait_until

pytestmark = pytest.mark.integration

WATCHERS = 300


def _blocked_readers(client: redis.Redis) -> int:
    """Connections blocked in XREAD right now (an event stream's reader)."""
    return sum(1 for c in client.client_list() if c.get("cmd") == "xread" and "b" in c.get("flags", ""))


async def _follow(http: httpx.AsyncClient, url: str, out: dict[str, Any], headers: dict[str, str]) -> None:
    async with http.stream("GET", url, headers=headers) as response:
        out["status"] = response.status_code
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("id:"):
                out.setdefault("ids", []).append(line[3:].strip())
            elif line.startswith("event:"):
                event = line[6:].strip()
                out.setdefault("events", []).append(event)
            if event == "finished":
                return


def _slow_socket(api_url: str, path: str) -> socket.socket:
    """A client that asks for the stream and then reads nothing."""
    host, port = api_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def test_many_watchers_share_one_reader_and_a_reconnect_resumes(
    http: httpx.Client, api_url: str, redis_client: redis.Redis, stack: Stack
) -> None:
    job = submit(http, iterations=1000)
    path = f"/v1/jobs/{job['id']}/events"
    wait_until(http, job["id"], {"running"})
    clients_before = int(redis_client.info("clients")["connected_clients"])
    slow = _slow_socket(api_url, path)

    async def main() -> tuple[
        list[dict[str, Any]], tuple[dict[str, Any], dict[str, Any]], list[int], int, list[str]
    ]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=api_url, timeout=60, limits=limits) as client:
            outs: list[dict[str, Any]] = [{} for _ in range(WATCHERS)]
            tasks = [asyncio.create_task(_follow(client, path, out, {})) for out in outs]
            # Every watcher has its snapshot and at least one event of the running job.
            deadline = time.monotonic() + 60
            while any(len(out.get("events", [])) < 2 for out in outs):
                assert time.monotonic() < deadline, "watchers did not all get events"
                await asyncio.sleep(0.1)
            readers, clients = [], 0
            for _ in range(10):
                readers.append(await asyncio.to_thread(_blocked_readers, redis_client))
                info = await asyncio.to_thread(redis_client.info, "clients")
                clients = max(clients, int(info["connected_clients"]))
                await asyncio.sleep(0.1)
            # Clients reconnecting: one just behind gets every event it missed, in order; one from far
            # back (more missed than a watcher's queue holds) gets them skipped ahead, still in order.
            stream = [
                entry_id.decode() for entry_id, _ in redis_client.xrange(Keys(stack.prefix).events(job["id"]))
            ]
            near: dict[str, Any] = {}
            far: dict[str, Any] = {}
            resumes = [
                asyncio.create_task(_follow(client, path, near, {"Last-Event-ID": stream[-3]})),
                asyncio.create_task(_follow(client, path, far, {"Last-Event-ID": stream[2]})),
            ]
            while len(near.get("ids", [])) < 5 or len(far.get("ids", [])) < 5:
                await asyncio.sleep(0.05)
            http.post(f"/v1/jobs/{job['id']}/cancel").raise_for_status()
            await asyncio.wait_for(asyncio.gather(*tasks, *resumes), 60)
            return outs, (near, far), readers, clients, stream

    with ThreadPoolExecutor(max_workers=1) as thread:
        outs, resumed, readers, clients_during, stream = thread.submit(asyncio.run, main()).result()

    assert all(out["status"] == 200 and out["events"][-1] == "finished" for out in outs)
    assert all("progress" in out["events"] for out in outs)
    assert max(readers) == 1, f"blocked XREAD connections: {readers}"
    # 300 watchers arriving together (plus a slow one) open at most the API's bounded pool and one reader.
    assert clients_during - clients_before <= REDIS_CONNECTIONS + 1, (clients_before, clients_during)
    near, far = resumed
    assert near["ids"][:2] == stream[-2:]
    everything = [
        entry_id.decode() for entry_id, _ in redis_client.xrange(Keys(stack.prefix).events(job["id"]))
    ]
    for resumed_ids in (near["ids"], far["ids"]):
        assert resumed_ids == sorted(set(resumed_ids), key=everything.index)  # in order, none twice
        assert everything.index(resumed_ids[0]) > everything.index(stream[2])
    assert near["events"][-1] == far["events"][-1] == "finished"
    # The watcher that read nothing held nobody up, and still gets its `finished` once it reads.
    slow.settimeout(10)
    data = b""
    while b"event: finished" not in data:
        chunk = slow.recv(65536)
        assert chunk, "the slow watcher's stream closed without finished"
        data += chunk
    slow.close()


def test_beyond_max_watchers_the_stream_is_refused_with_retry_after(http: httpx.Client, stack: Stack) -> None:
    small = stack.start_api(max_watchers="2")
    job = submit(http, iterations=1000)
    url = f"{small}/v1/jobs/{job['id']}/events"
    try:
        for _ in range(2):  # the second time round, the places the first two streams held are free again
            deadline = time.monotonic() + 10
            while True:
                with (
                    httpx.Client(timeout=30) as client,
                    client.stream("GET", url) as first,
                    client.stream("GET", url) as second,
                ):
                    if first.status_code == second.status_code == 200:
                        refused = client.get(url)
                        assert refused.status_code == 503, refused.text
                        assert refused.headers["Retry-After"] == str(WATCHERS_RETRY_AFTER_S)
                        assert client.get(f"{small}/v1/jobs/{job['id']}").status_code == 200
                        break
                # Clients that left are noticed at once, not at the job's end: the job is still running.
                assert time.monotonic() < deadline, "the places of streams whose clients left never came back"
                time.sleep(0.2)
        assert http.get(f"/v1/jobs/{job['id']}").json()["status"] in ("queued", "running")
    finally:
        http.post(f"/v1/jobs/{job['id']}/cancel")
