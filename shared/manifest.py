"""A job's manifest: everything needed to paint its picture again, as plain JSON (no torch here).

The worker writes it when a job succeeds: into the result store (`GET /v1/jobs/{id}/manifest`) and into
the PNG's own text metadata (key `manifest`), so a picture alone is enough for
`artgen generate --manifest picture.png`. An extended job's manifest holds the whole chain as segments:
the first job's parameters, then one segment per job (its prompt and the iteration it ends at); a repaint
paints each segment in turn, carrying the latent and optimiser state across, as the worker did.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.jobs import JobParams

MANIFEST_VERSION = 1
# JobParams fields that are the service's bookkeeping, not painting parameters.
_NOT_PAINTING = frozenset(
    {"model", "preview_every", "parent", "start_iteration", "has_init_image", "image_prompt_count"}
)


class ManifestError(ValueError):
    """A file that is not a usable manifest; the message is one line for the CLI."""


class Segment(BaseModel):
    """One job of a chain: painted with its own `params` until the chain's iteration `until`."""

    model_config = ConfigDict(extra="forbid")

    job_id: str | None = None
    until: int = Field(ge=1, description="the iteration this job ended at (counted from the chain's start)")
    params: dict[str, Any] = Field(description="the job's painting parameters, as `Manifest.params`")


class Manifest(BaseModel):
    """What painted a picture: parameters, seed, chain, weights, versions, device and engine options."""

    model_config = ConfigDict(extra="forbid")

    artgen_manifest: int = Field(MANIFEST_VERSION, description="the manifest format's version")
    job_id: str | None = Field(None, description="the job that painted it; null for the CLI")
    model: str
    seed: int
    params: dict[str, Any] = Field(
        description="every painting parameter of this job, `init` resolved to the model's choice when "
        "it gave none (`iterations` counts from the chain's start)"
    )
    segments: list[Segment] = Field(
        min_length=1, description="the chain, first job first; one segment for a job that extends nothing"
    )
    has_init_image: bool = False
    image_prompt_count: int = 0
    weights_sha256: dict[str, str] = Field(description="SHA-256 of each weights file of the model")
    artgen_version: str
    torch_version: str
    device: str
    engine_options: dict[str, Any] = Field(description="the engine options asked for (ARTGEN_ENGINE_*)")
    engine: str = Field(description="the options in force on the device, as the worker resolved them")

    def to_json(self) -> str:
        return self.model_dump_json()

    @property
    def iterations(self) -> int:
        return self.segments[-1].until


def artgen_version() -> str:
    return importlib.metadata.version("artgen")


def painting_params(params: JobParams) -> dict[str, Any]:
    """The painting parameters of a job (what `shared.params.build_config` takes, model aside)."""
    return params.model_dump(include=set(JobParams.model_fields) - _NOT_PAINTING)


def chain_segments(
    parent: Manifest | None, job_id: str | None, params: dict[str, Any], until: int
) -> list[Segment]:
    """The segments of a job: its parent's chain, then itself."""
    own = Segment(job_id=job_id, until=until, params=params)
    return [*(parent.segments if parent is not None else []), own]


def parse_manifest(text: str | bytes) -> Manifest:
    """A manifest from its JSON; ManifestError with one line saying what is wrong."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or "artgen_manifest" not in data:
        raise ManifestError("not an artgen manifest (no 'artgen_manifest' field)")
    if data["artgen_manifest"] != MANIFEST_VERSION:
        raise ManifestError(
            f"manifest version {data['artgen_manifest']!r}; this artgen reads version {MANIFEST_VERSION}"
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ManifestError(f"field {where}: {first['msg']}") from None
    ends = [segment.until for segment in manifest.segments]
    if ends != sorted(set(ends)):
        raise ManifestError(f"segments must end at increasing iterations (got {ends})")
    return manifest
