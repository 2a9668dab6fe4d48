"""The VQGAN+CLIP method piece by piece against hand-computed values, then the Painter on `tiny`."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from shared.prompts import PromptSpec
from worker.engine import (
    GenerationConfig,
    MakeCutouts,
    Painter,
    PromptBank,
    clamp_with_grad,
    generate,
    png_bytes,
    replace_grad,
    sharpen,
    spherical_distance,
    vector_quantize,
)
from worker.models import LoadedModels

# --- the loss --------------------------------------------------------------------------------------


def test_spherical_distance_is_half_the_squared_angle() -> None:
    x = torch.tensor([[1.0, 0.0]])
    y = torch.tensor([[3.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 1.0]])  # 0, 90, 180, 45 degrees
    expected = torch.tensor([[0.0, math.pi**2 / 8, math.pi**2 / 2, math.pi**2 / 32]])
    assert torch.allclose(spherical_distance(x, y), expected, atol=1e-5)


def test_prompt_loss_weight_sign_and_magnitude() -> None:
    cutouts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # one orthogonal to the prompt, one equal
    embed = torch.tensor([[0.0, 5.0]])
    for weight in (2.0, -0.5):
        bank = PromptBank([embed], [PromptSpec("p", weight=weight)])
        # mean over cutouts of (pi^2/8, 0), times the weight
        assert bank.losses(cutouts).item() == pytest.approx(weight * math.pi**2 / 16, rel=1e-5)


def test_prompt_stop_cuts_the_gradient_but_not_the_value() -> None:
    embed = torch.tensor([[0.0, 1.0]])
    for stop, grad_expected in ((2.0, False), (0.5, True)):  # the distance is about 0.94
        cutout = torch.tensor([[1.0, 0.2]], requires_grad=True)
        bank = PromptBank([embed], [PromptSpec("p", weight=1.0, stop=stop)])
        loss = bank.losses(cutout)
        loss.sum().backward()
        expected = spherical_distance(cutout.detach(), embed).item()
        assert loss.item() == pytest.approx(expected)
        assert bool(cutout.grad.abs().sum() > 0) is grad_expected


def test_image_prompt_rows_are_averaged_per_prompt() -> None:
    cutouts = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0]])  # distance 0
    image = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # distances pi^2/8 and pi^2/2
    bank = PromptBank([text, image], [PromptSpec("t"), PromptSpec("i", weight=3.0)])
    losses = bank.losses(cutouts)
    assert losses.shape == (2,)
    assert losses[0].item() == pytest.approx(0.0, abs=1e-6)
    assert losses[1].item() == pytest.approx(3.0 * (math.pi**2 / 8 + math.pi**2 / 2) / 2, rel=1e-5)


# --- straight-through quantisation and clamping ---------------------------------------------------


def test_sharpen_equals_pils_smooth_kernel_as_a_convolution() -> None:
    g = torch.Generator().manual_seed(0)
    images, f = torch.rand(4, 3, 20, 17, generator=g), torch.tensor([0.0, 0.1, 0.3, 1.0])
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13
    smooth = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
    expected = images + f[:, None, None, None] * (images - smooth)
    torch.testing.assert_close(sharpen(images, f), expected, atol=1e-6, rtol=0)
    assert torch.equal(sharpen(images, torch.zeros(4)), images)  # f = 0 leaves a picture alone


def test_vector_quantize_snaps_to_nearest_code_and_passes_gradient_straight_through() -> None:
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
    x = torch.tensor([[0.9, 0.8], [-0.6, 1.4], [0.1, -0.2]], requires_grad=True)
    q = vector_quantize(x, codebook)
    assert torch.equal(q.detach(), torch.tensor([[1.0, 1.0], [-1.0, 2.0], [0.0, 0.0]]))
    upstream = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    (q * upstream).sum().backward()
    assert torch.equal(x.grad, upstream)


def test_replace_grad_sums_broadcast_gradients() -> None:
    backward = torch.tensor([2.0], requires_grad=True)
    out = replace_grad(torch.zeros(3), backward.expand(3))
    out.sum().backward()
    assert backward.grad.item() == 3.0


@pytest.mark.parametrize(
    ("value", "upstream", "expected"),
    [
        (0.5, 1.0, 1.0),  # inside: untouched
        (0.5, -1.0, -1.0),
        (1.5, 1.0, 1.0),  # above: descent (-grad) lowers it, back into range: kept
        (1.5, -1.0, 0.0),  # above: descent would raise it further: cut
        (-0.5, -1.0, -1.0),  # below: descent raises it: kept
        (-0.5, 1.0, 0.0),
    ],
)
def test_clamp_with_grad(value: float, upstream: float, expected: float) -> None:
    x = torch.tensor([value], requires_grad=True)
    y = clamp_with_grad(x, 0.0, 1.0)
    assert y.item() == min(max(value, 0.0), 1.0)
    (y * upstream).sum().backward()
    assert x.grad.item() == expected


# --- cutouts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("augment", [False, True])
def test_cutout_shapes(augment: bool) -> None:
    make = MakeCutouts(cut_size=24, cutn=5, augment=augment)
    out = make(torch.rand(1, 3, 48, 32), torch.Generator().manual_seed(0))
    assert out.shape == (5, 3, 24, 24)
    assert torch.isfinite(out).all()


def test_cutout_boxes_sizes_and_offsets() -> None:
    g = torch.Generator().manual_seed(0)
    small = MakeCutouts(cut_size=16, cutn=400, cut_pow=4.0)
    large = MakeCutouts(cut_size=16, cutn=400, cut_pow=0.25)
    for make in (small, large):
        size, ox, oy = make.boxes(side_y=48, side_x=64, g=g, device=torch.device("cpu"))
        assert torch.equal(size, size.floor()) and torch.equal(ox, ox.floor())
        assert size.min() >= 16 and size.max() <= 48  # between min(side, cut) and the short side
        assert (ox >= 0).all() and (ox + size <= 64).all() and (oy >= 0).all() and (oy + size <= 48).all()
    # size ~ rand**cut_pow: the notebook's bias towards small (cut_pow > 1) or large cutouts
    sizes_small = small.boxes(48, 64, torch.Generator().manual_seed(1), torch.device("cpu"))[0]
    sizes_large = large.boxes(48, 64, torch.Generator().manual_seed(1), torch.device("cpu"))[0]
    assert sizes_small.mean() < 24 < 40 < sizes_large.mean()


class _FixedBox(MakeCutouts):
    def boxes(self, side_y, side_x, g, device):  # type: ignore[no-untyped-def]
        return torch.tensor([4.0]), torch.tensor([2.0]), torch.tensor([3.0])


def test_cutout_resamples_exactly_its_box() -> None:
    # On a linear ramp, bilinear supersampling (k = 2 here) then pooling reproduces the box's pixels.
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    image = (xs + 10 * ys).expand(1, 3, 8, 8)
    out = _FixedBox(cut_size=4, cutn=1, augment=False)(image, torch.Generator())
    assert torch.allclose(out[0], image[0, :, 3:7, 2:6], atol=1e-4)


def test_augmentations_differ_per_cutout_and_follow_the_generator() -> None:
    image = torch.rand(1, 3, 32, 32)
    make = MakeCutouts(cut_size=32, cutn=6, augment=True)
    a = make(image, torch.Generator().manual_seed(3))
    b = make(image, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])  # the whole picture each time: only augmentations differ


# --- the painter on the tiny preset -----------------------------------------------------------------


def _config(**overrides: object) -> GenerationConfig:
    base: dict[str, object] = {
        "prompts": "a red fox",
        "width": 32,
        "height": 32,
        "iterations": 3,
        "cutn": 4,
        "seed": 7,
    }
    base.update(overrides)
    return GenerationConfig(**base)  # type: ignore[arg-type]


def test_same_seed_same_picture_interleaved(tiny_models: LoadedModels) -> None:
    a, b, c = (
        Painter(tiny_models, _config()),
        Painter(tiny_models, _config()),
        Painter(tiny_models, _config(seed=8)),
    )
    for _ in range(3):  # interleaved: painters must not share random state
        a.step(), c.step(), b.step()
    assert png_bytes(a.image()) == png_bytes(b.image())
    assert png_bytes(a.image()) != png_bytes(c.image())


def test_seed_is_drawn_when_absent(tiny_models: LoadedModels) -> None:
    painter = Painter(tiny_models, _config(seed=None))
    assert isinstance(painter.seed, int) and painter.seed >= 0


def test_step_info_and_latent_range(tiny_models: LoadedModels) -> None:
    infos = []
    result = generate(tiny_models, _config(prompts="fox:1|dog:-0.5"), on_step=infos.append)
    assert [i.iteration for i in infos] == [1, 2, 3] and all(i.total == 3 for i in infos)
    assert all(len(i.losses) == 2 for i in infos)
    assert infos[-1].loss == pytest.approx(sum(infos[-1].losses), rel=1e-5)
    assert infos[0].image().size == (32, 32) and infos[-1].its > 0 and infos[-1].elapsed > 0
    assert (
        result.iterations == 3 and not result.canceled and result.seed == 7 and result.image.size == (32, 32)
    )


def test_latent_stays_inside_the_codebook_range(tiny_models: LoadedModels) -> None:
    painter = Painter(tiny_models, _config(step_size=5.0))
    painter.step()
    assert (painter.z >= painter.z_min).all() and (painter.z <= painter.z_max).all()


def test_cancel_is_checked_before_every_iteration(tiny_models: LoadedModels) -> None:
    seen: list[int] = []
    result = generate(
        tiny_models,
        _config(iterations=10),
        on_step=lambda i: seen.append(i.iteration),
        should_cancel=lambda: len(seen) >= 2,
    )
    assert result.canceled and result.iterations == 2 and seen == [1, 2]


def test_resume_is_bit_exact(tiny_models: LoadedModels) -> None:
    straight = Painter(tiny_models, _config(iterations=4))
    for _ in range(4):
        straight.step()
    first = Painter(tiny_models, _config(iterations=4))
    first.step(), first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    result = generate(tiny_models, _config(iterations=4), resume_state=state)
    assert result.iterations == 4
    assert png_bytes(result.image) == png_bytes(straight.image())


def test_the_start_is_the_configs_choice_else_the_models(tiny_models: LoadedModels) -> None:
    def start(models: LoadedModels, init: str | None) -> tuple[str, torch.Tensor]:
        painter = Painter(models, _config(init=init))
        return painter.init, painter.z.detach().clone()

    assert tiny_models.preset is not None and tiny_models.preset.noise_init == "codes"
    kind, codes = start(tiny_models, None)
    assert kind == "codes"
    assert torch.equal(codes, start(tiny_models, "codes")[1])
    kind, pixels = start(tiny_models, "pixels")
    assert kind == "pixels" and not torch.equal(pixels, codes)
    # A model whose preset starts from pixels does so unless the config says otherwise.
    grey_first = replace(tiny_models, preset=replace(tiny_models.preset, noise_init="pixels"))
    assert start(grey_first, None)[0] == "pixels" and torch.equal(start(grey_first, None)[1], pixels)
    assert torch.equal(start(grey_first, "codes")[1], codes)


def test_init_image_and_image_prompts(tiny_models: LoadedModels) -> None:
    picture = Image.new("RGB", (50, 40), (200, 30, 90))
    infos = []
    generate(
        tiny_models,
        _config(init_image=picture, init_weight=1.0, image_prompts=[picture], iterations=2),
        on_step=infos.append,
    )
    assert len(infos[0].losses) == 2  # the text prompt, then the image prompt
    assert infos[0].init_loss == 0.0  # z starts at the init picture's latent
    assert infos[1].init_loss > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 40}, "multiple of 16"),
        ({"iterations": 0}, "at least 1"),
        ({"prompts": "x:1|"}, "empty"),
        ({"init": "grey"}, "init must be"),
    ],
)
def test_bad_config_is_refused(tiny_models: LoadedModels, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Painter(tiny_models, _config(**overrides))


def test_png_bytes_carries_metadata() -> None:
    data = png_bytes(Image.new("RGB", (4, 4)), {"prompt": "a fox", "seed": "7"})
    with Image.open(io.BytesIO(data)) as image:
        assert image.text == {"prompt": "a fox", "seed": "7"}
