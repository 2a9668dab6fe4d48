"""Turning a client's `JobCreate` into `JobParams` within this deployment's limits."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.schemas import JobCreate
from shared.jobs import JobParams
from shared.params import InvalidParams, build_config
from shared.settings import Settings


def invalid(errors: Sequence[dict[str, Any]]) -> RequestValidationError:
    """A 422 in FastAPI's usual `{"detail": [{loc, msg, type}]}` shape."""
    return RequestValidationError(list(errors))


def from_pydantic(exc: ValidationError, prefix: str = "body") -> RequestValidationError:
    # Inputs are left out of the answer: a 100 kB field need not come back to its sender.
    return invalid([{"loc": (prefix, *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()])


def job_params(
    request: JobCreate, settings: Settings, *, has_init_image: bool, image_prompt_count: int
) -> JobParams:
    """Every limit checked at once (shared.params), so a client sees all its mistakes in one answer."""
    models = settings.served_models
    if not models:
        # A deployment problem, not the client's: say so plainly instead of guessing a model.
        raise HTTPException(503, detail="no model is configured on this deployment (set ARTGEN_MODEL)")
    model = request.model if request.model is not None else models[0]
    try:
        config = build_config(
            settings,
            prompt=request.prompt,
            model=model,
            width=request.width,
            height=request.height,
            iterations=request.iterations,
            cutn=request.cutn,
            seed=request.seed,
            cut_pow=request.cut_pow,
            step_size=request.step_size,
            init_weight=request.init_weight,
            init=request.init,
            change_every=request.change_every,
            optimizer=request.optimizer,
            plateau_window=request.plateau_window,
            plateau_delta=request.plateau_delta,
            served=models,
            has_init_image=has_init_image,
            image_prompt_count=image_prompt_count,
        )
    except InvalidParams as exc:
        raise invalid(
            [{"loc": ("body", e.field), "msg": e.message, "type": "value_error"} for e in exc.errors]
        ) from exc
    return JobParams(
        prompt=config.prompts,
        model=model,
        width=config.width,
        height=config.height,
        iterations=config.iterations,
        # 31 bits: a seed that every client language holds as a plain integer.
        seed=config.seed if config.seed is not None else secrets.randbelow(2**31),
        cutn=config.cutn,
        cut_pow=config.cut_pow,
        step_size=config.step_size,
        init_weight=config.init_weight,
        has_init_image=has_init_image,
        image_prompt_count=image_prompt_count,
        preview_every=settings.preview_every,
        init=config.init,
        change_every=config.change_every,
        optimizer=config.optimizer,
        plateau_window=config.plateau_window,
        plateau_delta=config.plateau_delta,
    )
