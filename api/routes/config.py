"""What a client (the web page) needs to know before it submits: limits, models, defaults."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SettingsDep
from api.schemas import ServiceConfig
from shared.model_facts import MODEL_NOTES

router = APIRouter(prefix="/v1", tags=["config"])


@router.get("/config", response_model=ServiceConfig)
async def read_config(settings: SettingsDep) -> ServiceConfig:
    """The limits every job is checked against, the models served and their notes."""
    models = settings.served_models
    return ServiceConfig(
        models=models,
        default_model=models[0] if models else None,
        notes={name: MODEL_NOTES[name] for name in models if name in MODEL_NOTES},
        max_size=settings.max_size,
        max_iterations=settings.max_iterations,
        max_cutn=settings.max_cutn,
        max_prompt_chars=settings.max_prompt_chars,
        max_upload_bytes=settings.max_upload_bytes,
        default_size=settings.default_size,
        default_iterations=settings.default_iterations,
        default_cutn=settings.default_cutn,
        api_keys=settings.auth_enabled,
    )
