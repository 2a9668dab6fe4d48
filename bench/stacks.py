"""The settings every benchmark's own stack (a `launch.stack.LocalStack`) runs with."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def bench_settings(
    model: str, work: Path, results_dir: Path | None = None, *, prefix: str = "bench", **settings: str
) -> dict[str, str]:
    """`model` on the CPU, its weights in `ARTGEN_MODELS_DIR` (else `work/models`), results in `results_dir`
    (else `work/results`), a key prefix of its own, no rate limit (a benchmark submits from one address),
    warnings only in the logs; `settings` (by field name) on top."""
    return {
        "redis_prefix": f"{prefix}-{uuid.uuid4().hex[:6]}",
        "model": model,
        "device": "cpu",
        "models_dir": os.environ.get("ARTGEN_MODELS_DIR", str(work / "models")),
        "results_dir": str(results_dir or work / "results"),
        "rate_limit_per_minute": "0",
        "log_level": "WARNING",
        **settings,
    }
