"""The engine's painting choices on `tiny`: prompt schedules, how a picture starts, the optimiser, the stop
on a plateau, and per-prompt losses; alone and mixed in one batch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from shared.params import OPTIMIZERS
from shared.prompts import PromptSpec
from worker.engine import (
    BatchPainter,
    GenerationConfig,
    Painter,
    PlateauDetector,
    StepInfo,
    generate,
    png_bytes,
    random_gradient,
)
from worker.models import LoadedModels
from worker.progress import prompt_losses
from worker.runtime import EngineOptions


def _config(**overrides: object) -> GenerationConfig:
    base: dict[str, object] = {
        "prompts": "a red fox",
        "width": 32,
        "height": 32,
        "iterations": 4,
        "cutn": 4,
        "seed": 7,
    }
    base.update(overrides)
    return GenerationConfig(**base)  # type: ignore[arg-type]


def _run(models: LoadedModels, config: GenerationConfig) -> list[StepInfo]:
    infos: list[StepInfo] = []
    generate(models, config, on_step=infos.append)
    return infos


# --- prompt schedules ---------------------------------------------------------------------------------


def test_three_stages_over_ten_iterations_switch_at_the_hand_checked_boundaries(
    tiny_models: LoadedModels,
) -> None:
    prompt = "a seed ^ a sprout:2 | rain:-0.5 ^ a tree"
    infos = _run(tiny_models, _config(prompts=prompt, iterations=10))  # change_every 10 // 3 = 3
    assert [i.stage for i in infos] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert [i.iteration for i in infos if i.stage_end] == [3, 6]  # the last step of stages 1 and 2
    assert {i.stages for i in infos} == {3}
    assert [[s.text for s in i.specs] for i in infos[2:4]] == [["a seed"], ["a sprout", "rain"]]
    assert [len(i.losses) for i in infos] == [1, 1, 1, 2, 2, 2, 1, 1, 1, 1]
    infos = _run(tiny_models, _config(prompts=prompt, iterations=10, change_every=4))
    assert [i.stage for i in infos] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_each_stage_paints_towards_its_own_prompt(tiny_models: LoadedModels) -> None:
    # The first stage of "a ^ b" is a painting of "a" step for step, and its second stage scores "b".
    alone = _run(tiny_models, _config(prompts="a lighthouse", iterations=2))
    staged = _run(tiny_models, _config(prompts="a lighthouse ^ a harbour", iterations=4, change_every=2))
    assert [i.loss for i in staged[:2]] == [i.loss for i in alone]
    painter = Painter(tiny_models, _config(prompts="a lighthouse ^ a harbour", iterations=4, change_every=2))
    other = Painter(tiny_models, _config(prompts="a harbour"))
    assert torch.equal(painter.banks[1].embeds, other.banks[0].embeds)
    assert not torch.equal(painter.banks[0].embeds, painter.banks[1].embeds)


def test_image_prompts_join_every_stage(tiny_models: LoadedModels) -> None:
    from PIL import Image

    picture = Image.new("RGB", (32, 32), (10, 200, 30))
    infos = _run(tiny_models, _config(prompts="a ^ b|c", image_prompts=[picture], iterations=2))
    assert [[s.text for s in i.specs] for i in infos] == [["a", "<image 1>"], ["b", "c", "<image 1>"]]


# --- per-prompt losses --------------------------------------------------------------------------------


def test_per_prompt_rows_carry_the_distance_whatever_the_weight(tiny_models: LoadedModels) -> None:
    info = _run(tiny_models, _config(prompts="a fox:2|a dog:-0.5", iterations=1))[0]
    rows = prompt_losses(info)
    assert [(r["text"], r["weight"]) for r in rows] == [("a fox", 2.0), ("a dog", -0.5)]
    # The terms are 2 * d1 and -0.5 * d2; the rows give d1 and d2, positive.
    assert rows[0]["distance"] == pytest.approx(info.losses[0] / 2, abs=1e-6)
    assert rows[1]["distance"] == pytest.approx(info.losses[1] / -0.5, abs=1e-6)
    assert all(r["distance"] > 0 for r in rows)
    assert sum(info.losses) == pytest.approx(info.loss, rel=1e-5)
    assert prompt_losses(
        StepInfo(1, 1, 0.0, [0.3], 1.0, 0.0, lambda: None, specs=[PromptSpec("x", -2.0)])  # type: ignore[arg-type, return-value]
    ) == [{"text": "x", "weight": -2.0, "distance": -0.15}]


# --- the start ----------------------------------------------------------------------------------------


def test_a_random_gradient_is_a_ramp_per_channel() -> None:
    g = torch.Generator().manual_seed(3)
    picture = random_gradient(8, 12, g, torch.device("cpu"))  # (1, 3, 8, 12)
    assert picture.shape == (1, 3, 8, 12) and picture.min() >= 0 and picture.max() <= 1
    for channel in picture[0]:
        across = torch.allclose(channel, channel[:1].expand(8, 12))  # every row alike: it ramps across
        down = torch.allclose(channel, channel[:, :1].expand(8, 12))
        assert across or down
        line = channel[0] if across else channel[:, 0]
        steps = line.diff()
        assert torch.allclose(steps, steps[:1].expand_as(steps), atol=1e-6)  # linear
    g2 = torch.Generator().manual_seed(3)
    assert torch.equal(picture, random_gradient(8, 12, g2, torch.device("cpu")))


def test_each_start_gives_its_own_latent(tiny_models: LoadedModels) -> None:
    starts = {kind: Painter(tiny_models, _config(init=kind)) for kind in ("codes", "pixels", "gradient")}
    assert not torch.equal(starts["gradient"].z, starts["codes"].z)
    # The gradient start is the encoded gradient drawn first from the job's seed (tiny's encoder may snap
    # it to the same codes as pixel noise at 32x32, so it is checked against its own recipe).
    painter = starts["gradient"]
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        expected = painter._encode(random_gradient(32, 32, g, torch.device("cpu")))
    assert painter.init == "gradient" and torch.equal(painter.z.detach(), expected)
    assert torch.equal(Painter(tiny_models, _config(init="gradient")).z, painter.z)


# --- the optimiser ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_resume_is_byte_exact_for_every_optimizer(tiny_models: LoadedModels, name: str) -> None:
    config = _config(optimizer=name, iterations=4, step_size=0.2)
    straight = Painter(tiny_models, config)
    assert type(straight.optimizer).__name__.lower() == name
    for _ in range(4):
        straight.step()
    first = Painter(tiny_models, config)
    first.step(), first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    result = generate(tiny_models, config, resume_state=state)
    assert result.iterations == 4
    assert not torch.equal(straight.z.detach(), Painter(tiny_models, config).z.detach())  # it did paint
    assert png_bytes(result.image) == png_bytes(straight.image())


def test_the_optimizers_paint_differently_and_a_state_keeps_its_own(tiny_models: LoadedModels) -> None:
    latents = []
    for name in OPTIMIZERS:
        painter = Painter(tiny_models, _config(optimizer=name))
        painter.step(), painter.step()
        latents.append(painter.z.detach())
    assert all(not torch.equal(a, b) for i, a in enumerate(latents) for b in latents[i + 1 :])
    adam = Painter(tiny_models, _config())
    adam.step()
    with pytest.raises(ValueError, match="made with optimizer 'adam', this painter uses 'nadam'"):
        Painter(tiny_models, _config(optimizer="nadam")).load_state_dict(adam.state_dict())


# --- stop on a plateau ---------------------------------------------------------------------------------


def test_the_plateau_detector_on_a_hand_checked_sequence() -> None:
    detector = PlateauDetector(window=3, delta=0.1)
    losses = [5.0, 4.0, 3.0, 2.95, 2.9, 2.88, 2.87, 2.86]
    said = [detector.observe(loss) for loss in losses]
    # After 4 losses: best before the window 5.0, best in it (4, 3, 2.95) 2.95 -> improved 2.05.
    # After 5: 4.0 vs 2.9 -> 1.1.  After 6: 3.0 vs 2.88 -> 0.12.  After 7: 2.95 vs 2.87 -> 0.08 <= 0.1.
    assert said == [False, False, False, False, False, False, True, True]
    # delta 0: only a window without a new best at all; noise that goes up and down is no plateau.
    zero = PlateauDetector(window=2, delta=0.0)
    assert [zero.observe(x) for x in [3.0, 2.0, 2.5, 1.9, 2.2, 2.0, 1.95]] == [
        False,  # 1 loss
        False,  # 2 losses
        False,  # best before 3.0, window (2.0, 2.5): 1.0
        False,  # 2.0 vs (2.5, 1.9): 0.1
        False,  # 2.0 vs (1.9, 2.2): 0.1
        True,  # 1.9 vs (2.2, 2.0): -0.1, no new best
        True,  # 1.9 vs (2.0, 1.95): -0.05
    ]
    restored = PlateauDetector(window=3, delta=0.1)
    restored.load_state_dict(detector.state_dict())
    assert restored.recent == detector.recent and restored.best_before == detector.best_before


def test_a_plateau_ends_the_painting_early(tiny_models: LoadedModels) -> None:
    # delta 100: any window "improves" less than that, so it stops as soon as it can judge: window + 1.
    result = generate(tiny_models, _config(iterations=10, plateau_window=2, plateau_delta=100.0))
    assert result.iterations == 3 and result.stopped_at == 3
    # Only the last stage is watched: stage 1 of 2 runs in full (change_every 3), then 3 more steps.
    infos = _run(
        tiny_models,
        _config(prompts="a ^ b", iterations=10, change_every=3, plateau_window=2, plateau_delta=100.0),
    )
    assert [i.iteration for i in infos] == [1, 2, 3, 4, 5, 6]
    assert [i.converged for i in infos] == [False] * 5 + [True]
    # Off by default.
    off = generate(tiny_models, _config(iterations=5))
    assert off.stopped_at is None and off.iterations == 5


def test_a_plateau_survives_a_checkpoint(tiny_models: LoadedModels) -> None:
    config = _config(iterations=12, plateau_window=3, plateau_delta=0.02)
    straight = _run(tiny_models, config)
    first = Painter(tiny_models, config)
    for _ in range(2):
        first.step()
    state = torch.load(io.BytesIO(_saved(first)), weights_only=True)
    resumed = _run_resumed(tiny_models, config, state)
    assert [i.loss for i in resumed] == [i.loss for i in straight[2:]]
    assert [i.converged for i in resumed] == [i.converged for i in straight[2:]]


def _saved(painter: Painter) -> bytes:
    buffer = io.BytesIO()
    torch.save(painter.state_dict(), buffer)
    return buffer.getvalue()


def _run_resumed(models: LoadedModels, config: GenerationConfig, state: dict[str, object]) -> list[StepInfo]:
    infos: list[StepInfo] = []
    generate(models, config, on_step=infos.append, resume_state=state)
    return infos


# --- mixed jobs in one batch ---------------------------------------------------------------------------


def test_a_batch_of_mixed_choices_equals_each_painted_alone(tiny_models: LoadedModels) -> None:
    options = EngineOptions.off()
    jobs = [
        _config(prompts="a fox ^ a dog", iterations=6, change_every=2, optimizer="adamw", seed=1),
        _config(prompts="a red sky", iterations=6, optimizer="nadam", init="gradient", seed=2),
        _config(prompts="a ^ b ^ c", iterations=6, optimizer="radam", init="pixels", seed=3),
        _config(prompts="a lake", iterations=6, plateau_window=2, plateau_delta=100.0, seed=4),
    ]
    alone = []
    for config in jobs:
        painter = Painter(tiny_models, config, options)
        infos = []
        while not painter.finished:
            infos.append(painter.step())
        alone.append((infos, np.asarray(painter.image(), dtype=np.int16)))
    painters = [Painter(tiny_models, config, options) for config in jobs]
    batch = BatchPainter(tiny_models, painters)
    together: list[list[StepInfo]] = [[] for _ in jobs]
    while batch.painters:
        stepping = list(batch.painters)
        for painter, info in zip(stepping, batch.step(), strict=True):
            together[painters.index(painter)].append(info)
            if painter.finished:
                batch.remove(painter)  # the plateaued one leaves early, the others go on
    for (infos, pixels), mine, painter in zip(alone, together, painters, strict=True):
        assert [i.stage for i in mine] == [i.stage for i in infos]
        assert [i.iteration for i in mine] == [i.iteration for i in infos]
        assert [i.loss for i in mine] == pytest.approx([i.loss for i in infos], rel=1e-5, abs=1e-5)
        assert np.abs(np.asarray(painter.image(), dtype=np.int16) - pixels).max() <= 2
    assert [len(m) for m in together] == [6, 6, 6, 3]
