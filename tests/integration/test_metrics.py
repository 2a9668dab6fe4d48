"""/metrics over real HTTP, parsed by the Prometheus client's parser, against the jobs just run."""

from __future__ import annotations

from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import wait_for
from tests.integration.test_service import TERMINAL, submit, wait_until


def scrape(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_the_jobs_that_ran(http: httpx.Client) -> None:
    before = scrape(http)
    done = [submit(http, iterations=6, seed=i) for i in range(2)]
    for job in done:
        assert wait_until(http, job["id"], TERMINAL)["status"] == "succeeded"
    # One more that is canceled while running.
    long = submit(http, iterations=1000)
    wait_until(http, long["id"], {"running"})
    http.post(f"/v1/jobs/{long['id']}/cancel")
    assert wait_until(http, long["id"], TERMINAL)["status"] == "canceled"
    after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    # The worker records a job's figures just after its final state, which wait_until may see first.
    def recorded() -> bool:
        nonlocal after
        after = scrape(http)
        return delta("artgen_job_duration_seconds_count", model="tiny") >= 3

    wait_for(recorded, 10, "the canceled job's figures")

    assert delta("artgen_jobs_submitted_total", model="tiny") == 3
    assert delta("artgen_jobs_finished_total", model="tiny", state="succeeded") == 2
    assert delta("artgen_jobs_finished_total", model="tiny", state="canceled") == 1
    assert delta("artgen_job_duration_seconds_count", model="tiny") == 3
    assert delta("artgen_job_queue_wait_seconds_count", model="tiny") == 3
    assert delta("artgen_iterations_total", model="tiny") >= 12
    assert delta("artgen_job_duration_seconds_sum", model="tiny") > 0
    assert after[("artgen_queue_depth", (("queue", "artgen.tiny"),))] >= 0
    assert after[("artgen_workers_alive", ())] >= 1
    requests = delta("artgen_http_requests_total", route="/v1/jobs", method="POST", status="202")
    assert requests == 3
