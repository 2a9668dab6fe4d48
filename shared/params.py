"""A job's parameters as the engine takes them (`GenerationConfig`), and the one check of them.

Plain data, no torch. `build_config` fills what a request leaves out with its model's defaults and checks
every limit at once; the API calls it before anything is queued, the CLI before any model loads, the
runner on a stored job, and the engine (`worker.engine.validate_config`) checks with `config_errors`, so
one set of limits gives one set of messages. Each caller words the errors for its own users: a 422, a
one-line CLI error, a failed job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from shared.model_facts import MODEL_FACTS, STANDARD, JobDefaults
from shared.prompts import (
    PromptSpec,
    PromptSyntaxError,
    default_change_every,
    parse_schedule,
    stage_texts,
)
from shared.settings import Settings

# How a picture without an init image starts: random codebook entries (the notebook's), VQGAN-encoded
# uniform pixel noise (a smoother, greyish start), or an encoded smooth random colour gradient
# (nerdyrodent's `--init_noise gradient`).
InitKind = Literal["codes", "pixels", "gradient"]
INITS: tuple[InitKind, ...] = ("codes", "pixels", "gradient")
# The latent's optimiser, all torch.optim with their own defaults beside the learning rate (`step_size`).
OptimizerName = Literal["adam", "adamw", "radam", "nadam"]
OPTIMIZERS: tuple[OptimizerName, ...] = ("adam", "adamw", "radam", "nadam")

# Seeds are handed to torch.Generator.manual_seed; 32 bits keeps them portable to other RNGs.
MAX_SEED = 2**32 - 1
MAX_CUT_POW = 10.0  # beyond it nearly every cutout is a few pixels wide
MAX_STEP_SIZE = 1.0  # Adam's step on a latent whose codes are about unit size
MAX_INIT_WEIGHT = 100.0
# Image prompts one job may carry (each one is CLIP-encoded on every iteration).
MAX_IMAGE_PROMPTS = 4
# Pixels per latent cell of the service's models, each side: the API takes multiples of it for every model.
SIDE_MULTIPLE = 16
# The longest deadline a job may carry (Cancel-After, deadline_s): a week, a job record's default lifetime.
MAX_DEADLINE_S = 7 * 24 * 3600
# The PNG text chunk that holds a finished picture's manifest (shared.manifest).
MANIFEST_PNG_KEY = "manifest"
# `Cancel-After` spellings: hours, minutes and seconds in that order, each optional, at least one: 1h30m, 90s.
_DURATION = re.compile(r"(?:(\d{1,4})h)?(?:(\d{1,6})m)?(?:(\d{1,8}(?:\.\d{1,3})?)s)?")


def parse_duration(text: str) -> float:
    """Seconds of a duration spelled `30s`, `5m`, `1h30m` (Replicate's `Cancel-After`); ValueError if not."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or not text.strip() or not any(match.groups()):
        raise ValueError(f"{text[:40]!r} is not a duration such as 30s, 5m or 1h30m")
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not 0 < total <= MAX_DEADLINE_S:
        raise ValueError(f"a duration must be above 0 and at most {MAX_DEADLINE_S} s")
    return total


@dataclass
class GenerationConfig:
    """What to paint and how; defaults follow Crowson's notebook unless a comment says otherwise."""

    prompts: str  # "text:weight:stop|... ^ ..." (shared.prompts); may be "" when image_prompts are given
    # Size, iterations, cutn and step size default to the f16 models' (shared.model_facts.STANDARD).
    width: int = STANDARD.size  # pixels; a multiple of the VQGAN's downsampling factor (16)
    height: int = STANDARD.size
    iterations: int = STANDARD.iterations  # optimisation steps
    seed: int | None = None  # None: drawn at random, then exposed as Painter.seed
    step_size: float = STANDARD.step_size  # the optimiser's learning rate
    cutn: int = STANDARD.cutn  # cutouts per step: more = smoother gradient, linear cost in CLIP
    cut_pow: float = 1.0  # cutout size ~ rand**cut_pow: >1 favours small cutouts (detail), <1 large
    init_image: Image.Image | None = None  # start from this picture's latent instead of noise
    init_weight: float = 0.0  # weight of MSE(z, z_init) * w / 2 (the notebook's, constant, no decay)
    image_prompts: list[Image.Image] = field(default_factory=list)  # weight 1 each, CLIP-encoded cutouts
    augment: bool = True  # per-cutout augmentations + noise (off only for benchmarks/tests)
    # No init image: how the latent starts (INITS). None: the model's own choice (Preset.noise_init).
    init: InitKind | None = None
    noise_fac: float = 0.1  # per-cutout Gaussian noise std drawn from U(0, noise_fac), as the notebook
    # A schedule's stages change every this many iterations; None: the iterations split evenly.
    change_every: int | None = None
    optimizer: OptimizerName = "adam"  # Crowson's; the others are torch.optim's variants
    # Stop early when the loss improved by plateau_delta or less over the last plateau_window iterations
    # of the last stage (PlateauDetector). None: always run every iteration.
    plateau_window: int | None = None
    plateau_delta: float = 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds a config is checked against; None = no bound beyond what the engine can paint.

    The engine checks with the defaults (its VQGAN's factor as `side_multiple`); the API, the CLI and
    the runner with `from_settings`.
    """

    side_multiple: int = SIDE_MULTIPLE  # the engine passes its VQGAN's downsampling factor
    max_size: int | None = None
    max_iterations: int | None = None
    max_cutn: int | None = None
    max_prompt_chars: int | None = None
    max_seed: int | None = None  # set: seeds from 0 to it
    max_cut_pow: float | None = None
    max_step_size: float | None = None
    max_init_weight: float | None = None
    max_image_prompts: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The service's limits: the deployment's settings and the fixed bounds above."""
        return cls(
            max_size=settings.max_size,
            max_iterations=settings.max_iterations,
            max_cutn=settings.max_cutn,
            max_prompt_chars=settings.max_prompt_chars,
            max_seed=MAX_SEED,
            max_cut_pow=MAX_CUT_POW,
            max_step_size=MAX_STEP_SIZE,
            max_init_weight=MAX_INIT_WEIGHT,
            max_image_prompts=MAX_IMAGE_PROMPTS,
        )


@dataclass(frozen=True, slots=True)
class ParamError:
    """One thing wrong with a job's parameters."""

    field: str  # as GenerationConfig and the API name it ("width", "prompt", "init_weight")
    message: str  # a whole sentence that names the field the same way


class InvalidParams(ValueError):
    """Parameters that break one or more limits; `errors` lists every one."""

    def __init__(self, errors: Sequence[ParamError]) -> None:
        super().__init__("; ".join(error.message for error in errors))
        self.errors = list(errors)


def job_defaults(model: str, settings: Settings) -> JobDefaults | None:
    """What a request on `model` gets when it leaves a parameter out; None for a model not in the table.

    A set ARTGEN_DEFAULT_* overrides the model's own default; either way it is kept within the limits.
    """
    facts = MODEL_FACTS.get(model)
    return None if facts is None else _deployed(facts.defaults, settings)


def _deployed(own: JobDefaults, settings: Settings) -> JobDefaults:
    size = settings.default_size if settings.default_size is not None else own.size
    iterations = settings.default_iterations if settings.default_iterations is not None else own.iterations
    cutn = settings.default_cutn if settings.default_cutn is not None else own.cutn
    largest_side = settings.max_size - settings.max_size % SIDE_MULTIPLE
    return JobDefaults(
        size=min(size, largest_side),
        iterations=min(iterations, settings.max_iterations),
        cutn=min(cutn, settings.max_cutn),
        step_size=own.step_size,
    )


def prompt_specs(config: GenerationConfig) -> list[list[PromptSpec]]:
    """The text prompts of each stage of a config; one stage of none when it paints towards image
    prompts alone."""
    if config.prompts.strip() or not config.image_prompts:
        return parse_schedule(config.prompts)
    return [[]]


def change_every_of(config: GenerationConfig, stages: int) -> int:
    """Iterations per stage: the config's, else the iterations split evenly over the stages."""
    if config.change_every is not None:
        return config.change_every
    return default_change_every(config.iterations, stages)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _out_of_range(
    name: str, value: float, low: float, high: float | None, *, above: bool = False
) -> str | None:
    """The message for a number outside [low, high] (or (low, high] with `above`), else None."""
    finite = isinstance(value, int) or math.isfinite(value)
    too_low = value <= low if above else value < low
    too_high = high is not None and value > high
    if finite and not too_low and not too_high:
        return None
    lowest = f"above {_number(low)}" if above else f"at least {_number(low)}"
    if too_low or (high is None and finite):
        return f"{name} must be {lowest} (got {value})"
    if high is None:
        return f"{name} must be a finite number {lowest} (got {value})"
    span = (
        f"above {_number(low)} and at most {_number(high)}"
        if above
        else f"from {_number(low)} to {_number(high)}"
    )
    return f"{name} must be {span} (got {value})"


def config_errors(
    config: GenerationConfig,
    limits: Limits | None = None,
    *,
    has_init_image: bool | None = None,
    image_prompt_count: int | None = None,
) -> list[ParamError]:
    """Everything wrong with a config, at once, so that a client sees all its mistakes in one answer.

    `has_init_image` and `image_prompt_count` stand in for pictures not decoded yet (the API checks a
    request before it reads its uploads); by default they come from the config.
    """
    limits = limits or Limits()
    has_init_image = config.init_image is not None if has_init_image is None else has_init_image
    image_prompt_count = len(config.image_prompts) if image_prompt_count is None else image_prompt_count
    errors: list[ParamError] = []

    def check(name: str, problem: str | None) -> None:
        if problem is not None:
            errors.append(ParamError(name, problem))

    if limits.max_prompt_chars is not None and len(config.prompts) > limits.max_prompt_chars:
        check(
            "prompt",
            f"prompt is {len(config.prompts)} characters long; the limit is {limits.max_prompt_chars}",
        )
    elif config.prompts.strip() or not image_prompt_count:
        try:
            stages = len(parse_schedule(config.prompts))
        except PromptSyntaxError as exc:
            check("prompt", str(exc))
        else:
            check("change_every", _stage_problem(config, stages))

    multiple, max_size = limits.side_multiple, limits.max_size
    for name, side in (("width", config.width), ("height", config.height)):
        if side < multiple or side % multiple or (max_size is not None and side > max_size):
            at_most = f", at most {max_size}" if max_size is not None else ""
            check(name, f"{name} must be a positive multiple of {multiple}{at_most} (got {side})")
    check("iterations", _out_of_range("iterations", config.iterations, 1, limits.max_iterations))
    check("cutn", _out_of_range("cutn", config.cutn, 1, limits.max_cutn))
    if config.seed is not None and limits.max_seed is not None:
        check("seed", _out_of_range("seed", config.seed, 0, limits.max_seed))
    check("cut_pow", _out_of_range("cut_pow", config.cut_pow, 0, limits.max_cut_pow, above=True))
    check("step_size", _out_of_range("step_size", config.step_size, 0, limits.max_step_size, above=True))
    check("init_weight", _out_of_range("init_weight", config.init_weight, 0, limits.max_init_weight))
    if config.init_weight and not has_init_image:
        check("init_weight", "init_weight needs an init_image")
    if limits.max_image_prompts is not None and image_prompt_count > limits.max_image_prompts:
        check(
            "image_prompts",
            f"at most {limits.max_image_prompts} image_prompts (got {image_prompt_count})",
        )
    if config.init is not None:
        if config.init not in INITS:
            check("init", f"init must be one of {', '.join(INITS)} (got {str(config.init)[:40]!r})")
        elif has_init_image:
            check("init", "init chooses how a picture without an init_image starts; give one or the other")
    if config.optimizer not in OPTIMIZERS:
        check(
            "optimizer",
            f"optimizer must be one of {', '.join(OPTIMIZERS)} (got {str(config.optimizer)[:40]!r})",
        )
    check("plateau_delta", _out_of_range("plateau_delta", config.plateau_delta, 0, None))
    if config.plateau_window is None:
        if config.plateau_delta:
            check("plateau_delta", "plateau_delta needs plateau_window")
    else:
        check(
            "plateau_window",
            _out_of_range("plateau_window", config.plateau_window, 1, max(1, config.iterations - 1)),
        )
    return errors


def _stage_problem(config: GenerationConfig, stages: int) -> str | None:
    """Why the schedule's stages do not fit the iterations, else None."""
    if config.change_every is not None and config.change_every < 1:
        return f"change_every must be at least 1 (got {config.change_every})"
    if stages < 2 or config.iterations < 1:
        return None
    if config.change_every is None:
        if config.iterations < stages:
            return f"{stages} prompt stages need at least {stages} iterations (got {config.iterations})"
        return None
    if (stages - 1) * config.change_every >= config.iterations:
        return (
            f"change_every {config.change_every} never reaches stage {stages} of {stages}: it starts at "
            f"iteration {(stages - 1) * config.change_every + 1}, after the last ({config.iterations})"
        )
    return None


def build_config(
    settings: Settings,
    *,
    prompt: str,
    model: str,
    width: int | None = None,
    height: int | None = None,
    iterations: int | None = None,
    cutn: int | None = None,
    seed: int | None = None,
    cut_pow: float = GenerationConfig.cut_pow,
    step_size: float | None = None,
    init_weight: float = GenerationConfig.init_weight,
    init_image: Image.Image | None = None,
    image_prompts: Sequence[Image.Image] = (),
    init: str | None = None,
    change_every: int | None = None,
    optimizer: str = GenerationConfig.optimizer,
    plateau_window: int | None = None,
    plateau_delta: float = GenerationConfig.plateau_delta,
    served: Sequence[str] | None = None,
    limits: Limits | None = None,
    has_init_image: bool | None = None,
    image_prompt_count: int | None = None,
) -> GenerationConfig:
    """A job's config: parameters left as None get the model's defaults, then every limit is checked.

    `served`: the models this deployment takes jobs for (the API); None accepts any model in the table.
    `limits`: None checks this deployment's limits (`Limits.from_settings`).
    `change_every` left as None is filled in (the iterations split evenly over the stages).
    Raises InvalidParams listing every error.
    """
    errors: list[ParamError] = []
    if served is not None and model not in served:
        errors.append(
            ParamError("model", f"model {model[:100]!r} is not served here; choose one of {list(served)}")
        )
    elif model not in MODEL_FACTS:
        errors.append(
            ParamError("model", f"unknown model {model[:100]!r}; choose one of {', '.join(MODEL_FACTS)}")
        )
    # An unknown model is refused above; its gaps are filled with the standard defaults only so that the
    # other parameters can be checked in the same answer.
    defaults = job_defaults(model, settings) or _deployed(STANDARD, settings)
    config = GenerationConfig(
        prompts=prompt,
        width=defaults.size if width is None else width,
        height=defaults.size if height is None else height,
        iterations=defaults.iterations if iterations is None else iterations,
        seed=seed,
        step_size=defaults.step_size if step_size is None else step_size,
        cutn=defaults.cutn if cutn is None else cutn,
        cut_pow=cut_pow,
        init_image=init_image,
        init_weight=init_weight,
        image_prompts=list(image_prompts),
        init=init,  # type: ignore[arg-type]  # checked below with the rest
        change_every=change_every,
        optimizer=optimizer,  # type: ignore[arg-type]
        plateau_window=plateau_window,
        plateau_delta=plateau_delta,
    )
    errors += config_errors(
        config,
        limits or Limits.from_settings(settings),
        has_init_image=has_init_image,
        image_prompt_count=image_prompt_count,
    )
    if errors:
        raise InvalidParams(errors)
    if config.change_every is None:
        stages = len(stage_texts(config.prompts)) if config.prompts.strip() else 1
        config.change_every = change_every_of(config, stages)
    return config


def png_metadata(
    config: GenerationConfig,
    *,
    model: str,
    seed: int,
    iterations: int,
    job_id: str | None = None,
    manifest: str | None = None,
) -> dict[str, str]:
    """The parameters a finished picture carries as PNG text, enough to paint it again."""
    metadata = {
        "prompt": config.prompts,
        "seed": str(seed),
        "model": model,
        "iterations": str(iterations),
        "size": f"{config.width}x{config.height}",
    }
    if job_id is not None:
        metadata["job_id"] = job_id
    if manifest is not None:  # shared.manifest: enough to repaint the picture from the file alone
        metadata[MANIFEST_PNG_KEY] = manifest
    return metadata
