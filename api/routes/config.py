"""What a client (the web page) needs to know before it submits: limits, models, defaults."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SettingsDep
from api.schemas import ServiceConfig
from shared.model_facts import MODEL_NOTES, JobDefaults
from shared.params import job_defaults

router = APIRouter(prefix="/v1", tags=["config"])


@router.get("/config", response_model=ServiceConfig)
async def read_config(settings: SettingsDep) -> ServiceConfig:
    """The limits every job is checked against, the models served, their notes and defaults."""
    models = settings.served_models
    defaults: dict[str, JobDefaults] = {}
    for name in models:
        if (found := job_defaults(name, settings)) is not None:
            defaults[name] = found
    first = defaults.get(models[0]) if models else None
    return ServiceConfig(
        models=models,
        default_model=models[0] if models else None,
        notes={name: MODEL_NOTES[name] for name in models if name in MODEL_NOTES},
        max_size=settings.max_size,
        max_iterations=settings.max_iterations,
        max_cutn=settings.max_cutn,
        max_prompt_chars=settings.max_prompt_chars,
        max_upload_bytes=settings.max_upload_bytes,
        default_size=first.size if first else None,
        default_iterations=first.iterations if first else None,
        default_cutn=first.cutn if first else None,
        model_defaults=defaults,
        api_keys=settings.auth_enabled,
    )
