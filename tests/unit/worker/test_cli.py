"""`artgen generate` and `artgen models` through click's runner, and one real subprocess run twice."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from launch.cli import cli
from shared.settings import get_settings

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTGEN_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ARTGEN_DEVICE", "cpu")
    monkeypatch.setenv("ARTGEN_MAX_SIZE", "128")
    monkeypatch.setenv("ARTGEN_DEFAULT_SIZE", "64")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


def test_generate_writes_png_with_metadata(tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    frames = tmp_path / "frames"
    result = _run(
        "generate", "a red fox:1|a dog:-0.3", "--model", "tiny", "--size", "48x32", "--iterations", "2",
        "--cutn", "4", "--seed", "3", "--preview-every", "1", "--frames-dir", str(frames), "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == (48, 32)
        text = dict(image.text)  # type: ignore[attr-defined]
        manifest = json.loads(text.pop("manifest"))
        assert text == {
            "prompt": "a red fox:1|a dog:-0.3", "seed": "3", "model": "tiny", "iterations": "2",
            "size": "48x32",
        }  # fmt: skip
        assert manifest["job_id"] is None and manifest["seed"] == 3 and manifest["params"]["width"] == 48
    assert sorted(p.name for p in frames.iterdir()) == ["frame_00001.png", "frame_00002.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "50x64"], "multiple of 16"),
        (["--size", "256x256"], "at most 128"),
        (["--size", "big"], "WIDTHxHEIGHT"),
        (["--iterations", "0"], "at least 1"),
        (["--init-image", "{bad}"], "not a readable image"),
        (["--init-image", "{missing}"], "no such file"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--model", "imagenet-16384"], "artgen models pull imagenet-16384"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "bad.png").write_text("not a picture")
    args = [a.format(bad=tmp_path / "bad.png", missing=tmp_path / "missing.png") for a in args]
    result = _run(
        "generate", "a fox", "--model", "tiny", "--iterations", "1", *args, "-o", str(tmp_path / "o.png")
    )
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0, result.output
    assert message in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_malformed_prompt_weight_is_refused(tmp_path: Path) -> None:
    result = _run("generate", "a fox:1:2:3x|", "--model", "tiny", "-o", str(tmp_path / "o.png"))
    assert result.exit_code == 2 and result.output.startswith("Error: PROMPT:")


def test_models_list_shows_presence(tmp_path: Path) -> None:
    result = _run("models", "list")
    assert result.exit_code == 0
    assert "tiny" in result.output and "built-in" in result.output
    assert "missing: run `artgen models pull imagenet-16384`" in result.output


def test_models_pull_of_a_builtin_has_nothing_to_do() -> None:
    result = _run("models", "pull", "tiny")
    assert result.exit_code == 0 and "nothing to download" in result.output


@pytest.mark.slow
def test_real_subprocess_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    artgen = Path(sys.executable).parent / "artgen"
    outputs = []
    for name in ("x.png", "y.png"):
        command = [str(artgen), "generate", "flowering magenta orchids", "--model", "tiny", "--size", "64x64"]
        command += ["--iterations", "10", "--seed", "7", "-o", name]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    with Image.open(io.BytesIO(outputs[0])) as image:
        assert image.size == (64, 64) and image.text["seed"] == "7"


def test_a_prompt_piece_without_text_is_one_clear_line(tmp_path: Path) -> None:
    result = _run("generate", "a fox|:0.5", "--model", "tiny", "-o", str(tmp_path / "o.png"))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "Error: PROMPT: prompt piece ':0.5' has no text"


def test_every_bad_flag_is_named_on_one_line(tmp_path: Path) -> None:
    result = _run(
        "generate",
        "a fox",
        "--model",
        "tiny",
        "--size",
        "50x64",
        "--cutn",
        "0",
        "-o",
        str(tmp_path / "o.png"),
    )
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert "--size: width must be a positive multiple of 16" in result.output
    assert "--cutn: cutn must be at least 1 (got 0)" in result.output


def test_a_worker_that_cannot_load_its_engine_does_not_start(tmp_path: Path) -> None:
    """`artgen worker` exits with one line before it takes jobs, rather than failing every job it takes."""
    # sitecustomize runs at interpreter start: it makes `import worker.engine` fail as a broken image would.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Broken:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'worker.engine':\n"
        "            raise ImportError('No module named deliberately_missing_module')\n"
        "sys.meta_path.insert(0, _Broken())\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}",
        "ARTGEN_MODEL": "tiny",
        "ARTGEN_DEVICE": "cpu",
        "ARTGEN_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: the check comes first
    }
    result = subprocess.run(
        [sys.executable, "-m", "launch.cli", "worker", "--pool", "solo"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "the worker cannot load its engine" in result.stderr
    assert "deliberately_missing_module" in result.stderr and "Traceback" not in result.stderr


def _start_worker(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """A real `artgen worker` process, with a Redis address it must never reach: every check comes first."""
    env = {
        **os.environ,
        "ARTGEN_MODEL": "tiny",
        "ARTGEN_REDIS_URL": "redis://127.0.0.1:1/0",
        "ARTGEN_MODELS_DIR": str(tmp_path),
        **settings,
    }
    artgen = Path(sys.executable).parent / "artgen"
    return subprocess.run(
        [str(artgen), "worker", "--pool", "solo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_worker_asked_for_cuda_without_cuda_exits_with_one_line(tmp_path: Path) -> None:
    result = _start_worker(tmp_path, ARTGEN_DEVICE="cuda")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("Error: device 'cuda' requested but CUDA is not available here: ")
    assert "ARTGEN_DEVICE" in result.stderr and torch.__version__ in result.stderr


def test_a_worker_asked_for_fp16_on_a_cpu_exits_with_one_line(tmp_path: Path) -> None:
    result = _start_worker(tmp_path, ARTGEN_DEVICE="cpu", ARTGEN_ENGINE_PRECISION="fp16")
    assert result.returncode == 2, result.stderr
    assert result.stderr == "Error: precision fp16 is for CUDA; on CPU use bf16 or fp32\n"


# --- painting choices ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizer", "sgd"], "--optimizer: optimizer must be one of adam, adamw, radam, nadam"),
        (["--init", "noise"], "--init: init must be one of codes, pixels, gradient"),
        (["--change-every", "0"], "--change-every: change_every must be at least 1"),
        (
            ["--iterations", "4", "--change-every", "4"],
            "--change-every: change_every 4 never reaches stage 2",
        ),
        (["--plateau-window", "0"], "--plateau-window: plateau_window must be at least 1"),
        (["--plateau-delta", "0.5"], "--plateau-delta: plateau_delta needs plateau_window"),
        (
            ["--plateau-window", "2", "--plateau-delta", "-1"],
            "--plateau-delta: plateau_delta must be at least 0",
        ),
    ],
)
def test_bad_painting_choices_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = _run("generate", "a fox ^ a dog", "--model", "tiny", *args, "-o", str(tmp_path / "o.png"))
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert message in result.output and "Traceback" not in result.output


def test_generate_with_a_schedule_optimizer_start_and_plateau(tmp_path: Path) -> None:
    out, frames = tmp_path / "story.png", tmp_path / "frames"
    result = _run(
        "generate", "a seed ^ a tree", "--model", "tiny", "--size", "32", "--iterations", "20", "--cutn", "2",
        "--seed", "3", "--change-every", "3", "--optimizer", "adamw", "--init", "gradient",
        "--plateau-window", "2", "--plateau-delta", "100", "--preview-every", "1",
        "--frames-dir", str(frames), "-o", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # Stage 1 runs its 3 iterations; the last stage is watched and plateaus as soon as it can judge (3 more).
    assert "stopped at iteration 6" in result.output
    assert len(list(frames.iterdir())) == 6
    with Image.open(out) as image:
        assert image.text["iterations"] == "6"
