"""bench/gpu.py: its dry run (every stage on this CPU, the tiny preset) against the committed schema example,
and the judgements it makes of a real run's figures."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench.gpu import DRY, STAGES, Deadline, peak_tflops, stage_cuda_tests, targets

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "bench" / "gpu-dry-run.json"


def _shape(value: Any) -> Any:
    """The schema of a JSON value: keys and value kinds (int and float are both numbers)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        shapes = [_shape(v) for v in value]
        assert all(s == shapes[0] for s in shapes), "a list of mixed shapes"
        return shapes[:1]
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    return "number" if isinstance(value, int | float) else type(value).__name__


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("gpu") / "gpu"
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--dry-run", "--out-prefix", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md").read_text(), out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_dry_run_runs_every_stage_and_keeps_the_committed_schema(
    dry_run: tuple[dict[str, Any], str, Path],
) -> None:
    result, md, out = dry_run
    assert _shape(result) == _shape(json.loads(EXAMPLE.read_text()))
    assert result["dry_run"] and result["status"] == "complete"
    assert list(result["stages"]) == ["setup", *STAGES]
    assert all(s["status"] in ("ok", "over budget") and s["error"] is None for s in result["stages"].values())
    stages = {name: s["result"] for name, s in result["stages"].items()}
    tests = stages["cuda_tests"]
    assert tests["failed"] == 0 and tests["passed"] >= 7, tests
    assert (out.parent / tests["log"]).read_text().strip()
    assert [r["size"] for r in stages["table"]["rows"]] == list(DRY.sizes)
    for row in stages["table"]["rows"]:
        for job in (row["optimised"], row["all_off"]):
            # A stage over its time share stops measuring, and says so (a loaded machine may be slow).
            assert 1 <= job["measured_iterations"] <= DRY.iterations and job["job_s"] > 0
            assert job["extrapolated"] == (job["measured_iterations"] < DRY.iterations)
    assert [r["batch"] for r in stages["batch"]["rows"]] == list(DRY.batches)
    assert stages["batch"]["rows"][0]["vs_batch_1"] == 1.0
    assert stages["compile"]["compile_error"] is None and stages["compile"]["compile_s"] > 0
    flops = stages["flops"]["rows"]
    assert len(flops) == len(DRY.sizes) + 1  # every size compile off, and the compile size compiled
    for row in flops:
        # torch's count (attention as matmuls, which it sees) adds only what the shapes leave out: < 1%.
        counted = row["gflop_counted_eager"]
        assert row["gflop_per_iteration"] <= counted <= 1.01 * row["gflop_per_iteration"] + 0.1
        assert row["achieved_tflops"] > 0 and row["fraction_of_peak"] is None
    assert [t["met"] for t in result["targets"]] == [None, None]  # a dry run judges no target
    outline = _outline(md)
    assert outline == _outline(EXAMPLE.with_suffix(".md").read_text())
    assert outline[0].startswith("# bench/gpu.py: DRY RUN") and "## Targets" in outline


def _outline(md: str) -> list[str]:
    """The markdown's headings and each table's header row (the table's columns)."""
    lines = md.splitlines()
    return [
        line.split(" (")[0] if line.startswith("#") else line
        for i, line in enumerate(lines)
        if line.startswith("#")
        or (line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"))
    ]


def test_the_committed_example_is_a_complete_dry_run() -> None:
    example = json.loads(EXAMPLE.read_text())
    assert example["dry_run"] and example["status"] == "complete"
    assert example["machine"]["device"] == "cpu" and example["config"]["model"] == "tiny"
    assert EXAMPLE.with_suffix(".md").read_text().startswith("# bench/gpu.py: DRY RUN")


def _result(job_512: float, batch_ratio: float) -> dict[str, Any]:
    rows = [{"batch": 1, "vs_batch_1": 1.0}, {"batch": 4, "vs_batch_1": batch_ratio}]
    return {
        "stages": {
            "compile": {"result": {"size": 512, "iterations": 100, "compile_on": {"job_s": job_512}}},
            "batch": {"result": {"rows": [{**r, "size": 256} for r in rows]}},
        }
    }


@pytest.mark.parametrize(
    ("job_512", "ratio", "met"),
    [(9.9, 3.1, [True, True]), (10.0, 3.0, [True, True]), (10.1, 2.9, [False, False])],
)
def test_a_real_runs_figures_are_judged_against_the_targets(
    job_512: float, ratio: float, met: list[bool]
) -> None:
    judged = targets(_result(job_512, ratio), dry_run=False)
    assert [t["value"] for t in judged] == [job_512, ratio]
    assert [t["measured_at"] for t in judged] == ["512x512, 100 iterations", "256x256"]
    assert [t["met"] for t in judged] == met
    assert [t["met"] for t in targets(_result(job_512, ratio), dry_run=True)] == [None, None]
    missing = targets({"stages": {"compile": {"status": "failed", "result": None}}}, dry_run=False)
    assert [(t["value"], t["met"]) for t in missing] == [(None, None), (None, None)]


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989.4),
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", 835.5),
        ("Tesla T4", None),
    ],
)
def test_the_bf16_peak_comes_from_the_device_name(name: str, peak: float | None) -> None:
    assert peak_tflops(name)[0] == peak


def test_a_stuck_test_stage_is_cut_at_twice_its_budget(tmp_path: Path) -> None:
    log = tmp_path / "tests.log"
    # Under a lease (the GPU run's): pytest cannot even import torch in a second
    result = stage_cuda_tests(replace(DRY, lease=True), Deadline(0.5), log)
    assert result["returncode"] is None and result["passed"] == 0
    assert log.read_text().endswith("stopped at twice the stage's budget")
