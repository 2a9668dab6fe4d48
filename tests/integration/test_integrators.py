"""For the programs that call artgen, end to end: signed webhooks delivered by the `artgen webhooks` worker
to a real receiver, Idempotency-Key under concurrency, deadlines, `Prefer: wait`, DELETE.

One stack for the module: a redis-server, one `artgen worker` (one job at a time, no batching, so the
tests decide what waits in the queue), one `artgen webhooks`, one API, over real HTTP.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from launch.processes import free_port
from tests.integration.conftest import REPO, Stack, wait_for

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
TERMINAL = {"succeeded", "failed", "canceled"}
SMALL = {"prompt": "a red circle", "width": 48, "height": 48, "cutn": 4}


class Receiver:
    """A webhook receiver over real HTTP that verifies every delivery with the standardwebhooks library
    and answers 400 to one that fails; `statuses` are its answers to the first valid deliveries."""

    def __init__(self, port: int | None = None, statuses: tuple[int, ...] = ()) -> None:
        self.port = port or free_port()
        self.statuses = list(statuses)
        self.received: list[dict[str, Any]] = []  # {"headers", "body", "verified", "status"}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                try:
                    Webhook(SECRET).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver._lock:
                    status = (receiver.statuses.pop(0) if receiver.statuses else 200) if verified else 400
                    receiver.received.append(
                        {"headers": headers, "body": body, "verified": verified, "status": status}
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/artgen?source=test"

    def accepted(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.received if r["verified"] and r["status"] == 200]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    own = Stack(
        tmp_path_factory.mktemp("integrators"),
        batch_size="1",
        webhook_secret=SECRET,
        webhook_allow_hosts="127.0.0.1",
        webhook_retry_base_s="0.5",
        webhook_timeout_s="2",
        webhook_progress_interval_s="0.2",
    )
    try:
        own.start_worker("painter", concurrency=1)
        own.start_webhooks()
        yield own
    finally:
        own.close()


@pytest.fixture(scope="module")
def api_url(stack: Stack) -> str:
    return stack.start_api()


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=60) as client:
        yield client


def submit(http: httpx.Client, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return http.post("/v1/jobs", json={**SMALL, "iterations": 10, **body}, headers=headers or {})


def wait_until_done(http: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in TERMINAL else None

    return wait_for(done, timeout_s, f"job {job_id} to end", interval_s=0.05)


def deliveries(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = http.get(f"/v1/jobs/{job_id}/deliveries").json()["deliveries"]
    return found


# --- webhooks ---------------------------------------------------------------------------------------


def test_every_delivery_is_signed_and_the_body_is_the_job_view(http: httpx.Client) -> None:
    receiver = Receiver()
    try:
        events = ["start", "progress", "completed"]
        response = submit(http, iterations=40, webhook=receiver.url, webhook_events_filter=events)
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["webhook"] == receiver.url and job["webhook_events_filter"] == events
        final = wait_until_done(http, job["id"])
        assert final["status"] == "succeeded"
        completed = f"msg_{job['id']}_completed"
        wait_for(
            lambda: any(r["headers"]["webhook-id"] == completed for r in receiver.accepted()), 30, "completed"
        )

        received = receiver.received
        assert received and all(r["verified"] for r in received), "every delivery verifies with the library"
        ids = [r["headers"]["webhook-id"] for r in received]
        assert ids[0] == f"msg_{job['id']}_start" and completed in ids
        assert any(i.startswith(f"msg_{job['id']}_progress_") for i in ids)
        assert len(ids) == len(set(ids)), "each event once"
        # The body is the job view as GET answers it: for "completed", the final job exactly.
        body = next(r["body"] for r in received if r["headers"]["webhook-id"] == completed)
        assert json.loads(body) == http.get(f"/v1/jobs/{job['id']}").json()
        assert json.loads(received[0]["body"])["status"] in {"running", "succeeded"}

        # A tampered body, sent with a real delivery's headers, is rejected by the same receiver.
        headers = {k: v for k, v in received[0]["headers"].items() if k.startswith("webhook-")}
        tampered = received[0]["body"].replace(b'"status"', b'"Status"')
        assert httpx.post(receiver.url, content=tampered, headers=headers).status_code == 400
        assert receiver.received[-1]["verified"] is False

        attempts = deliveries(http, job["id"])
        assert {a["webhook_id"] for a in attempts} == set(ids)
        assert all(a["outcome"] == "delivered" and a["status_code"] == 200 for a in attempts)
        assert all(a["worker"].startswith("webhooks@") for a in attempts), "delivered by the webhooks worker"
        metrics = http.get("/metrics").text
        assert 'artgen_webhook_deliveries_total{outcome="delivered"}' in metrics
    finally:
        receiver.close()


def test_a_receiver_that_fails_at_first_gets_the_event_once_with_one_webhook_id(http: httpx.Client) -> None:
    receiver = Receiver(statuses=(503, 500))
    try:
        job = submit(http, webhook=receiver.url, webhook_events_filter=["completed"]).json()
        assert wait_until_done(http, job["id"])["status"] == "succeeded"
        webhook_id = f"msg_{job['id']}_completed"
        wait_for(lambda: len(receiver.accepted()) == 1, 30, "the third attempt")
        time.sleep(1.0)  # a second delivery would come within the next backoff step
        assert [r["status"] for r in receiver.received] == [503, 500, 200]
        assert {r["headers"]["webhook-id"] for r in receiver.received} == {webhook_id}
        assert len({r["body"] for r in receiver.received}) == 1, "every attempt sends the same bytes"
        attempts = deliveries(http, job["id"])
        assert [(a["attempt"], a["outcome"], a["status_code"]) for a in attempts] == [
            (1, "retrying", 503),
            (2, "retrying", 500),
            (3, "delivered", 200),
        ]
    finally:
        receiver.close()


def test_receiver_down_for_the_first_attempts_then_up_gets_the_event_once(http: httpx.Client) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    job = submit(http, webhook=url, webhook_events_filter=["completed"]).json()
    assert wait_until_done(http, job["id"])["status"] == "succeeded"
    # Nothing listens: attempts fail with "connection refused" until the receiver comes up.
    wait_for(lambda: len(deliveries(http, job["id"])) >= 2, 30, "two failed attempts")
    receiver = Receiver(port=port)
    try:
        wait_for(lambda: receiver.accepted(), 60, "the delivery after the receiver came up")
        time.sleep(1.0)
        webhook_id = f"msg_{job['id']}_completed"
        assert [r["headers"]["webhook-id"] for r in receiver.received] == [webhook_id], "arrives once"
        attempts = deliveries(http, job["id"])
        assert {a["webhook_id"] for a in attempts} == {webhook_id}, "one webhook-id on every attempt"
        assert all(a["outcome"] == "retrying" and "refused" in a["error"].lower() for a in attempts[:-1])
        assert [a["outcome"] for a in attempts].count("delivered") == 1
        assert attempts[-1]["outcome"] == "delivered"
    finally:
        receiver.close()


def test_a_dead_webhook_host_costs_the_gpu_worker_nothing(http: httpx.Client) -> None:
    # Accepts connections into its backlog and never answers: every attempt waits for the read timeout.
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(64)
    dead = f"http://127.0.0.1:{black_hole.getsockname()[1]}/hook"
    try:
        body = {"iterations": 60, "seed": 7}
        plain = submit(http, **body).json()
        plain_run = wait_until_done(http, plain["id"])["run_s"]
        hooked = submit(http, webhook=dead, webhook_events_filter=["start", "progress", "completed"], **body)
        final = wait_until_done(http, hooked.json()["id"])
        assert final["status"] == "succeeded"
        attempts = wait_for(lambda: deliveries(http, final["id"]), 30, "an attempt")
        assert attempts[0]["error"].startswith("timed out") and attempts[0]["worker"].startswith("webhooks@")
        # Each event blocks a delivery thread for 2 s; had the GPU worker made them, its run would grow by
        # at least that per event. It does not grow by even one timeout.
        assert final["run_s"] < plain_run + 2.0, (final["run_s"], plain_run)
    finally:
        black_hole.close()


def test_private_loopback_link_local_and_metadata_webhooks_are_refused_at_submit(http: httpx.Client) -> None:
    # 127.0.0.1 is allowed on this stack (ARTGEN_WEBHOOK_ALLOW_HOSTS, for the receivers above); the rest of
    # loopback is not. tests/unit/api/test_urlguard.py goes through every spelling with nothing allowed.
    for url in (
        "http://127.0.0.2:9/",
        "http://[::1]/",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1]/",
        "http://[::ffff:10.0.0.1]/",
        "gopher://example.com/",
    ):
        response = submit(http, webhook=url)
        assert response.status_code == 422, (url, response.text)
        assert response.json()["detail"][0]["loc"] == ["body", "webhook"]


# --- idempotency ------------------------------------------------------------------------------------


def test_twenty_concurrent_identical_submits_with_one_key_make_one_job(
    http: httpx.Client, api_url: str, stack: Stack
) -> None:
    body = {**SMALL, "iterations": 5, "seed": 99}
    headers = {"Idempotency-Key": f"order-{time.time_ns()}"}
    recent = f"{stack.prefix}:jobs:recent"
    before = stack.client.zcard(recent)
    barrier = threading.Barrier(20)
    answers: list[httpx.Response] = []

    def one() -> None:
        with httpx.Client(base_url=api_url, timeout=60) as client:
            barrier.wait()
            answers.append(client.post("/v1/jobs", json=body, headers=headers))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 20
    assert sorted(a.status_code for a in answers) == [200] * 19 + [202], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert all(a.headers.get("idempotent-replayed") == "true" for a in answers if a.status_code == 200)
    assert stack.client.zcard(recent) == before + 1, "exactly one job was written"
    other = http.post("/v1/jobs", json={**body, "seed": 100}, headers=headers)
    assert other.status_code == 422 and "different request" in other.text


# --- deadlines and Prefer: wait ---------------------------------------------------------------------


def test_a_queued_job_whose_deadline_passes_never_starts(http: httpx.Client, stack: Stack) -> None:
    blocker = submit(http, iterations=1000).json()  # holds the only worker slot
    wait_for(lambda: http.get(f"/v1/jobs/{blocker['id']}").json()["status"] == "running", 60, "the blocker")
    late = submit(http, headers={"Cancel-After": "1s"}).json()
    unread = submit(http, deadline_s=1.5).json()
    assert late["status"] == "queued" and late["deadline_at"] > time.time()
    time.sleep(1.2)
    seen = http.get(f"/v1/jobs/{late['id']}").json()  # read past its deadline: canceled now
    assert (seen["status"], seen["cancel_reason"], seen["started_at"]) == ("canceled", "deadline", None)
    # Nobody reads the other one: the sweep (webhooks worker, workers' heartbeats) ends it on its own.
    key = f"{stack.prefix}:job:{unread['id']}"
    wait_for(lambda: stack.client.hget(key, "state") == b"canceled", 15, "the sweep")
    assert stack.client.hget(key, "cancel_reason") == b"deadline"
    assert http.post(f"/v1/jobs/{blocker['id']}/cancel").status_code == 202
    assert wait_until_done(http, blocker["id"])["cancel_reason"] == "client"
    # The worker took their queue messages after the blocker and started neither.
    follow = submit(http).json()
    assert wait_until_done(http, follow["id"])["status"] == "succeeded"
    for job in (late, unread):
        view = http.get(f"/v1/jobs/{job['id']}").json()
        assert (view["status"], view["attempts"], view["iteration"], view["worker"]) == (
            "canceled",
            0,
            0,
            None,
        )


def test_a_running_job_stops_within_one_iteration_of_its_deadline(http: httpx.Client, stack: Stack) -> None:
    job = submit(http, iterations=1000, headers={"Cancel-After": "3s"}).json()
    final = wait_until_done(http, job["id"])
    assert (final["status"], final["cancel_reason"]) == ("canceled", "deadline")
    assert 0 < final["iteration"] < 1000
    # Stream entry ids are milliseconds: at most one iteration was reported after the deadline.
    entries = stack.client.xrange(f"{stack.prefix}:job:{job['id']}:events")
    late = [
        e
        for e in entries
        if e[1][b"event"] == b"progress" and int(e[0].split(b"-")[0]) > final["deadline_at"] * 1000
    ]
    assert len(late) <= 1, late


def test_prefer_wait_answers_a_short_job_in_one_request(http: httpx.Client) -> None:
    response = submit(http, iterations=5, headers={"Prefer": "wait=30"})
    assert response.status_code == 201, response.text
    assert response.headers["preference-applied"] == "wait=30"
    job = response.json()
    assert job["status"] == "succeeded" and job["iteration"] == 5
    assert http.get(job["links"]["result"]).status_code == 200
    slow = submit(http, iterations=1000, headers={"Prefer": "wait=1"})
    assert slow.status_code == 202 and slow.json()["status"] in {"queued", "running"}
    http.post(f"/v1/jobs/{slow.json()['id']}/cancel")


# --- DELETE -----------------------------------------------------------------------------------------


def _traces(stack: Stack, job_id: str) -> tuple[list[bytes], list[Path]]:
    """Every Redis key naming the job (SCAN), every index still listing it, every file of it in the store."""
    keys = list(stack.client.scan_iter(match=f"*{job_id}*", count=1000))
    for index in stack.client.scan_iter(match=f"{stack.prefix}:*", count=1000):
        kind = stack.client.type(index)
        listed = (kind == b"zset" and stack.client.zscore(index, job_id) is not None) or (
            kind == b"set" and bool(stack.client.sismember(index, job_id))
        )
        if listed:
            keys.append(index)
    results = stack.root / "results"
    files = [p for p in results.rglob("*") if job_id in str(p)] if results.exists() else []
    return keys, files


def test_delete_leaves_no_key_in_redis_and_no_file_in_the_store(http: httpx.Client, stack: Stack) -> None:
    receiver = Receiver()
    try:
        headers = {"Idempotency-Key": f"delete-me-{time.time_ns()}", "Cancel-After": "5m"}
        job = submit(http, headers=headers, webhook=receiver.url, iterations=12).json()
        wait_until_done(http, job["id"])
        wait_for(lambda: len(receiver.accepted()) == 2, 30, "start and completed delivered")
        assert http.get(f"/v1/jobs/{job['id']}/timelapse").status_code == 200
        keys, files = _traces(stack, job["id"])
        assert keys and files, "the job left traces to remove"

        assert http.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert _traces(stack, job["id"]) == ([], [])
        assert http.delete(f"/v1/jobs/{job['id']}").status_code == 404
        assert http.get(f"/v1/jobs/{job['id']}").status_code == 404
        # The key is free again: the same request makes a new job.
        again = submit(http, headers=headers, webhook=receiver.url, iterations=12)
        assert again.status_code == 202 and again.json()["id"] != job["id"]
        http.delete(f"/v1/jobs/{again.json()['id']}")
    finally:
        receiver.close()


def test_delete_of_a_running_job_stops_it_and_nothing_comes_back(http: httpx.Client, stack: Stack) -> None:
    job = submit(http, iterations=1000).json()
    wait_for(lambda: http.get(f"/v1/jobs/{job['id']}").json()["iteration"] > 3, 60, "the job to run")
    assert http.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert _traces(stack, job["id"]) == ([], [])
    # The worker has let go; a later job runs, and nothing of the deleted one reappears meanwhile.
    follow = submit(http).json()
    assert wait_until_done(http, follow["id"])["status"] == "succeeded"
    assert _traces(stack, job["id"]) == ([], [])


# --- the README's client and receiver, as written ---------------------------------------------------


def readme_program(name: str) -> dict[str, Any]:
    """Run the README's ```python block that starts with `# <name>` as a module; its namespace."""
    text = (REPO / "README.md").read_text()
    (source,) = [
        b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if b.startswith(f"# {name}\n")
    ]
    namespace: dict[str, Any] = {"__name__": name.removesuffix(".py")}
    exec(compile(source, name, "exec"), namespace)
    return namespace


def test_the_readme_client_and_receiver_work_as_written(
    http: httpx.Client, api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    monkeypatch.setenv("ARTGEN_URL", api_url)
    monkeypatch.setenv("ARTGEN_WEBHOOK_SECRET", SECRET)
    receiver = readme_program("artgen_receiver.py")
    client = readme_program("artgen_client.py")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(receiver["app"], host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "the README's receiver")
        job = client["paint"]("a red circle", f"http://127.0.0.1:{port}/artgen")
        assert job["status"] in TERMINAL | {"queued", "running"} and job["webhook"].endswith("/artgen")
        wait_for(lambda: f"msg_{job['id']}_completed" in receiver["handled"], 120, "the completed event")
        assert deliveries(http, job["id"])[-1]["status_code"] == 200
    finally:
        server.should_exit = True
        thread.join(10)
