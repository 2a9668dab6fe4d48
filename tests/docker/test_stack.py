"""What README "Deploy" promises, checked against the running containers of the compose stack.

The tests run in file order and share one stack; each says what it leaves behind for the next.
"""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.docker.conftest import (
    PROJECT,
    REPO,
    SECRETS,
    Stack,
    compose_env,
    record,
    run,
    stack_settings,
    wait_for,
    write_env,
)

# The first test's setup builds the wheel index and the images: minutes from cold. Every wait inside a
# test has its own, shorter bound.
pytestmark = pytest.mark.timeout(1800)

WORKER_IMAGE = f"{PROJECT}-worker:local"
API_IMAGE = f"{PROJECT}-api:local"
# Small enough to paint in seconds on a shared 2-core CPU with the `tiny` model.
JOB = {"prompt": "a lighthouse at dusk", "width": 48, "height": 48, "cutn": 4}
TERMINAL = {"succeeded", "failed", "canceled"}
PNG = b"\x89PNG\r\n\x1a\n"

# Jobs later tests look at again (filled in by the tests that make them).
made: dict[str, Any] = {}


def view(http: httpx.Client, job_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def wait_done(http: httpx.Client, job_id: str, stack: Stack, timeout_s: float = 240) -> dict[str, Any]:
    try:
        final: dict[str, Any] = wait_for(
            lambda: (v := view(http, job_id))["status"] in TERMINAL and v, timeout_s, f"job {job_id} to end"
        )
    except TimeoutError as error:
        raise AssertionError(f"{error}: {view(http, job_id)}\n--- logs ---\n{stack.logs()}") from None
    return final


def in_image(image: str, code: str) -> Any:
    return run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", code],
        check=False,
    )


def test_worker_image_runs_the_suites_torch(images: Stack) -> None:
    import torch
    import torchvision

    result = in_image(
        WORKER_IMAGE, "import torch, torchvision; print(torch.__version__, torchvision.__version__)"
    )
    assert result.returncode == 0, result.stderr
    inside = result.stdout.split()
    print(f"\nworker image: torch {inside[0]}, torchvision {inside[1]}; this suite: {torch.__version__}, "
          f"{torchvision.__version__}")  # fmt: skip
    assert inside == [torch.__version__, torchvision.__version__]
    record(torch_in_worker_image=inside[0], torch_in_suite=torch.__version__)


def test_worker_image_imports_the_engine(images: Stack) -> None:
    result = in_image(WORKER_IMAGE, "import worker.engine, worker.tasks, clip, taming.modules.vqvae.quantize")
    assert result.returncode == 0, result.stderr


def test_api_image_has_no_torch_and_is_much_smaller(images: Stack) -> None:
    assert in_image(API_IMAGE, "import api.main, flower, boto3").returncode == 0
    no_torch = in_image(API_IMAGE, "import torch")
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    assert images.figures["image_api_bytes"] * 5 < images.figures["image_worker_bytes"]


@pytest.mark.parametrize("variant", ["cpu", "rocm"])
def test_torch_variant_selects_the_index(images: Stack, variant: str) -> None:
    """TORCH_VARIANT=cpu points pip at TORCH_CPU_INDEX_URL (PyTorch's CPU index cannot be reached
    here, so a loopback URL with nothing on it stands in: the build must fail looking there)."""
    index = images.settings["ARTGEN_TEST_INDEX_URL"]
    cpu_index = index.replace("/simple/", "/cpu-index-standin/")
    command = ["docker", "build", "--network", "host", "--force-rm", "-f", "Dockerfile.worker",
               "--build-arg", f"PIP_INDEX_URL={index}", "--build-arg", f"TORCH_VARIANT={variant}",
               "--build-arg", f"TORCH_CPU_INDEX_URL={cpu_index}", "."]  # fmt: skip
    env = {**compose_env(), "DOCKER_BUILDKIT": "0"}  # the classic builder prints each step's output
    result = run(command, check=False, timeout_s=300, cwd=REPO, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    if variant == "cpu":
        assert f"Looking in indexes: {cpu_index}" in output, output[-3000:]
        assert "No matching distribution found for torch==2.14.1" in output, output[-3000:]
    else:
        assert "TORCH_VARIANT must be cuda or cpu, not 'rocm'" in output, output[-3000:]


def test_every_service_is_healthy(stack: Stack) -> None:
    states = {s["Service"]: s for s in stack.services()}
    assert set(states) == {"redis", "minio", "buckets", "api", "worker", "flower", "webhooks"}
    for name in ("redis", "minio", "api", "worker", "flower", "webhooks"):
        assert states[name]["State"] == "running" and states[name]["Health"] == "healthy", states[name]
    assert states["buckets"]["State"] == "exited" and states["buckets"]["ExitCode"] == 0
    ready = httpx.get(f"{stack.api_url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text


def test_the_api_container_runs_two_processes_and_metrics_count_for_both(stack: Stack) -> None:
    top = run(["docker", "top", stack.container("api"), "-o", "pid,args"]).stdout.splitlines()[1:]
    assert sum("spawn_main" in line for line in top) == 2, top  # API_WORKERS' default, 2
    missing = "/v1/jobs/" + "0" * 32
    key = (
        "artgen_http_requests_total",
        (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404")),
    )

    def count() -> float:
        reply = httpx.get(f"{stack.api_url}/metrics", timeout=10)  # a new connection: either process
        assert reply.status_code == 200, reply.text
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(reply.text)
            for sample in family.samples
        }
        return samples.get(key, 0.0)

    before = count()
    for _ in range(40):
        with stack.http() as http:  # a new connection each: the kernel spreads them over the processes
            assert http.get(missing).status_code == 404
    # Whichever process answers the scrape, it reports both processes' requests.
    assert [count() - before for _ in range(6)] == [40.0] * 6


@pytest.mark.parametrize("service", ["api", "flower", "worker", "webhooks"])
def test_artgen_containers_run_as_10001(stack: Stack, service: str) -> None:
    container = stack.container(service)
    ids = run(["docker", "exec", container, "sh", "-c", "id -u; id -g"]).stdout.split()
    assert ids == ["10001", "10001"]
    # The main process too, not only a shell exec'd into it.
    status = run(["docker", "exec", container, "sh", "-c", "grep -E '^(Uid|Gid):' /proc/1/status"]).stdout
    assert status.split() == ["Uid:", *["10001"] * 4, "Gid:", *["10001"] * 4], status  # init (tini) too
    top = run(["docker", "top", container, "-o", "pid,uid,args"]).stdout.splitlines()[1:]
    assert top and all(line.split()[1] == "10001" for line in top), top


@pytest.mark.parametrize("service", ["api", "flower", "webhooks"])
def test_api_and_flower_root_filesystems_are_read_only(stack: Stack, service: str) -> None:
    assert stack.inspect(service)["HostConfig"]["ReadonlyRootfs"] is True
    denied = run(["docker", "exec", stack.container(service), "touch", "/home/artgen/x"], check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert run(["docker", "exec", stack.container(service), "touch", "/tmp/x"]).returncode == 0  # tmpfs


def test_the_webhooks_container_delivers_a_signed_post(stack: Stack) -> None:
    # The receiver is the API container itself (allowed by name in the test's .env): POST /healthz
    # answers 405, which the webhooks container records as the attempt's status.
    with stack.http() as http:
        body = {
            **JOB,
            "iterations": 4,
            "webhook": "http://api:8000/healthz",
            "webhook_events_filter": ["completed"],
        }
        job = http.post("/v1/jobs", json=body)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        wait_for(lambda: view(http, job_id)["status"] in TERMINAL, 300, "the job to end", interval_s=0.2)
        attempts = wait_for(
            lambda: http.get(f"/v1/jobs/{job_id}/deliveries").json()["deliveries"], 60, "an attempt"
        )
    first = attempts[0]
    assert first["webhook_id"] == f"msg_{job_id}_completed" and first["status_code"] == 405, first
    assert first["worker"] == f"webhooks@{stack.inspect('webhooks')['Config']['Hostname']}"


def test_a_job_paints_from_start_to_end_in_the_worker_container(stack: Stack) -> None:
    assert httpx.post(f"{stack.api_url}/v1/jobs", json=JOB, timeout=10).status_code == 401, "keys are on"
    worker_name = f"worker@{stack.inspect('worker')['Config']['Hostname']}"
    with stack.http() as http:
        started = time.monotonic()
        job = http.post("/v1/jobs", json={**JOB, "iterations": 20, "seed": 7})
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        seen: set[int] = set()
        frame = None

        def progressed() -> bool:
            nonlocal frame
            current = view(http, job_id)
            seen.add(current["iteration"])
            if frame is None and current["status"] == "running":
                response = http.get(f"/v1/jobs/{job_id}/frame")
                if response.status_code == 200:
                    frame = response
            return current["status"] in TERMINAL

        wait_for(progressed, 300, "the first job to end", interval_s=0.2)
        latency = time.monotonic() - started
        final = view(http, job_id)
        assert final["status"] == "succeeded", final
        assert final["iteration"] == 20 and final["worker"] == worker_name
        assert len(seen - {0, 20}) >= 2, f"progress was readable while it painted: {sorted(seen)}"
        assert frame is not None and frame.headers["content-type"] == "image/png"
        assert frame.content.startswith(PNG)
        result = http.get(f"/v1/jobs/{job_id}/result")
        assert result.status_code == 200 and result.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(result.content)).size == (48, 48)
    made["first"] = (job_id, result.content)
    stack.figures.update(
        first_job_latency_s=round(latency, 1),
        first_job_run_s=round(final["run_s"], 1),
        first_job_queue_wait_s=round(final["queue_wait_s"], 1),
    )
    print(f"\nfirst job: {latency:.1f} s from submit to result ({final['run_s']:.1f} s painting)")


def test_flower_needs_its_login_and_lists_the_worker(stack: Stack) -> None:
    assert httpx.get(f"{stack.flower_url}/", timeout=10).status_code == 401
    assert httpx.get(f"{stack.flower_url}/api/workers", timeout=10).status_code == 401
    login = (stack.settings["ARTGEN_FLOWER_USER"], stack.settings["ARTGEN_FLOWER_PASSWORD"])
    assert httpx.get(f"{stack.flower_url}/", auth=(login[0], "wrong-password"), timeout=10).status_code == 401
    workers = httpx.get(f"{stack.flower_url}/api/workers?refresh=1", auth=login, timeout=60)
    assert workers.status_code == 200
    assert f"worker@{stack.inspect('worker')['Config']['Hostname']}" in workers.json()


def test_stopping_the_worker_hands_the_job_back_and_starting_it_resumes(stack: Stack) -> None:
    with stack.http() as http:
        job_id = http.post("/v1/jobs", json={**JOB, "iterations": 60, "seed": 8}).json()["id"]
        wait_for(lambda: view(http, job_id)["iteration"] >= 12, 300, "iteration 12", interval_s=0.2)

        started = time.monotonic()
        stack.compose("stop", "worker", timeout_s=200)
        stop_s = time.monotonic() - started
        handed_back = view(http, job_id)
        assert handed_back["status"] == "queued", handed_back  # back on the queue, not lost, not failed
        assert 12 <= handed_back["iteration"] < 60

        stack.compose("start", "worker")
        final = wait_done(http, job_id, stack)
        assert final["status"] == "succeeded" and final["iteration"] == 60, final
        assert final["resumed_from"] is not None and final["resumed_from"] >= 10, "from the checkpoint"
        assert final["attempts"] == 2
    stack.figures["worker_stop_s"] = round(stop_s, 1)
    print(f"\n`compose stop worker`: {stop_s:.1f} s; handed back at {handed_back['iteration']}, "
          f"resumed from {final['resumed_from']}")  # fmt: skip


def test_restarting_redis_loses_no_job(stack: Stack) -> None:
    with stack.http() as http:
        ids = [http.post("/v1/jobs", json={**JOB, "iterations": 15, "seed": s}).json()["id"] for s in (9, 10)]
        wait_for(lambda: view(http, ids[0])["status"] == "running", 300, "the first job to start")
        time.sleep(1.5)  # appendfsync everysec: what Redis acknowledged a second ago is on disk
        stack.compose("restart", "redis", timeout_s=120)
        for job_id in ids:
            final = wait_done(http, job_id, stack)
            assert final["status"] == "succeeded", final
            assert http.get(f"/v1/jobs/{job_id}/result").content.startswith(PNG)
        first_id, _ = made["first"]
        assert view(http, first_id)["status"] == "succeeded", "older records survive the restart too"


def test_down_then_up_keeps_jobs_and_results(stack: Stack) -> None:
    first_id, first_png = made["first"]
    stack.compose("down", timeout_s=300)  # no --volumes: what an upgrade or a reboot does
    assert stack.services() == []
    stack.up()
    with stack.http() as http:
        assert view(http, first_id)["status"] == "succeeded"
        result = http.get(f"/v1/jobs/{first_id}/result")
        assert result.status_code == 200 and result.content == first_png
        # And the stack that came back still paints.
        again = http.post("/v1/jobs", json={**JOB, "iterations": 5, "seed": 11}).json()["id"]
        assert wait_done(http, again, stack)["status"] == "succeeded"


@pytest.mark.parametrize("missing", ["REDIS_PASSWORD", "ARTGEN_API_KEYS", "ARTGEN_FLOWER_PASSWORD",
                                     "ARTGEN_S3_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD"])  # fmt: skip
def test_compose_refuses_to_start_without_a_secret(stack: Stack, tmp_path: Any, missing: str) -> None:
    settings = stack_settings(stack.settings["ARTGEN_TEST_INDEX_URL"], tmp_path / "artgen.env")
    del settings[missing]
    write_env(tmp_path / "artgen.env", settings)
    refused = Stack(tmp_path / "artgen.env", settings, project=f"{PROJECT}-nosecret")
    result = refused.compose("up", "-d", "--no-build", check=False, timeout_s=120)
    assert result.returncode != 0
    assert f"required variable {missing} is missing a value" in result.stderr, result.stderr
    label = f"label=com.docker.compose.project={refused.project}"
    assert run(["docker", "ps", "-a", "-q", "--filter", label]).stdout.strip() == "", "nothing was created"
    assert missing in SECRETS and missing not in compose_env()
