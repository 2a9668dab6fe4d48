"""What the service knows about each model, as plain data: its note and the defaults of a job on it.

The API (validation, /v1/config, the job notes, the page) and the worker (its presets, the CLI) read this
one table; the worker's presets (`worker.models`) add the architectures and weight files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class JobDefaults:
    """What a job on a model gets for each of these parameters its request leaves out."""

    size: int  # pixels, width and height alike; a multiple of 16
    iterations: int
    cutn: int  # cutouts scored by CLIP per iteration
    step_size: float  # Adam's learning rate on the latent


@dataclass(frozen=True, slots=True)
class ModelFacts:
    name: str
    defaults: JobDefaults
    # Shown with every job on the model, on the page and by the CLI: why its pictures are not meant as art.
    note: str | None = None


# The f16 models: 256x256 is what the original API's client asks for (16x16 codes); 100 iterations and
# 32 cutouts give a finished picture in about a minute on one GPU.
STANDARD = JobDefaults(size=256, iterations=100, cutn=32, step_size=0.1)  # 0.1: the notebook's

# toyworld: where "a red circle on a blue background" gives one red shape on blue, not blobs or grey, and
# still finishes in well under a minute on a 2-core CPU; at step 0.1 one seed in three or four stays grey
# (MODELS.md, "Best settings").
_TOYWORLD = JobDefaults(size=128, iterations=200, cutn=32, step_size=0.2)

_PULL_THE_REAL_ONE = "run `artgen models pull imagenet-16384` for the real one"

MODEL_FACTS: Mapping[str, ModelFacts] = MappingProxyType(
    {
        facts.name: facts
        for facts in (
            ModelFacts("imagenet-16384", STANDARD),
            ModelFacts("wikiart-16384", STANDARD),
            ModelFacts(
                "tiny", STANDARD, note="untrained demo model: pictures ignore the prompt and are not art"
            ),
            ModelFacts(
                "toyworld",
                _TOYWORLD,
                note=f"offline demo model trained on simple shapes and colours; {_PULL_THE_REAL_ONE}",
            ),
        )
    }
)

# The notes alone, for the places that show them (job records, /v1/config, `artgen up`).
MODEL_NOTES: Mapping[str, str] = MappingProxyType(
    {name: facts.note for name, facts in MODEL_FACTS.items() if facts.note}
)
