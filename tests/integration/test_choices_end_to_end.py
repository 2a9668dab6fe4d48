"""The painting choices through the real stack (Redis, a Celery worker process, the API over HTTP):
a job that stops on a plateau, and jobs with different optimisers, starts and schedules side by side."""

from __future__ import annotations

import httpx

from tests.integration.test_service import submit, wait_until


def test_a_plateau_ends_a_job_succeeded_before_its_iterations(http: httpx.Client) -> None:
    # delta 100: no window improves by more, so it stops as soon as it can judge (window + 1 = 4).
    job = submit(http, prompt="a calm sea", iterations=60, plateau_window=3, plateau_delta=100)
    final = wait_until(http, job["id"], {"succeeded", "failed", "canceled"})
    assert final["status"] == "succeeded", final
    assert final["stopped_at"] == 4 == final["iteration"] and final["iterations"] == 60
    result = http.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"


def test_mixed_choices_paint_side_by_side(http: httpx.Client) -> None:
    jobs = [
        submit(
            http,
            prompt="a seed ^ a sprout:2|rain:-0.5 ^ a tree",
            iterations=9,
            optimizer="adamw",
            init="gradient",
        ),
        submit(http, prompt="a fox", iterations=6, optimizer="radam", init="pixels"),
        submit(http, prompt="a dog ^ a cat", iterations=6, change_every=2, optimizer="nadam"),
    ]
    finals = [wait_until(http, job["id"], {"succeeded", "failed", "canceled"}) for job in jobs]
    assert [f["status"] for f in finals] == ["succeeded"] * 3, finals
    assert [f["optimizer"] for f in finals] == ["adamw", "radam", "nadam"]
    assert [f["stage"] for f in finals] == [
        {"index": 2, "count": 3, "text": "a tree"},
        {"index": 0, "count": 1, "text": "a fox"},
        {"index": 1, "count": 2, "text": "a cat"},
    ]
    assert [[row["text"] for row in f["losses"]] for f in finals] == [["a tree"], ["a fox"], ["a cat"]]
    assert all(0 < row["distance"] < 5 for f in finals for row in f["losses"])
    assert [f["iteration"] for f in finals] == [9, 6, 6] and all(f["stopped_at"] is None for f in finals)
