"""`artgen generate` (one picture in this process) and `artgen models list|pull`.

Each command is a plain click command registered by name in launch/cli.py; torch loads only when a
command runs. Bad input exits non-zero with one line (BadInput / ClickException), no traceback.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from PIL import Image, UnidentifiedImageError

from shared.manifest import Manifest, ManifestError, parse_manifest
from shared.params import (
    INITS,
    MANIFEST_PNG_KEY,
    OPTIMIZERS,
    GenerationConfig,
    InvalidParams,
    build_config,
    png_metadata,
)
from shared.settings import get_settings

if TYPE_CHECKING:
    from worker.engine import StepInfo

log = logging.getLogger(__name__)

_DEVICES = click.Choice(["auto", "cpu", "cuda"])


class BadInput(click.ClickException):
    """Bad input from the user: one `Error: ...` line and exit status 2, like click's usage errors."""

    exit_code = 2


def _parse_size(value: str) -> tuple[int, int]:
    """'WxH' (or one number for a square) -> (width, height); their limits are checked with the rest."""
    text = value.lower().strip()
    parts = text.split("x") if "x" in text else [text, text]
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise BadInput(f"--size {value!r} is not WIDTHxHEIGHT, e.g. 256x256") from None
    return width, height


# The command line's name for each parameter that shared.params may refuse.
_FLAGS = {
    "prompt": "PROMPT",
    "model": "--model",
    "width": "--size",
    "height": "--size",
    "iterations": "--iterations",
    "cutn": "--cutn",
    "seed": "--seed",
    "cut_pow": "--cut-pow",
    "step_size": "--step-size",
    "init_weight": "--init-weight",
    "image_prompts": "--image-prompt",
    "init": "--init",
    "change_every": "--change-every",
    "optimizer": "--optimizer",
    "plateau_window": "--plateau-window",
    "plateau_delta": "--plateau-delta",
}


def _bad_params(exc: InvalidParams) -> BadInput:
    """Every refused parameter on one line, each under its flag's name."""
    return BadInput("; ".join(f"{_FLAGS.get(e.field, e.field)}: {e.message}" for e in exc.errors))


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
@click.argument("prompt", required=False)
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Repaint from a manifest (GET /v1/jobs/{id}/manifest, or a PNG artgen painted) instead of PROMPT.",
)
@click.option(
    "--init-image", type=click.Path(dir_okay=False, path_type=Path), help="Start from this picture."
)
@click.option(
    "--init-weight",
    type=float,
    default=GenerationConfig.init_weight,
    show_default=True,
    help="Pull towards the init picture.",
)
@click.option(
    "--image-prompt", "image_prompts", type=click.Path(dir_okay=False, path_type=Path), multiple=True
)
@click.option(
    "--size",
    default=None,
    help="WIDTHxHEIGHT, multiples of 16 [default: ARTGEN_DEFAULT_SIZE, else the model's].",
)
@click.option(
    "--iterations", type=int, default=None, help="[default: ARTGEN_DEFAULT_ITERATIONS, else the model's]"
)
@click.option("--seed", type=int, default=None, help="Random when absent; printed either way.")
@click.option("--model", default=None, help="Preset name (see `artgen models list`).")
@click.option(
    "--cutn",
    type=int,
    default=None,
    help="Cutouts per step [default: ARTGEN_DEFAULT_CUTN, else the model's].",
)
@click.option("--cut-pow", type=float, default=GenerationConfig.cut_pow, show_default=True)
@click.option("--step-size", type=float, help="The optimizer's learning rate [the model's own]")
@click.option(
    "--optimizer",
    default=GenerationConfig.optimizer,
    show_default=True,
    help=f"One of {', '.join(OPTIMIZERS)} (torch.optim).",
)
@click.option(
    "--init",
    "init_kind",
    default=None,
    help=f"How a picture without --init-image starts: {', '.join(INITS)} [the model's own].",
)
@click.option(
    "--change-every",
    type=int,
    default=None,
    help="Iterations per stage of a 'a ^ b' schedule [the iterations split evenly].",
)
@click.option(
    "--plateau-window",
    type=int,
    default=None,
    help="Stop early when the loss improved by --plateau-delta or less over this many iterations.",
)
@click.option("--plateau-delta", type=float, default=GenerationConfig.plateau_delta, show_default=True)
@click.option(
    "--preview-every", type=int, default=0, help="Save a frame every N iterations into --frames-dir."
)
@click.option("--frames-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--device", type=_DEVICES, default=None, help="[default: ARTGEN_DEVICE or auto]")
def generate(
    prompt: str | None,
    output: Path,
    manifest_path: Path | None,
    init_image: Path | None,
    init_weight: float,
    image_prompts: tuple[Path, ...],
    size: str | None,
    iterations: int | None,
    seed: int | None,
    model: str | None,
    cutn: int | None,
    cut_pow: float,
    step_size: float | None,
    optimizer: str,
    init_kind: str | None,
    change_every: int | None,
    plateau_window: int | None,
    plateau_delta: float,
    preview_every: int,
    frames_dir: Path | None,
    device: str | None,
) -> None:
    """Paint PROMPT ("text:weight:stop|...", stages joined by "^") into OUT.png, in this process; or
    repaint what a manifest records (--manifest)."""
    settings = get_settings()
    if preview_every < 0 or (preview_every and frames_dir is None):
        raise BadInput("--preview-every N needs N >= 1 and --frames-dir")
    if manifest_path is not None:
        _refuse_painting_options(click.get_current_context(), prompt)
        _repaint(manifest_path, output, device, preview_every, frames_dir)
        return
    if prompt is None:
        raise BadInput("give PROMPT, or --manifest FILE to repaint a recorded picture")
    # --- validate everything before loading any model; the model comes first, its defaults fill the gaps
    model = model or _default_model(settings.models_dir)
    width, height = _parse_size(size) if size else (None, None)
    init = _open_image(init_image, "--init-image") if init_image else None
    prompt_images = [_open_image(p, "--image-prompt") for p in image_prompts]
    try:
        config = build_config(
            settings,
            prompt=prompt,
            model=model,
            width=width,
            height=height,
            iterations=iterations,
            cutn=cutn,
            seed=seed,
            cut_pow=cut_pow,
            step_size=step_size,
            init_weight=init_weight,
            init_image=init,
            image_prompts=prompt_images,
            init=init_kind,
            change_every=change_every,
            optimizer=optimizer,
            plateau_window=plateau_window,
            plateau_delta=plateau_delta,
        )
    except InvalidParams as exc:
        raise _bad_params(exc) from None
    if not output.parent.is_dir():
        raise BadInput(f"-o {output}: folder {output.parent} does not exist")

    from worker.engine import Painter, png_bytes
    from worker.models import (
        ChecksumMismatch,
        ModelLoadError,
        ModelsMissing,
        UnknownModel,
        get_models,
        resolve_device,
    )

    try:
        resolve_device(device or settings.device)
        models = get_models(model, settings.models_dir, device or settings.device)
    except (ModelsMissing, ChecksumMismatch, ModelLoadError, UnknownModel, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    if models.note:
        click.echo(f"note: model {model}: {models.note}", err=True)

    from worker.runtime import EngineOptions

    try:
        painter = Painter(models, config, EngineOptions.from_settings(settings))
    except ValueError as error:
        raise BadInput(str(error)) from None
    click.echo(
        f"seed {painter.seed}, model {model}, {config.width}x{config.height}, {config.iterations} iterations",
        err=True,
    )
    if frames_dir is not None:
        frames_dir.mkdir(parents=True, exist_ok=True)

    # --- the loop; frames are saved here, outside the engine
    from tqdm import tqdm

    with tqdm(
        total=config.iterations, unit="it", desc="painting", file=sys.stderr, dynamic_ncols=True
    ) as bar:
        while not painter.finished:
            info = painter.step()
            stage = {"stage": f"{info.stage + 1}/{info.stages}"} if info.stages > 1 else {}
            bar.set_postfix(loss=f"{info.loss:.4f}", **stage, refresh=False)
            bar.update(1)
            if frames_dir is not None and preview_every and info.iteration % preview_every == 0:
                info.image().save(frames_dir / f"frame_{info.iteration:05d}.png")

    if painter.stopped_at is not None:
        click.echo(f"the loss plateaued: stopped at iteration {painter.stopped_at}", err=True)
    from worker import chain

    manifest = chain.build_manifest(
        chain.config_params(config, model, painter.seed), None, painter, settings, parent=None
    )
    metadata = png_metadata(
        config, model=model, seed=painter.seed, iterations=painter.iteration, manifest=manifest.to_json()
    )
    output.write_bytes(png_bytes(painter.image(), metadata))
    click.echo(f"wrote {output} (seed {painter.seed})", err=True)


# What a manifest fixes: with --manifest, none of these may be given.
_PAINTING_OPTIONS = (
    "init_image", "init_weight", "image_prompts", "size", "iterations", "seed", "model", "cutn", "cut_pow",
    "step_size", "optimizer", "init_kind", "change_every", "plateau_window", "plateau_delta",
)  # fmt: skip


def _refuse_painting_options(ctx: click.Context, prompt: str | None) -> None:
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    given = [
        flags[name]
        for name in _PAINTING_OPTIONS
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    ]
    if prompt is not None:
        given.insert(0, "PROMPT")
    if given:
        raise BadInput(f"--manifest repaints what it records; leave out {', '.join(given)}")


def _read_manifest(path: Path) -> Manifest:
    """A manifest from a JSON file or from the text metadata of a PNG that artgen painted."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"--manifest {path}: no such file") from None
    except OSError as error:
        raise BadInput(f"--manifest {path}: cannot be read ({error.strerror})") from None
    if data.startswith(b"\x89PNG"):
        try:
            with Image.open(io.BytesIO(data)) as image:
                text = getattr(image, "text", {}).get(MANIFEST_PNG_KEY)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise BadInput(f"--manifest {path}: not a readable PNG ({error})") from None
        if text is None:
            raise BadInput(f"--manifest {path}: this PNG holds no artgen manifest")
        data = text.encode()
    try:
        return parse_manifest(data)
    except ManifestError as error:
        raise BadInput(f"--manifest {path}: {error}") from None


def _repaint(
    path: Path, output: Path, device: str | None, preview_every: int, frames_dir: Path | None
) -> None:
    """Paint a manifest's chain again; on the machine and device that painted it, the same pixels."""
    settings = get_settings()
    manifest = _read_manifest(path)
    if not output.parent.is_dir():
        raise BadInput(f"-o {output}: folder {output.parent} does not exist")
    from worker import chain

    try:
        configs = [chain.manifest_config(manifest, settings, segment) for segment in manifest.segments]
        options = chain.manifest_options(manifest)
    except ManifestError as error:
        raise BadInput(f"--manifest {path}: {error}") from None

    from worker.engine import png_bytes
    from worker.models import ChecksumMismatch, ModelLoadError, ModelsMissing, UnknownModel, get_models

    recorded = torch_device_type(manifest.device)
    chosen = device or recorded
    try:
        models = get_models(manifest.model, settings.models_dir, chosen)
        chain.check_weights(manifest, models, settings.models_dir)
    except (ModelsMissing, ChecksumMismatch, ModelLoadError, UnknownModel, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    except chain.WeightsDiffer as error:
        raise click.ClickException(str(error)) from None
    import torch

    if str(models.device) != manifest.device or torch.__version__ != manifest.torch_version:
        click.echo(
            f"note: painted with torch {manifest.torch_version} on {manifest.device}; repainting with torch "
            f"{torch.__version__} on {models.device}: the pixels may differ",
            err=True,
        )
    click.echo(
        f"repainting job {manifest.job_id or '(no job)'}: seed {manifest.seed}, model {manifest.model}, "
        f"{len(manifest.segments)} segment(s), {manifest.iterations} iterations",
        err=True,
    )
    if frames_dir is not None:
        frames_dir.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    with tqdm(
        total=manifest.iterations, unit="it", desc="repainting", file=sys.stderr, dynamic_ncols=True
    ) as bar:

        def on_step(info: StepInfo) -> None:
            bar.update(1)
            if frames_dir is not None and preview_every and info.iteration % preview_every == 0:
                info.image().save(frames_dir / f"frame_{info.iteration:05d}.png")

        try:
            painter = chain.repaint(models, manifest, settings, options, on_step)
        except ValueError as error:  # the engine refused the recorded options on this device
            raise BadInput(f"--manifest {path}: {error}") from None
    metadata = png_metadata(
        configs[-1],
        model=manifest.model,
        seed=painter.seed,
        iterations=painter.iteration,
        job_id=manifest.job_id,
        manifest=manifest.to_json(),
    )
    output.write_bytes(png_bytes(painter.image(), metadata))
    click.echo(f"wrote {output} (seed {painter.seed})", err=True)


def torch_device_type(device: str) -> str:
    """ "cuda:0" -> "cuda": the kind of device a manifest was painted on, as --device names it."""
    return device.split(":")[0]


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
