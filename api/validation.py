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
from shared.prompts import PromptSyntaxError, parse_prompts
from shared.settings import Settings


def _error(field: str, message: str) -> dict[str, Any]:
    return {"loc": ("body", field), "msg": message, "type": "value_error"}


def invalid(errors: Sequence[dict[str, Any]]) -> RequestValidationError:
    """A 422 in FastAPI's usual `{"detail": [{loc, msg, type}]}` shape."""
    return RequestValidationError(list(errors))


def from_pydantic(exc: ValidationError, prefix: str = "body") -> RequestValidationError:
    # Inputs are left out of the answer: a 100 kB field need not come back to its sender.
    return invalid([{"loc": (prefix, *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()])


def _check_size(field: str, value: int, settings: Settings, errors: list[dict[str, Any]]) -> None:
    if value < 16 or value > settings.max_size or value % 16:
        errors.append(
            _error(field, f"{field} must be a multiple of 16 from 16 to {settings.max_size} (got {value})")
        )


def _check_range(
    field: str, value: int, low: int, high: int, errors: list[dict[str, Any]], why: str = ""
) -> None:
    if not low <= value <= high:
        errors.append(_error(field, f"{field} must be from {low} to {high}{why} (got {value})"))


def job_params(
    request: JobCreate, settings: Settings, *, has_init_image: bool, image_prompt_count: int
) -> JobParams:
    """Every limit checked at once, so a client sees all its mistakes in one answer."""
    models = settings.served_models
    if not models:
        # A deployment problem, not the client's: say so plainly instead of guessing a model.
        raise HTTPException(503, detail="no model is configured on this deployment (set ARTGEN_MODEL)")
    errors: list[dict[str, Any]] = []
    model = request.model if request.model is not None else models[0]
    if model not in models:
        errors.append(_error("model", f"model {model[:100]!r} is not served here; choose one of {models}"))

    width = request.width if request.width is not None else settings.default_size
    height = request.height if request.height is not None else settings.default_size
    _check_size("width", width, settings, errors)
    _check_size("height", height, settings, errors)
    iterations = request.iterations if request.iterations is not None else settings.default_iterations
    _check_range("iterations", iterations, 1, settings.max_iterations, errors)
    cutn = request.cutn if request.cutn is not None else min(settings.default_cutn, settings.max_cutn)
    _check_range("cutn", cutn, 1, settings.max_cutn, errors)

    if len(request.prompt) > settings.max_prompt_chars:
        errors.append(
            _error(
                "prompt",
                f"prompt is {len(request.prompt)} characters long; the limit is {settings.max_prompt_chars}",
            )
        )
    else:
        try:
            parse_prompts(request.prompt)
        except PromptSyntaxError as exc:
            errors.append(_error("prompt", f"prompt: {exc}"))
    if request.init_weight and not has_init_image:
        errors.append(_error("init_weight", "init_weight needs an init_image"))
    if errors:
        raise invalid(errors)
    return JobParams(
        prompt=request.prompt,
        model=model,
        width=width,
        height=height,
        iterations=iterations,
        # 31 bits: a seed that every client language holds as a plain integer.
        seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
        cutn=cutn,
        cut_pow=request.cut_pow,
        step_size=request.step_size,
        init_weight=request.init_weight,
        has_init_image=has_init_image,
        image_prompt_count=image_prompt_count,
        preview_every=settings.preview_every,
    )
