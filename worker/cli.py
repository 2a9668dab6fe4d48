"""`artgen generate` (one picture in this process) and `artgen models list|pull`.

Each command is a plain click command registered by name in launch/cli.py; torch loads only when a
command runs. Bad input exits non-zero with one line (BadInput / ClickException), no traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from PIL import Image, UnidentifiedImageError

from shared.prompts import PromptSyntaxError, parse_prompts
from shared.settings import get_settings

log = logging.getLogger(__name__)

_DEVICES = click.Choice(["auto", "cpu", "cuda"])


class BadInput(click.ClickException):
    """Bad input from the user: one `Error: ...` line and exit status 2, like click's usage errors."""

    exit_code = 2


def _parse_size(value: str, max_size: int) -> tuple[int, int]:
    """'WxH' (or one number for a square) -> (width, height), each a multiple of 16 within max_size."""
    text = value.lower().strip()
    parts = text.split("x") if "x" in text else [text, text]
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise BadInput(f"--size {value!r} is not WIDTHxHEIGHT, e.g. 256x256") from None
    for side in (width, height):
        if side < 16 or side % 16:
            raise BadInput(f"--size {value}: each side must be a positive multiple of 16")
        if side > max_size:
            raise BadInput(f"--size {value}: each side must be at most {max_size} (ARTGEN_MAX_SIZE)")
    return width, height


def _open_image(path: Path, option: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise BadInput(f"{option} {path}: no such file") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise BadInput(f"{option} {path}: not a readable image ({error})") from None


def _default_model(models_dir: Path) -> str:
    from worker.models import default_model

    return default_model(get_settings().model, models_dir)


@click.command()
@click.argument("prompt")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--init-image", type=click.Path(dir_okay=False, path_type=Path), help="Start from this picture."
)
@click.option(
    "--init-weight", type=float, default=0.0, show_default=True, help="Pull towards the init picture."
)
@click.option(
    "--image-prompt", "image_prompts", type=click.Path(dir_okay=False, path_type=Path), multiple=True
)
@click.option("--size", default=None, help="WIDTHxHEIGHT, multiples of 16 [default: settings' default_size].")
@click.option("--iterations", type=int, default=None, help="[default: settings' default_iterations]")
@click.option("--seed", type=int, default=None, help="Random when absent; printed either way.")
@click.option("--model", default=None, help="Preset name (see `artgen models list`).")
@click.option("--cutn", type=int, default=None, help="Cutouts per step [default: settings' default_cutn].")
@click.option("--cut-pow", type=float, default=1.0, show_default=True)
@click.option("--step-size", type=float, default=0.1, show_default=True)
@click.option(
    "--preview-every", type=int, default=0, help="Save a frame every N iterations into --frames-dir."
)
@click.option("--frames-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--device", type=_DEVICES, default=None, help="[default: ARTGEN_DEVICE or auto]")
def generate(
    prompt: str,
    output: Path,
    init_image: Path | None,
    init_weight: float,
    image_prompts: tuple[Path, ...],
    size: str | None,
    iterations: int | None,
    seed: int | None,
    model: str | None,
    cutn: int | None,
    cut_pow: float,
    step_size: float,
    preview_every: int,
    frames_dir: Path | None,
    device: str | None,
) -> None:
    """Paint PROMPT ("text:weight:stop|...") into OUT.png, in this process, with a progress bar."""
    settings = get_settings()
    # --- validate everything before loading any model
    try:
        parse_prompts(prompt)
    except PromptSyntaxError as error:
        raise BadInput(f"PROMPT: {error}") from None
    width, height = _parse_size(size or str(settings.default_size), settings.max_size)
    iterations = settings.default_iterations if iterations is None else iterations
    if iterations < 1:
        raise BadInput(f"--iterations must be at least 1, not {iterations}")
    cutn = settings.default_cutn if cutn is None else cutn
    if not 1 <= cutn <= settings.max_cutn:
        raise BadInput(f"--cutn must be between 1 and {settings.max_cutn}, not {cutn}")
    if cut_pow <= 0 or step_size <= 0:
        raise BadInput("--cut-pow and --step-size must be positive")
    if init_weight and init_image is None:
        raise BadInput("--init-weight needs --init-image")
    if preview_every < 0 or (preview_every and frames_dir is None):
        raise BadInput("--preview-every N needs N >= 1 and --frames-dir")
    init = _open_image(init_image, "--init-image") if init_image else None
    prompt_images = [_open_image(p, "--image-prompt") for p in image_prompts]
    if not output.parent.is_dir():
        raise BadInput(f"-o {output}: folder {output.parent} does not exist")

    from worker.engine import GenerationConfig, Painter, png_bytes
    from worker.models import (
        ChecksumMismatch,
        ModelLoadError,
        ModelsMissing,
        UnknownModel,
        get_models,
        resolve_device,
    )

    model = model or _default_model(settings.models_dir)
    try:
        resolve_device(device or settings.device)
        models = get_models(model, settings.models_dir, device or settings.device)
    except (ModelsMissing, ChecksumMismatch, ModelLoadError, UnknownModel, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    if models.note:
        click.echo(f"note: model {model}: {models.note}", err=True)

    config = GenerationConfig(
        prompts=prompt,
        width=width,
        height=height,
        iterations=iterations,
        seed=seed,
        step_size=step_size,
        cutn=cutn,
        cut_pow=cut_pow,
        init_image=init,
        init_weight=init_weight,
        image_prompts=prompt_images,
    )
    from worker.runtime import EngineOptions

    try:
        painter = Painter(models, config, EngineOptions.from_settings(settings))
    except ValueError as error:
        raise BadInput(str(error)) from None
    click.echo(f"seed {painter.seed}, model {model}, {width}x{height}, {iterations} iterations", err=True)
    if frames_dir is not None:
        frames_dir.mkdir(parents=True, exist_ok=True)

    # --- the loop; frames are saved here, outside the engine
    from tqdm import tqdm

    with tqdm(total=iterations, unit="it", desc="painting", file=sys.stderr, dynamic_ncols=True) as bar:
        while painter.iteration < iterations:
            info = painter.step()
            bar.set_postfix(loss=f"{info.loss:.4f}", refresh=False)
            bar.update(1)
            if frames_dir is not None and preview_every and info.iteration % preview_every == 0:
                info.image().save(frames_dir / f"frame_{info.iteration:05d}.png")

    metadata = {
        "prompt": prompt,
        "seed": str(painter.seed),
        "model": model,
        "iterations": str(painter.iteration),
        "size": f"{width}x{height}",
    }
    output.write_bytes(png_bytes(painter.image(), metadata))
    click.echo(f"wrote {output} (seed {painter.seed})", err=True)


@click.group()
def models() -> None:
    """List the model presets, or pull their weights."""


@models.command("list")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def list_models(models_dir: Path | None) -> None:
    """Show each preset, whether its weights are present, and where they live."""
    from worker.models import PRESETS, weights_present

    folder = models_dir or get_settings().models_dir
    for name, preset in PRESETS.items():
        if preset.random_seed is not None:
            status = "built-in (random weights, no files)"
        elif weights_present(name, folder):
            status = f"present in {preset.weights_dir(folder)}"
        else:
            status = f"missing: run `artgen models pull {name}`"
        click.echo(f"{name:16} {status}\n{'':16} {preset.description}")


@models.command("pull")
@click.argument("name")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def pull_models(name: str, models_dir: Path | None) -> None:
    """Download NAME's weights (resumable, SHA-256 verified) into the models directory."""
    import urllib.error

    from worker.models import ChecksumMismatch, ModelsMissing, UnknownModel, pull

    folder = models_dir or get_settings().models_dir
    try:
        paths = pull(name, folder, progress=True)
    except (UnknownModel, ChecksumMismatch, ModelsMissing) as error:
        raise click.ClickException(str(error)) from None
    except (urllib.error.URLError, OSError) as error:
        raise click.ClickException(
            f"download of {name} failed: {error}; run the command again to resume"
        ) from None
    if not paths:
        click.echo(f"{name}: nothing to download")
    for path in paths:
        click.echo(f"{path}")
