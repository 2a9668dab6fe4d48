"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.jobs import CancelReason, JobState, PromptLoss
from shared.model_facts import JobDefaults
from shared.params import (
    MAX_CUT_POW,
    MAX_DEADLINE_S,
    MAX_IMAGE_PROMPTS,
    MAX_INIT_WEIGHT,
    MAX_SEED,
    MAX_STEP_SIZE,
    GenerationConfig,
    InitKind,
    OptimizerName,
)
from shared.webhooks import WEBHOOK_EVENTS, WebhookEventName


class JobCreate(BaseModel):
    """A painting job as a client asks for it; limits that depend on settings are checked afterwards."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        description="`text:weight:stop` pieces joined by `|`; a schedule joins stages with `^` "
        "(`a seed ^ a sprout ^ a tree`), each stage painted for `change_every` iterations"
    )
    model: str | None = Field(None, description="a model this deployment serves; default: its first")
    width: int | None = Field(None, description="pixels, a multiple of 16; default: the model's")
    height: int | None = Field(None, description="pixels, a multiple of 16; default: the model's")
    iterations: int | None = Field(None, description="default: the model's")
    cutn: int | None = Field(None, description="cutouts scored by CLIP per iteration; default: the model's")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="random when left out; always returned")
    cut_pow: float = Field(GenerationConfig.cut_pow, gt=0, le=MAX_CUT_POW, allow_inf_nan=False)
    # None: the model's own (GET /v1/config `model_defaults`).
    step_size: float | None = Field(
        None, gt=0, le=MAX_STEP_SIZE, allow_inf_nan=False, description="the optimizer's learning rate"
    )
    optimizer: OptimizerName = Field(
        GenerationConfig.optimizer, description="torch.optim's adam (Crowson's), adamw, radam or nadam"
    )
    init: InitKind | None = Field(
        None,
        description="how a picture without init_image starts: `codes` (random codebook entries), `pixels` "
        "(encoded pixel noise) or `gradient` (an encoded smooth random gradient); default: the model's "
        "own (MODELS.md)",
    )
    change_every: int | None = Field(
        None, ge=1, description="iterations per stage of a `^` schedule; default: the iterations split evenly"
    )
    plateau_window: int | None = Field(
        None,
        ge=1,
        description="stop early (state `succeeded`, `stopped_at` set) when the loss of the last stage "
        "improved by `plateau_delta` or less over this many iterations; default: never",
    )
    plateau_delta: float = Field(
        GenerationConfig.plateau_delta,
        ge=0,
        allow_inf_nan=False,
        description="see plateau_window; 0 stops when the window found no lower loss at all",
    )
    init_weight: float = Field(GenerationConfig.init_weight, ge=0, le=MAX_INIT_WEIGHT, allow_inf_nan=False)
    init_image: str | None = Field(None, description="start picture, base64 (PNG, JPEG or WEBP)")
    image_prompts: list[str] = Field(
        default_factory=list, max_length=MAX_IMAGE_PROMPTS, description="pictures to paint towards, base64"
    )

    # --- for the programs that call artgen ---------------------------------------------------------
    webhook: str | None = Field(
        None,
        max_length=2048,
        description="http(s) URL that receives the job view, signed by the Standard Webhooks spec, on the "
        "events of `webhook_events_filter`",
    )
    webhook_events_filter: list[WebhookEventName] | None = Field(
        None,
        max_length=len(WEBHOOK_EVENTS),
        description='events sent to `webhook`: "start", "progress" (throttled), "completed" (every final '
        'state); default ["start", "completed"]',
    )
    deadline_s: float | None = Field(
        None,
        gt=0,
        le=MAX_DEADLINE_S,
        allow_inf_nan=False,
        description="seconds after submission when the job is no longer wanted: queued, it never starts; "
        'running, it stops at its next iteration (ends `canceled`, `cancel_reason` "deadline"); '
        "the `Cancel-After` header says the same",
    )

    @field_validator("webhook_events_filter", mode="before")
    @classmethod
    def _split_events(cls, value: Any) -> Any:
        # A form field carries the list as "start,completed".
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class StageView(BaseModel):
    """Where a job's prompt schedule stands."""

    index: int = Field(description="0-based stage of the latest iteration")
    count: int
    text: str = Field(description="the stage's own prompt")


class JobLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    frame: str
    result: str
    events: str
    cancel: str
    deliveries: str
    manifest: str
    extend: str


class JobView(BaseModel):
    """What clients see of a job."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    status: JobState
    model: str
    note: str | None
    prompt: str
    width: int
    height: int
    cutn: int
    iterations: int
    iteration: int
    progress: float = Field(
        description="iteration / iterations, 0..1 (an extension: counted from its start_iteration)"
    )
    its: float | None = Field(description="iterations per second")
    eta_seconds: float | None
    queue_position: int | None = Field(description="1 = next to start; null unless queued")
    seed: int
    loss: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    queue_wait_s: float | None
    run_s: float | None
    attempts: int
    worker: str | None = Field(description="the worker running it, or that ran it last")
    resumed_from: int | None
    batch: int | None = Field(description="jobs painted together with it at most, itself included")
    error: str | None
    links: JobLinks
    optimizer: OptimizerName = Field(description="the latent's torch optimizer")
    init: InitKind | None = Field(description="how it starts without an init image; null: the model's own")
    change_every: int | None = Field(description="iterations per stage of its `^` schedule")
    plateau_window: int | None = Field(description="iterations watched for a plateau; null: never")
    plateau_delta: float = Field(description="the least improvement over plateau_window that goes on")
    stage: StageView = Field(description="the stage of the latest iteration (the first one before any)")
    losses: list[PromptLoss] | None = Field(
        description="per prompt piece of the current stage, at the latest iteration; null before any"
    )
    stopped_at: int | None = Field(
        description="the iteration where the loss plateaued and the job ended, below `iterations`"
    )

    # --- for the programs that call artgen ---------------------------------------------------------
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    deadline_at: float | None = Field(
        None, description="unix seconds; the job is canceled if unfinished by then"
    )
    cancel_reason: CancelReason | None = Field(
        None, description='why a canceled job was canceled: "client" or "deadline"'
    )

    # --- chains (POST /v1/jobs/{id}/extend) -------------------------------------------------------
    parent: str | None = Field(None, description="the job this one extends")
    children: list[str] = Field(default_factory=list, description="the jobs that extend this one")
    start_iteration: int = Field(
        0,
        description="the parent's last iteration, where this job starts (`iterations` counts from the "
        "chain's start)",
    )


class ExtendRequest(BaseModel):
    """Carry a succeeded job on: more iterations from its final latent and optimiser state."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(description="iterations to add, from 1 to the deployment's max_iterations")
    prompt: str | None = Field(None, description="carry on under this prompt; default: the parent's")


class WebhookDelivery(BaseModel):
    """One attempt to deliver one webhook event."""

    webhook_id: str = Field(description="the `webhook-id` header: the same on every attempt of one event")
    event: str
    attempt: int = Field(description="1 for the first attempt of this event")
    at: float = Field(description="unix seconds when the attempt started")
    duration_s: float
    outcome: str = Field(description="delivered, retrying, failed (the last attempt), refused or dropped")
    status_code: int | None = Field(description="the receiver's HTTP status; null when none came")
    error: str | None
    worker: str | None = Field(description="the webhooks worker that made the attempt")


class DeliveryList(BaseModel):
    deliveries: list[WebhookDelivery]


class JobList(BaseModel):
    jobs: list[JobView]
    total: int
    limit: int
    offset: int


class Detail(BaseModel):
    """Every error answer: `{"detail": "..."}`."""

    detail: str


class Ready(BaseModel):
    status: str  # "ready", or "degraded" when Redis is above ARTGEN_REDIS_MEMORY_HIGH of its maxmemory
    workers: list[str]
    detail: str | None = None


class Health(BaseModel):
    status: str


class ServiceConfig(BaseModel):
    """Limits and models of this deployment (GET /v1/config)."""

    models: list[str]
    default_model: str | None
    notes: dict[str, str] = Field(description="per model: why its pictures are not meant as art")
    max_size: int
    max_iterations: int
    max_cutn: int
    max_prompt_chars: int
    max_upload_bytes: int
    default_size: int | None = Field(description="of the default model; null when no model is served")
    default_iterations: int | None = Field(description="of the default model")
    default_cutn: int | None = Field(description="of the default model")
    model_defaults: dict[str, JobDefaults] = Field(
        description="per model served: what a job on it gets for each of these it leaves out"
    )
    api_keys: bool = Field(description="true when every job route needs an API key")
