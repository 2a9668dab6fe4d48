"""Extending a job and repainting from a manifest: the engine, the runner (fakeredis) and the manifest."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import fakeredis
import pytest
import torch
from PIL import Image

from shared.jobs import JobRecord, JobState, queue_for
from shared.keys import Keys
from shared.manifest import Manifest, ManifestError, Segment, parse_manifest
from shared.params import GenerationConfig
from shared.settings import Settings
from shared.storage import DirectoryStore, manifest_key, result_key, state_key
from worker.chain import manifest_config, repaint, weights_sha256
from worker.engine import Painter, png_bytes
from worker.models import TINY_SEED, LoadedModels
from worker.runner import run_job
from worker.runtime import EngineOptions

KEYS = Keys("unit")
SEED = 1234


def _painted(models: LoadedModels, stops: list[tuple[str, int]], **config: object) -> Painter:
    """Paint `prompt` until each stop in turn, carrying the state through torch.save as the store does."""
    painter: Painter | None = None
    for prompt, until in stops:
        state = None
        if painter is not None:
            buffer = io.BytesIO()
            torch.save(painter.state_dict(), buffer)
            state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        # A large step, so that codes change within ten iterations of the tiny model.
        fields: dict[str, object] = {
            "width": 32, "height": 32, "cutn": 4, "seed": SEED, "step_size": 0.5, **config
        }  # fmt: skip
        painter = Painter(models, GenerationConfig(prompts=prompt, iterations=until, **fields))  # type: ignore[arg-type]
        if state is not None:
            painter.load_state_dict(state)
        while painter.iteration < until:
            painter.step()
    assert painter is not None
    return painter


def _png(painter: Painter) -> bytes:
    return png_bytes(painter.image(), {"prompt": "same metadata for both"})


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_ten_then_ten_equals_twenty_byte_for_byte(tiny_models: LoadedModels, optimizer: str) -> None:
    whole = _painted(tiny_models, [("a red fox", 20)], optimizer=optimizer)
    extended = _painted(tiny_models, [("a red fox", 10), ("a red fox", 20)], optimizer=optimizer)
    assert extended.iteration == whole.iteration == 20
    assert _png(extended) == _png(whole)
    assert torch.equal(extended.z, whole.z)
    # Not trivially equal: ten iterations alone paint something else.
    assert _png(_painted(tiny_models, [("a red fox", 10)], optimizer=optimizer)) != _png(whole)


def test_a_new_prompt_carries_on_from_the_parent(tiny_models: LoadedModels) -> None:
    carried = _painted(tiny_models, [("a red fox", 6), ("a blue whale", 12)])
    straight = _painted(tiny_models, [("a red fox", 12)])
    fresh = _painted(tiny_models, [("a blue whale", 12)])
    assert _png(carried) != _png(straight) and _png(carried) != _png(fresh)


def _params(prompt: str, iterations: int) -> dict[str, object]:
    return {
        "prompt": prompt,
        "width": 32,
        "height": 32,
        "iterations": iterations,
        "seed": SEED,
        "cutn": 4,
        "cut_pow": 1.0,
        "step_size": 0.5,
        "init_weight": 0.0,
        "init": "codes",
    }


def _manifest(models: LoadedModels, segments: list[Segment]) -> Manifest:
    return Manifest(
        model="tiny",
        seed=SEED,
        params=segments[-1].params,
        segments=segments,
        weights_sha256=weights_sha256(models, Path(".")),
        artgen_version="0",
        torch_version=torch.__version__,
        device="cpu",
        engine_options={},
        engine="",
    )


def test_repaint_paints_the_whole_chain(tiny_models: LoadedModels, tmp_path: Path) -> None:
    settings = Settings(model="tiny", device="cpu", models_dir=tmp_path)
    segments = [
        Segment(until=6, params=_params("a red fox", 6)),
        Segment(until=12, params=_params("a blue whale", 12)),
    ]
    manifest = _manifest(tiny_models, segments)
    painted = repaint(tiny_models, manifest, settings, EngineOptions())
    expected = _painted(tiny_models, [("a red fox", 6), ("a blue whale", 12)])
    assert painted.iteration == 12 and _png(painted) == _png(expected)


def test_weights_digest_is_taken_once_per_model(tiny_models: LoadedModels) -> None:
    first = weights_sha256(tiny_models, Path("."))
    assert list(first) == [f"random weights (seed {TINY_SEED})"] and len(next(iter(first.values()))) == 64
    assert weights_sha256(tiny_models, Path("elsewhere")) is first  # cached on the model object


def test_a_manifest_with_uploaded_pictures_is_refused(tiny_models: LoadedModels, tmp_path: Path) -> None:
    settings = Settings(model="tiny", device="cpu", models_dir=tmp_path)
    segment = Segment(until=3, params=_params("x", 3))
    manifest = _manifest(tiny_models, [segment]).model_copy(update={"has_init_image": True})
    with pytest.raises(ManifestError, match="uploaded pictures"):
        manifest_config(manifest, settings, segment)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('{"a": 1}', "not an artgen manifest"),
        ('{"artgen_manifest": 9}', "version 9"),
        ('{"artgen_manifest": 1, "model": "tiny"}', "field seed"),
    ],
)
def test_bad_manifests_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(text)


# --- the runner: a job keeps its state, an extension continues it --------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        redis_prefix="unit",
        model="tiny",
        device="cpu",
        models_dir=tmp_path,
        checkpoint_every=4,
        preview_every=2,
        batch_size=1,
    )


def _queue(client: fakeredis.FakeRedis, **fields: object) -> JobRecord:
    params: dict[str, object] = {
        "id": f"job{time.monotonic_ns()}",
        "prompt": "a lighthouse at dusk",
        "model": "tiny",
        "width": 32,
        "height": 32,
        "iterations": 10,
        "seed": SEED,
        "cutn": 4,
        "step_size": 0.5,
        "preview_every": 2,
        **fields,
    }
    record = JobRecord.model_validate(params)
    client.hset(KEYS.job(record.id), mapping=record.to_redis())
    client.zadd(KEYS.queued(queue_for(record.model)), {record.id: record.created_at})
    return record


def _run(
    client: fakeredis.FakeRedis, settings: Settings, store: DirectoryStore, job_id: str
) -> JobState | None:
    return run_job(client, settings, job_id, "w1", lambda *_: None, store)


def _pixels(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        return image.tobytes()


def test_the_runner_keeps_the_state_and_an_extension_continues_it(settings: Settings, tmp_path: Path) -> None:
    client, store = fakeredis.FakeRedis(), DirectoryStore(tmp_path / "results")
    whole = _queue(client, iterations=20)
    parent = _queue(client, iterations=10)
    assert _run(client, settings, store, whole.id) is JobState.SUCCEEDED
    assert _run(client, settings, store, parent.id) is JobState.SUCCEEDED
    assert store.exists(state_key(parent.id)) and store.exists(manifest_key(parent.id))

    child = _queue(client, iterations=20, parent=parent.id, start_iteration=10)
    assert _run(client, settings, store, child.id) is JobState.SUCCEEDED
    pictures = [store.get(result_key(j.id)) or b"" for j in (whole, child)]
    assert _pixels(pictures[0]) == _pixels(pictures[1])

    manifest = parse_manifest(store.get(manifest_key(child.id)) or b"")
    assert [(s.job_id, s.until) for s in manifest.segments] == [(parent.id, 10), (child.id, 20)]
    assert manifest.seed == SEED and manifest.params["iterations"] == 20
    assert manifest.torch_version == torch.__version__ and manifest.device == "cpu"
    with Image.open(io.BytesIO(pictures[1])) as image:
        assert json.loads(image.text["manifest"]) == json.loads(manifest.to_json())  # type: ignore[attr-defined]
    # The manifest repaints it in one process, pixel for pixel.
    from worker.models import get_models

    models = get_models("tiny", settings.models_dir, "cpu")
    painted = repaint(models, manifest, settings, EngineOptions.from_settings(settings))
    assert painted.image().tobytes() == _pixels(pictures[1])


def test_an_extension_whose_parent_state_is_gone_fails_saying_why(settings: Settings, tmp_path: Path) -> None:
    client, store = fakeredis.FakeRedis(), DirectoryStore(tmp_path / "results")
    parent = _queue(client, iterations=4)
    assert _run(client, settings, store, parent.id) is JobState.SUCCEEDED
    store.delete(state_key(parent.id))
    child = _queue(client, iterations=8, parent=parent.id, start_iteration=4)
    assert _run(client, settings, store, child.id) is JobState.FAILED
    error = JobRecord.from_redis(client.hgetall(KEYS.job(child.id))).error or ""
    assert f"the final state of parent job {parent.id} is no longer kept" in error
