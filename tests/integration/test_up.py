"""`artgen up` (what `make run` runs): Redis, a worker and the API from one command; Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from launch.processes import free_port
from tests.integration.conftest import REPO, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_up_serves_a_job_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTGEN_")}
    env.update(
        {
            "ARTGEN_PORT": str(port),
            "ARTGEN_MODELS_DIR": str(tmp_path / "models"),  # nothing pulled: the demo model is chosen
            "ARTGEN_DEVICE": "cpu",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "up", "--data-dir", str(tmp_path / "var")],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    output = tmp_path / "up.log"
    try:
        wait_for(lambda: "artgen is up" in output.read_text() or up.poll() is not None, 180, "artgen up")
        text = output.read_text()
        assert up.poll() is None, text
        assert url in text
        # No model configured and none pulled: it says plainly which demo model it uses, and why.
        assert "model: " in text and "artgen models pull imagenet-16384" in text
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 3  # redis-server, the worker (and its pool), the API

        with httpx.Client(base_url=url, timeout=30) as http:
            job = http.post(
                "/v1/jobs", json={"prompt": "a red circle", "width": 64, "height": 64, "iterations": 5}
            )
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            final = wait_for(
                lambda: (v := http.get(f"/v1/jobs/{job_id}").json())["status"] == "succeeded" and v,
                120,
                "the job",
            )
            assert final["note"]  # the demo model's note travels with the job
            assert http.get("/").status_code == 200 and "<html" in http.get("/").text.lower()

        started = time.monotonic()
        up.send_signal(signal.SIGINT)  # Ctrl-C
        assert up.wait(60) == 0
        print(f"\nCtrl-C to all stopped: {time.monotonic() - started:.1f} s")
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert "stopping" in output.read_text()
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
