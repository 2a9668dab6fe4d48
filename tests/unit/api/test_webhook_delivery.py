"""The webhooks worker's delivery, as a plain object over fakeredis, and its HTTP POST against real
servers on loopback (redirects, big answers, silence)."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from standardwebhooks import Webhook

from api.urlguard import AllowList, IPAddress, split_url
from api.webhooks import Attempt, Chores, Deliverer, post_webhook, sweep_results
from shared.jobs import JobRecord
from shared.keys import Keys
from shared.settings import Settings
from shared.stats import read_stats
from shared.storage import DirectoryStore
from shared.webhooks import retry_delay

SECRET = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
KEYS = Keys("d")


class FakeNetwork:
    """Stands in for the network: records each POST and answers from a script of outcomes."""

    def __init__(self, *answers: Attempt) -> None:
        self.answers = list(answers)
        self.posts: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(
        self, parts: Any, addresses: list[IPAddress], body: bytes, headers: dict[str, str], timeout: float
    ) -> Attempt:
        self.posts.append((parts.geturl(), body, headers))
        return self.answers.pop(0) if self.answers else Attempt(200, None, 0.01)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_prefix="d",
        webhook_secret=SECRET,
        webhook_max_attempts=3,
        webhook_retry_base_s=5,
        results_dir=tmp_path / "results",
    )


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def a_job(client: fakeredis.FakeRedis, webhook: str = "https://8.8.8.8/hook") -> JobRecord:
    record = JobRecord(
        id=f"j{time.monotonic_ns()}",
        prompt="a fox",
        model="tiny",
        width=32,
        height=32,
        iterations=5,
        seed=1,
        cutn=2,
        webhook=webhook,
        webhook_events="start,completed",
        state="succeeded",
        finished_at=time.time(),
    )
    client.hset(KEYS.job(record.id), mapping=record.to_redis())
    return record


def attempts(client: fakeredis.FakeRedis, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(entry) for entry in client.lrange(KEYS.deliveries(job_id), 0, -1)]


def test_a_delivery_is_signed_by_the_standard_and_carries_the_job_view(
    client: fakeredis.FakeRedis, settings: Settings
) -> None:
    record = a_job(client)
    network = FakeNetwork()
    deliverer = Deliverer(client, settings, post=network)
    webhook_id = f"msg_{record.id}_completed"
    assert deliverer.deliver(record.id, "completed", webhook_id, "task-1") is None
    ((url, body, headers),) = network.posts
    assert url == "https://8.8.8.8/hook"
    assert Webhook(SECRET).verify(body, headers)["id"] == record.id
    assert headers["webhook-id"] == webhook_id and headers["webhook-signature"].startswith("v1,")
    view = json.loads(body)
    assert view["status"] == "succeeded" and view["links"]["self"] == f"/v1/jobs/{record.id}"
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(body.replace(b"a fox", b"a cat"), headers)
    assert [a["outcome"] for a in attempts(client, record.id)] == ["delivered"]
    assert read_stats(client.hgetall(KEYS.stats())).webhooks == {"delivered": 1}


def test_failures_are_retried_with_backoff_under_one_id_then_given_up(
    client: fakeredis.FakeRedis, settings: Settings
) -> None:
    record = a_job(client)
    network = FakeNetwork(
        Attempt(503, "HTTP 503", 0.1),
        Attempt(None, "timed out after 10 s", 10),
        Attempt(500, "HTTP 500", 0.1),
    )
    deliverer = Deliverer(client, settings, post=network)
    webhook_id = f"msg_{record.id}_start"
    delays = [deliverer.deliver(record.id, "start", webhook_id, "task-1") for _ in range(3)]
    assert delays == [5.0, 15.0, None]
    assert {headers["webhook-id"] for _, _, headers in network.posts} == {webhook_id}
    assert len({body for _, body, _ in network.posts}) == 1
    assert [(a["attempt"], a["outcome"]) for a in attempts(client, record.id)] == [
        (1, "retrying"),
        (2, "retrying"),
        (3, "failed"),
    ]
    assert deliverer.deliver(record.id, "start", webhook_id, "task-1") is None  # given up: no 4th POST
    assert len(network.posts) == 3


def test_an_event_is_reported_delivered_once(client: fakeredis.FakeRedis, settings: Settings) -> None:
    record = a_job(client)
    network = FakeNetwork()
    deliverer = Deliverer(client, settings, post=network)
    webhook_id = f"msg_{record.id}_start"
    deliverer.deliver(record.id, "start", webhook_id, "task-1")
    deliverer.deliver(record.id, "start", webhook_id, "task-1")  # the broker redelivered the message
    deliverer.deliver(record.id, "start", webhook_id, "task-2")  # a resumed job announced it again
    assert len(network.posts) == 1
    assert [a["outcome"] for a in attempts(client, record.id)] == ["delivered"]


def test_a_deleted_job_is_dropped(client: fakeredis.FakeRedis, settings: Settings) -> None:
    record = a_job(client)
    client.delete(KEYS.job(record.id))
    network = FakeNetwork()
    assert Deliverer(client, settings, post=network).deliver(record.id, "start", "msg_x", "t") is None
    assert network.posts == [] and not client.exists(KEYS.deliveries(record.id), KEYS.webhooks(record.id))
    assert read_stats(client.hgetall(KEYS.stats())).webhooks == {"dropped": 1}


def test_an_address_refused_at_delivery_is_not_called(
    client: fakeredis.FakeRedis, settings: Settings
) -> None:
    record = a_job(client, webhook="http://127.0.0.1:9/hook")  # allowed once, not any more
    network = FakeNetwork()
    assert Deliverer(client, settings, post=network).deliver(record.id, "start", "msg_y", "t") is None
    assert network.posts == []
    (attempt,) = attempts(client, record.id)
    assert attempt["outcome"] == "refused" and "loopback" in attempt["error"]


def test_the_default_schedule_is_at_least_five_attempts_over_about_ten_minutes() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    waits = [retry_delay(settings.webhook_retry_base_s, n) for n in range(1, settings.webhook_max_attempts)]
    assert settings.webhook_max_attempts >= 5
    assert 8 * 60 <= sum(waits) <= 12 * 60, waits


# --- the HTTP POST, against real servers on loopback ----------------------------------------------


class Answering(BaseHTTPRequestHandler):
    """/redirect answers 302; /big answers 1 MiB; anything else 204."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("location", "http://169.254.169.254/")
            self.send_header("content-length", "0")
            self.end_headers()
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("content-length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"x" * (1 << 20))
        else:
            self.send_response(204)
            self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answering)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def post_to(url: str, timeout: float = 5.0) -> Attempt:
    parts = split_url(url)
    from api.urlguard import resolve

    return post_webhook(parts, resolve(parts, AllowList.parse(["127.0.0.1"])), b"{}", {"x": "y"}, timeout)


def test_a_2xx_is_delivered(server: str) -> None:
    result = post_to(f"{server}/hook?a=1")
    assert result.ok and result.status_code == 204


def test_redirects_are_never_followed(server: str) -> None:
    result = post_to(f"{server}/redirect")
    assert (
        not result.ok and result.status_code == 302 and "redirects are not followed" in (result.error or "")
    )


def test_at_most_64_kb_of_an_answer_is_read(server: str) -> None:
    started = time.monotonic()
    assert post_to(f"{server}/big").ok
    assert time.monotonic() - started < 5


def test_a_silent_receiver_times_out() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        started = time.monotonic()
        result = post_to(f"http://127.0.0.1:{silent.getsockname()[1]}/", timeout=0.5)
        assert result.error == "timed out after 0.5 s" and time.monotonic() - started < 3
    finally:
        silent.close()


def test_a_closed_port_is_an_error_not_an_exception() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    result = post_to(f"http://127.0.0.1:{port}/")
    assert result.status_code is None and "refused" in (result.error or "").lower()


# --- chores ---------------------------------------------------------------------------------------


def test_old_results_are_swept_and_new_ones_kept(client: fakeredis.FakeRedis, settings: Settings) -> None:
    store = DirectoryStore(settings.results_dir)
    store.put("old/result.png", b"old", "image/png")
    store.put("new/result.png", b"new", "image/png")
    an_hour_ago = time.time() - 3600
    os.utime(settings.results_dir / "old" / "result.png", (an_hour_ago, an_hour_ago))
    assert sweep_results(settings, client) == 0  # no ARTGEN_RESULT_TTL_S: kept
    swept = settings.model_copy(update={"result_ttl_s": 600})
    assert sweep_results(swept, client) == 1
    assert not (settings.results_dir / "old").exists() and store.get("new/result.png") == b"new"


def test_the_chores_cancel_queued_jobs_past_their_deadline(
    client: fakeredis.FakeRedis, settings: Settings
) -> None:
    record = a_job(client)
    client.hset(KEYS.job(record.id), mapping={"state": "queued", "deadline_at": time.time() - 1})
    client.zadd(KEYS.deadlines(), {record.id: time.time() - 1})
    announced: list[tuple[str, ...]] = []
    Chores(settings, client, lambda *args: announced.append(args)).run_once()
    assert client.hget(KEYS.job(record.id), "cancel_reason") == b"deadline"
    assert announced == [(record.id, "completed", f"msg_{record.id}_completed")]


def test_a_finished_event_keeps_its_state_but_not_its_body(
    client: fakeredis.FakeRedis, settings: Settings
) -> None:
    record = a_job(client)
    Deliverer(client, settings, post=FakeNetwork()).deliver(record.id, "start", "msg_z", "t")
    kept = {k.decode(): v.decode() for k, v in client.hgetall(KEYS.webhooks(record.id)).items()}
    assert kept == {"msg_z:status": "delivered", "msg_z:task": "t", "msg_z:attempts": "1"}
