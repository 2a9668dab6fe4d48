"""Chains of jobs on the worker: what a succeeded job keeps, how an extension continues it, and how a
manifest repaints the whole chain.

A succeeded job keeps its final painting state (latent, optimiser, iteration, the generator: the seed's
stream) and its manifest in the result store (`shared.storage.state_key`, `manifest_key`), not in Redis.
A job that extends it builds its own painter, then takes that state: from there it paints exactly as the
parent would have gone on, with its own prompt. `repaint` does the same in one process from a manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from shared.jobs import JobParams, JobRecord
from shared.manifest import (
    Manifest,
    ManifestError,
    Segment,
    artgen_version,
    chain_segments,
    painting_params,
    parse_manifest,
)
from shared.params import GenerationConfig, Limits, build_config
from shared.settings import Settings
from shared.storage import ResultStore, manifest_key, state_key

if TYPE_CHECKING:
    from worker.engine import Painter, StepInfo
    from worker.models import LoadedModels
    from worker.runtime import EngineOptions


class ParentGone(Exception):
    """The parent's kept state or manifest is no longer in the result store."""


class WeightsDiffer(Exception):
    """The model's weights here are not those a manifest was painted with."""


def weights_sha256(models: LoadedModels, models_dir: Path) -> dict[str, str]:
    """SHA-256 of each weights file of the model (random presets: of their tensors), once per model."""
    cached: dict[str, str] | None = vars(models).get("_weights_sha256")
    if cached is not None:
        return cached
    from worker.models import sha256_file

    preset = models.preset
    if preset is None or preset.random_seed is not None:
        digest = hashlib.sha256()
        for network in (models.vqgan, models.clip):
            for name, tensor in sorted(network.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
        seed = preset.random_seed if preset is not None else None
        out = {f"random weights (seed {seed})": digest.hexdigest()}
    else:
        folder = preset.weights_dir(models_dir)
        out = {f.filename: sha256_file(folder / f.filename) for f in preset.files()}
    vars(models)["_weights_sha256"] = out  # kept with the networks it describes
    return out


def config_params(config: GenerationConfig, model: str, seed: int) -> JobParams:
    """The job parameters of a config painted outside the service (the CLI): its fields by their names."""
    same = {name: getattr(config, name) for name in JobParams.model_fields if hasattr(config, name)}
    return JobParams.model_validate(
        {
            **same,
            "prompt": config.prompts,
            "model": model,
            "seed": seed,
            "has_init_image": config.init_image is not None,
            "image_prompt_count": len(config.image_prompts),
        }
    )


def build_manifest(
    job: JobParams, job_id: str | None, painter: Painter, settings: Settings, parent: Manifest | None
) -> Manifest:
    """The manifest of a job (or a CLI painting: no job id) that has just finished painting."""
    from worker.runtime import EngineOptions

    params = painting_params(job)
    params.update(seed=painter.seed, change_every=painter.change_every)
    if not job.has_init_image:
        params["init"] = painter.init  # the model's choice, when the job left it to the model
    return Manifest(
        job_id=job_id,
        model=job.model,
        seed=painter.seed,
        params=params,
        segments=chain_segments(parent, job_id, params, painter.iteration),
        has_init_image=job.has_init_image or (parent is not None and parent.has_init_image),
        image_prompt_count=job.image_prompt_count,
        weights_sha256=weights_sha256(painter.models, settings.models_dir),
        artgen_version=artgen_version(),
        torch_version=torch.__version__,
        device=str(painter.device),
        engine_options=dataclasses.asdict(EngineOptions.from_settings(settings)),
        engine=painter.runtime.describe(),
    )


def keep_final(store: ResultStore, record: JobRecord, painter: Painter, manifest: Manifest) -> None:
    """Store what an extension continues from (the painting state) and the manifest."""
    buffer = io.BytesIO()
    torch.save(painter.state_dict(), buffer)
    store.put(state_key(record.id), buffer.getvalue(), "application/octet-stream")
    store.put(manifest_key(record.id), manifest.to_json().encode(), "application/json")


def continue_parent(store: ResultStore, painter: Painter, record: JobRecord) -> Manifest | None:
    """Give an extension's painter its parent's final state; the parent's manifest (None: no parent)."""
    if record.parent is None:
        return None
    state_bytes = store.get(state_key(record.parent))
    manifest_bytes = store.get(manifest_key(record.parent))
    if state_bytes is None or manifest_bytes is None:
        raise ParentGone(f"the final state of parent job {record.parent} is no longer kept")
    # Our own tensors and numbers only: weights_only=True refuses anything else.
    state = torch.load(io.BytesIO(state_bytes), weights_only=True, map_location="cpu")
    if int(state["iteration"]) != record.start_iteration:
        raise ParentGone(
            f"parent job {record.parent} kept iteration {state['iteration']}, not {record.start_iteration}"
        )
    painter.load_state_dict(state)
    return parse_manifest(manifest_bytes)


# --- repainting from a manifest -------------------------------------------------------------------


def manifest_config(manifest: Manifest, settings: Settings, segment: Segment) -> GenerationConfig:
    """The engine config of one segment of a manifest."""
    if manifest.has_init_image or manifest.image_prompt_count:
        raise ManifestError(
            "this picture was painted from uploaded pictures (an init image or image prompts), "
            "which a manifest does not hold; it cannot be repainted from the manifest alone"
        )
    params = {**segment.params, "seed": manifest.seed}
    try:
        return build_config(settings, model=manifest.model, limits=Limits(), **params)
    except TypeError as exc:  # a parameter this artgen does not know
        raise ManifestError(f"params: {exc}") from None
    except ValueError as exc:  # InvalidParams, PromptSyntaxError
        raise ManifestError(f"params: {exc}") from None


def manifest_options(manifest: Manifest) -> EngineOptions:
    from worker.runtime import EngineOptions

    try:
        return EngineOptions(**manifest.engine_options)
    except TypeError as exc:
        raise ManifestError(f"engine_options: {exc}") from None


def check_weights(manifest: Manifest, models: LoadedModels, models_dir: Path) -> None:
    here = weights_sha256(models, models_dir)
    if here != manifest.weights_sha256:
        raise WeightsDiffer(
            f"model {manifest.model}'s weights here (SHA-256 {here}) are not those the manifest was painted "
            f"with ({manifest.weights_sha256}); the picture would differ"
        )


def repaint(
    models: LoadedModels,
    manifest: Manifest,
    settings: Settings,
    options: EngineOptions,
    on_step: Callable[[StepInfo], Any] | None = None,
) -> Painter:
    """Paint a manifest's chain in this process, segment by segment; the last segment's painter."""
    from worker.engine import Painter

    configs = [manifest_config(manifest, settings, segment) for segment in manifest.segments]
    painter: Painter | None = None
    for segment, config in zip(manifest.segments, configs, strict=True):
        state = painter.state_dict() if painter is not None else None
        painter = Painter(models, config, options)
        if state is not None:
            painter.load_state_dict(state)
        while painter.iteration < segment.until:
            info = painter.step()
            if on_step is not None:
                on_step(info)
    assert painter is not None  # a manifest has at least one segment
    return painter
