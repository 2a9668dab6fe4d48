"""POST /v1/jobs/{id}/extend and GET /v1/jobs/{id}/manifest against fakeredis and a directory store."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from shared.keys import Keys
from shared.storage import DirectoryStore, job_store_keys, manifest_key, state_key
from tests.unit.api.support import PREFIX, FakeWorker, RecordingEnqueuer

Submit = Callable[..., dict[str, Any]]


def _succeeded(submit: Submit, worker: FakeWorker, results: DirectoryStore, **body: Any) -> dict[str, Any]:
    """A job that a worker painted: succeeded, with its kept state and manifest in the store."""
    job = submit(**body)
    worker.start(job["id"])
    worker.finish(job["id"])
    results.put(state_key(job["id"]), b"state", "application/octet-stream")
    results.put(manifest_key(job["id"]), json.dumps({"artgen_manifest": 1}).encode(), "application/json")
    return job


def test_extend_makes_a_child_that_continues_the_parent(
    client: TestClient,
    submit: Submit,
    worker: FakeWorker,
    results: DirectoryStore,
    enqueuer: RecordingEnqueuer,
) -> None:
    parent = _succeeded(submit, worker, results, iterations=10, seed=77, cut_pow=2.0, step_size=0.3)
    answer = client.post(f"/v1/jobs/{parent['id']}/extend", json={"iterations": 15})
    assert answer.status_code == 202, answer.text
    child = answer.json()
    assert answer.headers["location"] == f"/v1/jobs/{child['id']}"
    assert child["parent"] == parent["id"] and child["start_iteration"] == 10
    assert child["iterations"] == 25 and child["progress"] == 0.0 and child["status"] == "queued"
    # Everything else is the parent's: prompt, seed, size, cutouts, step.
    record = worker.record(child["id"])
    assert (record.prompt, record.seed, record.cut_pow, record.step_size) == ("a red fox", 77, 2.0, 0.3)
    assert (record.width, record.height, record.cutn) == (64, 64, parent["cutn"])
    assert enqueuer.sent[-1][0] == child["id"]
    assert client.get(f"/v1/jobs/{parent['id']}").json()["children"] == [child["id"]]

    worker.start(child["id"])
    worker.progress(child["id"], 16)
    assert client.get(f"/v1/jobs/{child['id']}").json()["progress"] == 0.4  # 6 of its own 15

    under_new_prompt = client.post(
        f"/v1/jobs/{parent['id']}/extend", json={"iterations": 5, "prompt": "a blue whale"}
    ).json()
    assert worker.record(under_new_prompt["id"]).prompt == "a blue whale"
    assert client.get(f"/v1/jobs/{parent['id']}").json()["children"] == [child["id"], under_new_prompt["id"]]


def test_extend_refuses_what_it_cannot_continue(
    client: TestClient, submit: Submit, worker: FakeWorker, results: DirectoryStore
) -> None:
    queued = submit()
    answer = client.post(f"/v1/jobs/{queued['id']}/extend", json={"iterations": 5})
    assert answer.status_code == 409 and "job is queued" in answer.json()["detail"]

    failed = submit()
    worker.start(failed["id"])
    worker.finish(failed["id"], "failed", error="boom")
    answer = client.post(f"/v1/jobs/{failed['id']}/extend", json={"iterations": 5})
    assert answer.status_code == 409 and "job is failed" in answer.json()["detail"]

    swept = _succeeded(submit, worker, results)
    results.delete(state_key(swept["id"]))
    answer = client.post(f"/v1/jobs/{swept['id']}/extend", json={"iterations": 5})
    assert answer.status_code == 409 and "no longer kept" in answer.json()["detail"]


def test_extend_after_the_state_ttl_is_409(
    make_client: Callable[..., TestClient], worker: FakeWorker, results: DirectoryStore
) -> None:
    client = make_client(state_ttl_s=60)
    job = client.post("/v1/jobs", json={"prompt": "a red fox", "iterations": 5}).json()
    worker.start(job["id"])
    worker.finish(job["id"])
    results.put(state_key(job["id"]), b"state", "application/octet-stream")
    worker.client.hset(worker.keys.job(job["id"]), "finished_at", time.time() - 61)
    answer = client.post(f"/v1/jobs/{job['id']}/extend", json={"iterations": 5})
    assert answer.status_code == 409 and "kept for 60 s" in answer.json()["detail"]


def test_extend_checks_its_body(
    client: TestClient, submit: Submit, worker: FakeWorker, results: DirectoryStore
) -> None:
    parent = _succeeded(submit, worker, results)
    url = f"/v1/jobs/{parent['id']}/extend"
    for body, field in (
        ({"iterations": 0}, "iterations"),
        ({"iterations": 501}, "iterations"),
        ({"iterations": "many"}, "iterations"),
        ({}, "iterations"),
        ({"iterations": 5, "prompt": "x" * 301}, "prompt"),
        ({"iterations": 5, "prompt": "a fox | | a whale"}, "prompt"),
        ({"iterations": 5, "prompt": "  "}, "prompt"),
        ({"iterations": 5, "seed": 3}, "seed"),
    ):
        answer = client.post(url, json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert field in json.dumps(answer.json()["detail"]), (body, answer.text)
    assert worker.record(parent["id"]).child_ids == []


def test_extend_of_unknown_or_another_keys_job_is_404(
    make_client: Callable[..., TestClient], worker: FakeWorker, results: DirectoryStore
) -> None:
    client = make_client(api_keys="alice-key-0123456789,bob-key-0123456789")
    alice = {"Authorization": "Bearer alice-key-0123456789"}
    bob = {"Authorization": "Bearer bob-key-0123456789"}
    job = client.post("/v1/jobs", json={"prompt": "a red fox", "iterations": 5}, headers=alice).json()
    worker.start(job["id"])
    worker.finish(job["id"])
    results.put(state_key(job["id"]), b"state", "application/octet-stream")
    assert client.post(f"/v1/jobs/{job['id']}/extend", json={"iterations": 5}, headers=bob).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/manifest", headers=bob).status_code == 404
    unknown = "0123456789abcdef0123456789abcdef"
    assert client.post(f"/v1/jobs/{unknown}/extend", json={"iterations": 5}, headers=alice).status_code == 404
    assert (
        client.post(f"/v1/jobs/{job['id']}/extend", json={"iterations": 5}, headers=alice).status_code == 202
    )


def test_extend_with_an_idempotency_key_makes_one_child(
    client: TestClient, submit: Submit, worker: FakeWorker, results: DirectoryStore
) -> None:
    parent = _succeeded(submit, worker, results)
    url = f"/v1/jobs/{parent['id']}/extend"
    first = client.post(url, json={"iterations": 5}, headers={"Idempotency-Key": "more-1"})
    again = client.post(url, json={"iterations": 5}, headers={"Idempotency-Key": "more-1"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first.json()["id"]
    other = client.post(url, json={"iterations": 6}, headers={"Idempotency-Key": "more-1"})
    assert other.status_code == 422
    assert client.get(f"/v1/jobs/{parent['id']}").json()["children"] == [first.json()["id"]]


def test_manifest_is_served_once_succeeded(
    client: TestClient, submit: Submit, worker: FakeWorker, results: DirectoryStore
) -> None:
    running = submit()
    worker.start(running["id"])
    answer = client.get(f"/v1/jobs/{running['id']}/manifest")
    assert answer.status_code == 409 and "running" in answer.json()["detail"]
    job = _succeeded(submit, worker, results)
    answer = client.get(f"/v1/jobs/{job['id']}/manifest")
    assert answer.status_code == 200 and answer.json() == {"artgen_manifest": 1}
    assert answer.headers["content-type"] == "application/json"
    results.delete(manifest_key(job["id"]))
    assert client.get(f"/v1/jobs/{job['id']}/manifest").status_code == 404


def test_delete_removes_the_kept_state_and_manifest(
    client: TestClient, submit: Submit, worker: FakeWorker, results: DirectoryStore
) -> None:
    job = _succeeded(submit, worker, results)
    assert {state_key(job["id"]), manifest_key(job["id"])} <= set(job_store_keys(job["id"]))
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert not results.exists(state_key(job["id"])) and not results.exists(manifest_key(job["id"]))
    assert not (results.root / job["id"]).exists()
    assert list(worker.client.scan_iter(match=f"{Keys(PREFIX).prefix}:*{job['id']}*")) == []


def test_deleting_a_child_takes_it_off_its_parents_list(
    client: TestClient, submit: Submit, worker: FakeWorker, results: DirectoryStore
) -> None:
    parent = _succeeded(submit, worker, results)
    first, second = (
        client.post(f"/v1/jobs/{parent['id']}/extend", json={"iterations": n}).json()["id"] for n in (3, 4)
    )
    assert client.get(f"/v1/jobs/{parent['id']}").json()["children"] == [first, second]
    assert client.delete(f"/v1/jobs/{first}").status_code == 204
    assert client.get(f"/v1/jobs/{parent['id']}").json()["children"] == [second]
    # A child whose parent is gone is deleted cleanly, and nothing of the parent comes back.
    assert client.delete(f"/v1/jobs/{parent['id']}").status_code == 204
    assert client.get(f"/v1/jobs/{second}").json()["parent"] == parent["id"]
    assert client.delete(f"/v1/jobs/{second}").status_code == 204
    assert list(worker.client.scan_iter(match=f"*{parent['id']}*")) == []


def test_a_schedule_carries_on_under_its_last_stage(
    client: TestClient, submit: Submit, worker: FakeWorker, results: DirectoryStore
) -> None:
    parent = _succeeded(submit, worker, results, prompt="a seed ^ a sprout ^ a tree", iterations=9)
    child = client.post(f"/v1/jobs/{parent['id']}/extend", json={"iterations": 4}).json()
    record = worker.record(child["id"])
    assert (record.prompt, record.change_every, record.start_iteration, record.iterations) == (
        "a tree",
        4,
        9,
        13,
    )
    answer = client.post(f"/v1/jobs/{parent['id']}/extend", json={"iterations": 4, "prompt": "a ^ b"})
    assert answer.status_code == 422 and "schedules" in answer.text


def test_kept_states_are_swept_after_their_ttl_and_results_stay(tmp_path: Path) -> None:
    import fakeredis

    from api.webhooks import sweep_results
    from tests.unit.api.support import make_settings

    settings = make_settings(results_dir=tmp_path / "results", state_ttl_s=600)
    store = DirectoryStore(settings.results_dir)
    for job in ("old", "new"):
        for key in (state_key(job), manifest_key(job), f"{job}/result.png"):
            store.put(key, b"x", "application/octet-stream")
    an_hour_ago = time.time() - 3600
    for path in (settings.results_dir / "old").iterdir():
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert sweep_results(settings, fakeredis.FakeRedis()) == 1  # no ARTGEN_RESULT_TTL_S: results kept
    assert not store.exists(state_key("old")) and store.exists(state_key("new"))
    assert store.exists(manifest_key("old")) and store.exists("old/result.png")
