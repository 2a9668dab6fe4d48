"""`artgen generate --manifest`: a job the runner painted (fakeredis, tiny model) repainted by the CLI."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import fakeredis
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from launch.cli import cli
from shared.jobs import JobRecord, JobState, queue_for
from shared.keys import Keys
from shared.settings import Settings, get_settings
from shared.storage import DirectoryStore, manifest_key, result_key
from worker.runner import run_job

KEYS = Keys("unit")


@pytest.fixture(autouse=True)
def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTGEN_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ARTGEN_DEVICE", "cpu")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _paint(tmp_path: Path, client: fakeredis.FakeRedis, store: DirectoryStore, **fields: object) -> str:
    settings = Settings(
        redis_prefix="unit", model="tiny", device="cpu", models_dir=tmp_path / "models", batch_size=1
    )
    record = JobRecord.model_validate(
        {
            "id": f"job{time.monotonic_ns()}",
            "prompt": "a lighthouse at dusk",
            "model": "tiny",
            "width": 32,
            "height": 32,
            "iterations": 6,
            "seed": 99,
            "cutn": 4,
            "step_size": 0.5,
            **fields,
        }
    )
    client.hset(KEYS.job(record.id), mapping=record.to_redis())
    client.zadd(KEYS.queued(queue_for("tiny")), {record.id: record.created_at})
    assert run_job(client, settings, record.id, "w1", lambda *_: None, store) is JobState.SUCCEEDED
    return record.id


def _pixels(path_or_bytes: Path | bytes) -> bytes:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        return image.tobytes()


def test_a_manifest_or_the_picture_alone_repaints_a_chain(tmp_path: Path) -> None:
    client, store = fakeredis.FakeRedis(), DirectoryStore(tmp_path / "results")
    parent = _paint(tmp_path, client, store, optimizer="adamw", init="pixels")
    child = _paint(
        tmp_path, client, store, prompt="a storm at sea", iterations=10, parent=parent, start_iteration=6,
        optimizer="adamw", init="pixels",
    )  # fmt: skip
    result = store.get(result_key(child)) or b""
    (tmp_path / "manifest.json").write_bytes(store.get(manifest_key(child)) or b"")
    (tmp_path / "result.png").write_bytes(result)

    for source in ("manifest.json", "result.png"):
        out = tmp_path / f"from-{source}.png"
        answer = _run("generate", "--manifest", str(tmp_path / source), "-o", str(out))
        assert answer.exit_code == 0, answer.output
        assert _pixels(out) == _pixels(result)
        with Image.open(out) as image:
            recorded = json.loads(image.text["manifest"])  # type: ignore[attr-defined]
        assert [segment["job_id"] for segment in recorded["segments"]] == [parent, child]


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], "no such file"),
        (b"{not json", [], "not JSON"),
        (b'{"hello": 1}', [], "not an artgen manifest"),
        (b'{"artgen_manifest": 2}', [], "version 2"),
        (b'{"artgen_manifest": 1, "model": "tiny"}', [], "field seed"),
        ("png", [], "holds no artgen manifest"),
        (b'{"artgen_manifest": 1}', ["a prompt"], "leave out PROMPT"),
        (b'{"artgen_manifest": 1}', ["--seed", "3", "--iterations", "2"], "leave out --iterations, --seed"),
    ],
)
def test_a_bad_manifest_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes | str | None, extra: list[str], message: str
) -> None:
    path = tmp_path / "m.json"
    if content == "png":
        Image.new("RGB", (4, 4)).save(path, format="PNG")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    answer = _run("generate", *extra, "--manifest", str(path), "-o", str(tmp_path / "o.png"))
    assert answer.exit_code == 2, answer.output
    assert answer.output.strip().count("\n") == 0 and "Traceback" not in answer.output
    assert message in answer.output


def test_neither_prompt_nor_manifest_is_one_line(tmp_path: Path) -> None:
    answer = _run("generate", "-o", str(tmp_path / "o.png"))
    assert answer.exit_code == 2 and "give PROMPT, or --manifest FILE" in answer.output


def test_a_picture_the_cli_painted_repaints_itself(tmp_path: Path) -> None:
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    painted = _run(
        "generate", "a quiet harbour ^ a storm", "--model", "tiny", "--size", "32x32", "--iterations", "6",
        "--cutn", "4", "--step-size", "0.5", "--optimizer", "radam", "--init", "gradient", "-o", str(first),
    )  # fmt: skip
    assert painted.exit_code == 0, painted.output
    answer = _run("generate", "--manifest", str(first), "-o", str(again))
    assert answer.exit_code == 0, answer.output
    assert _pixels(again) == _pixels(first)
