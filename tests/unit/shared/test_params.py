"""The one check of a job's parameters (`shared.params`), its per-model defaults and the PNG metadata."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from shared.model_facts import MODEL_FACTS, MODEL_NOTES, STANDARD, JobDefaults
from shared.params import (
    GenerationConfig,
    InvalidParams,
    Limits,
    build_config,
    config_errors,
    job_defaults,
    png_metadata,
)
from shared.settings import Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ARTGEN_"):
            monkeypatch.delenv(name)


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def _refused(**params: Any) -> dict[str, str]:
    """Field -> message of every error build_config reports."""
    settings = params.pop("settings", _settings(max_size=128, max_cutn=16, max_iterations=500))
    with pytest.raises(InvalidParams) as caught:
        build_config(settings, **{"prompt": "a cat", "model": "tiny", **params})
    return {error.field: error.message for error in caught.value.errors}


def test_each_model_has_its_facts_once() -> None:
    assert set(MODEL_FACTS) == {"imagenet-16384", "wikiart-16384", "tiny", "toyworld"}
    assert MODEL_FACTS["toyworld"].defaults == JobDefaults(size=128, iterations=200, cutn=32, step_size=0.2)
    assert "untrained demo model" in MODEL_NOTES["tiny"] and "ignore the prompt" in MODEL_NOTES["tiny"]
    assert "artgen models pull imagenet-16384" in MODEL_NOTES["toyworld"]
    assert "imagenet-16384" not in MODEL_NOTES  # the real models carry no note


def test_left_out_parameters_get_the_models_defaults() -> None:
    settings = _settings()
    toy = build_config(settings, prompt="a red circle", model="toyworld")
    assert (toy.width, toy.height, toy.iterations, toy.cutn, toy.step_size) == (128, 128, 200, 32, 0.2)
    real = build_config(settings, prompt="a red fox", model="imagenet-16384")
    assert (real.width, real.height, real.iterations, real.cutn) == (
        STANDARD.size,
        STANDARD.size,
        STANDARD.iterations,
        STANDARD.cutn,
    )
    given = build_config(settings, prompt="a red circle", model="toyworld", width=32, iterations=3, cutn=2)
    assert (given.width, given.height, given.iterations, given.cutn) == (32, 128, 3, 2)


def test_a_set_default_overrides_every_models_own() -> None:
    settings = _settings(default_size=128, default_iterations=7, default_cutn=3)
    for model, facts in MODEL_FACTS.items():
        own_step = facts.defaults.step_size  # no setting overrides a model's step size
        assert job_defaults(model, settings) == JobDefaults(
            size=128, iterations=7, cutn=3, step_size=own_step
        )


def test_defaults_stay_within_the_limits() -> None:
    settings = _settings(max_size=200, max_iterations=50, max_cutn=10)
    # 200 is no multiple of 16: the largest side allowed is 192.
    assert job_defaults("imagenet-16384", settings) == JobDefaults(
        size=192, iterations=50, cutn=10, step_size=0.1
    )
    assert job_defaults("no-such-model", settings) is None


def test_every_error_is_reported_at_once() -> None:
    errors = _refused(prompt="cat|:0.5", width=50, height=4096, iterations=0, cutn=17, init_weight=1.0)
    assert set(errors) == {"prompt", "width", "height", "iterations", "cutn", "init_weight"}
    assert errors["prompt"] == "prompt piece ':0.5' has no text"
    assert errors["width"] == "width must be a positive multiple of 16, at most 128 (got 50)"
    assert errors["iterations"] == "iterations must be at least 1 (got 0)"
    assert errors["cutn"] == "cutn must be from 1 to 16 (got 17)"
    assert errors["init_weight"] == "init_weight needs an init_image"


@pytest.mark.parametrize(
    ("params", "field", "fragment"),
    [
        ({"seed": -1}, "seed", "at least 0"),
        ({"seed": 2**32}, "seed", "from 0 to 4294967295"),
        ({"cut_pow": 0.0}, "cut_pow", "above 0"),
        ({"cut_pow": 20.0}, "cut_pow", "above 0 and at most 10"),
        ({"iterations": 5000}, "iterations", "iterations must be from 1 to 1000 (got 5000)"),
        ({"step_size": float("nan")}, "step_size", "step_size must be above 0 and at most 1"),
        ({"init_weight": 1e9, "has_init_image": True}, "init_weight", "from 0 to 100"),
        ({"image_prompt_count": 5, "prompt": ""}, "image_prompts", "at most 4"),
        ({"prompt": "x" * 2001}, "prompt", "the limit is 2000"),
        ({"width": 10**400}, "width", "multiple of 16"),
    ],
)
def test_service_limits(params: dict[str, Any], field: str, fragment: str) -> None:
    assert fragment in _refused(settings=_settings(), **params)[field]


def test_models_are_checked_against_what_is_served() -> None:
    assert "is not served here" in _refused(model="toyworld", served=["tiny"])["model"]
    assert _refused(model="nope")["model"].startswith("unknown model 'nope'; choose one of imagenet-16384")
    # An unknown model does not hide the other mistakes.
    assert set(_refused(model="nope", width=50)) == {"model", "width"}


def test_pictures_not_decoded_yet_count_as_given() -> None:
    config = build_config(
        _settings(), prompt="", model="tiny", init_weight=1.0, has_init_image=True, image_prompt_count=1
    )
    assert config.init_image is None and config.init_weight == 1.0
    assert "prompt is empty" in _refused(prompt="", image_prompt_count=0)["prompt"]


def test_the_engine_checks_structure_only() -> None:
    picture = Image.new("RGB", (8, 8))
    loose = GenerationConfig("", width=8, height=24, cutn=400, step_size=5.0, image_prompts=[picture] * 9)
    assert config_errors(loose, Limits(side_multiple=8)) == []
    assert [e.field for e in config_errors(loose)] == ["width", "height"]  # multiples of 16 by default


def test_png_metadata_is_the_same_for_the_cli_and_the_runner() -> None:
    config = GenerationConfig("a fox", width=48, height=32)
    assert png_metadata(config, model="tiny", seed=3, iterations=2) == {
        "prompt": "a fox",
        "seed": "3",
        "model": "tiny",
        "iterations": "2",
        "size": "48x32",
    }
    assert png_metadata(config, model="tiny", seed=3, iterations=2, job_id="j1")["job_id"] == "j1"


# --- painting choices: schedules, start, optimiser, plateau --------------------------------------------


def test_a_schedule_splits_the_iterations_evenly_unless_told() -> None:
    settings = _settings()
    assert build_config(settings, prompt="a ^ b ^ c", model="tiny", iterations=10).change_every == 3
    chosen = build_config(settings, prompt="a ^ b", model="tiny", iterations=10, change_every=7)
    assert chosen.change_every == 7
    assert build_config(settings, prompt="a", model="tiny", iterations=10).change_every == 10
    config = build_config(settings, prompt="a", model="tiny", optimizer="radam", init="gradient")
    assert (config.optimizer, config.init, config.plateau_window) == ("radam", "gradient", None)


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        (
            {"prompt": "a ^ b ^ c", "iterations": 10, "change_every": 5},
            "change_every",
            "change_every 5 never reaches stage 3 of 3: it starts at iteration 11, after the last (10)",
        ),
        ({"prompt": "a ^ b", "change_every": 0}, "change_every", "change_every must be at least 1 (got 0)"),
        ({"prompt": "a ^ b ^ c", "iterations": 2}, "change_every", "3 prompt stages need at least 3"),
        ({"prompt": "a ^ ^ c"}, "prompt", "stage 2 is empty (two '^' in a row, or one at an end)"),
        ({"init": "noise"}, "init", "init must be one of codes, pixels, gradient (got 'noise')"),
        ({"init": "pixels", "has_init_image": True}, "init", "give one or the other"),
        ({"optimizer": "sgd"}, "optimizer", "optimizer must be one of adam, adamw, radam, nadam (got 'sgd')"),
        ({"plateau_window": 0}, "plateau_window", "plateau_window must be at least 1 (got 0)"),
        ({"plateau_window": 100, "iterations": 100}, "plateau_window", "from 1 to 99 (got 100)"),
        ({"plateau_window": 5, "plateau_delta": -1.0}, "plateau_delta", "at least 0 (got -1.0)"),
        ({"plateau_window": 5, "plateau_delta": float("inf")}, "plateau_delta", "a finite number"),
        ({"plateau_delta": 0.1}, "plateau_delta", "plateau_delta needs plateau_window"),
    ],
)
def test_painting_choices_are_checked(params: dict[str, Any], field: str, message: str) -> None:
    assert message in _refused(settings=_settings(), **params)[field]
