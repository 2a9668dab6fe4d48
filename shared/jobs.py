"""The job record both sides read and write, its states, and the names of Celery tasks and queues."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from shared.params import GenerationConfig, InitKind, OptimizerName
from shared.prompts import stage_texts

# The API enqueues by name and never imports worker code.
TASK_GENERATE = "artgen.generate"


def queue_for(model: str) -> str:
    """One Celery queue per model, so a worker only takes jobs for the models it has loaded."""
    return f"artgen.{model}"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})


class JobParams(BaseModel):
    """What a job paints; checked by `shared.params.build_config` before it is queued and again when run."""

    prompt: str
    model: str
    width: int
    height: int
    iterations: int
    seed: int
    cutn: int
    cut_pow: float = GenerationConfig.cut_pow
    step_size: float = GenerationConfig.step_size
    init_weight: float = GenerationConfig.init_weight
    has_init_image: bool = False
    image_prompt_count: int = 0
    preview_every: int = 5
    # An extended job (POST /v1/jobs/{id}/extend) continues its parent's final latent and optimiser state
    # from the parent's last iteration, `start_iteration`; `iterations` counts from the chain's start.
    parent: str | None = None
    start_iteration: int = 0
    init: InitKind | None = None  # None: the model's own start (worker.models.Preset.noise_init)
    change_every: int | None = None  # iterations per stage of a `^` schedule (filled in by build_config)
    optimizer: OptimizerName = GenerationConfig.optimizer
    plateau_window: int | None = None
    plateau_delta: float = GenerationConfig.plateau_delta

    @property
    def stage_texts(self) -> list[str]:
        """The text of each stage of the prompt's schedule (one stage without `^`)."""
        return stage_texts(self.prompt)


class PromptLoss(BaseModel):
    """One prompt piece of the stage being painted and its latest CLIP distance (lower: closer)."""

    text: str
    weight: float
    distance: float = Field(description="mean spherical distance of the cutouts to the piece, 0..~2.5")


class CancelReason(StrEnum):
    """Why a job ended `canceled`."""

    CLIENT = "client"  # POST /v1/jobs/{id}/cancel, or DELETE of an unfinished job
    DEADLINE = "deadline"  # its Cancel-After / deadline_s passed


class CallerOptions(BaseModel):
    """What the program that submitted a job asked for around the painting (webhooks, deadline)."""

    webhook: str | None = None
    webhook_events: str = ""  # comma-separated subset of shared.webhooks.WEBHOOK_EVENTS
    deadline_at: float | None = None  # unix seconds: queued past it never starts, running stops
    idempotency_key: str | None = None  # the Redis key of the Idempotency-Key that created it

    @property
    def webhook_event_list(self) -> list[str]:
        return [event for event in self.webhook_events.split(",") if event]


class JobRecord(JobParams, CallerOptions):
    """A job as stored in its Redis hash (`Keys.job`), flat so that single fields can be updated."""

    id: str
    state: JobState = JobState.QUEUED
    owner: str = ""  # hash of the API key that made it; "" with keys off
    iteration: int = 0
    loss: float | None = None
    its: float | None = None  # iterations per second, smoothed by the worker
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    worker: str | None = None
    attempts: int = 0
    resumed_from: int | None = None  # iteration of the checkpoint the last attempt resumed from
    batch: int | None = None  # most jobs it was painted together with (itself included), when > 1
    frame_seq: int = 0  # increments with every stored frame; the ETag of /frame
    note: str | None = None
    cancel_reason: CancelReason | None = None  # set when canceled
    children: str = ""  # comma-separated ids of the jobs that extend this one, oldest first
    stage: int | None = None  # the schedule's stage (0-based) of the latest iteration
    losses: list[PromptLoss] | None = None  # per piece of that stage, at the latest iteration
    stopped_at: int | None = None  # the iteration where the loss plateaued and the job ended early

    def to_redis(self) -> dict[str, str]:
        """Encode for HSET: None fields are left out, bools as 0/1, everything else as text."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, bool):
                out[name] = "1" if value else "0"
            elif isinstance(value, list):
                out[name] = json.dumps(value)
            else:
                out[name] = str(value)
        return out

    @classmethod
    def from_redis(cls, raw: dict[Any, Any]) -> JobRecord:
        """Decode an HGETALL reply (bytes or str keys); pydantic converts the text back to types."""
        decoded = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        for flag in ("has_init_image",):
            if flag in decoded:
                decoded[flag] = decoded[flag] in {"1", "True", "true"}
        if "losses" in decoded:
            decoded["losses"] = json.loads(decoded["losses"])
        return cls.model_validate(decoded)

    @property
    def child_ids(self) -> list[str]:
        return [child for child in self.children.split(",") if child]

    @property
    def progress(self) -> float:
        """The share of this job's own iterations done (an extension counts from its start_iteration)."""
        own = self.iterations - self.start_iteration
        done = self.iteration - self.start_iteration
        return min(1.0, max(0.0, done / own)) if own > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.state is not JobState.RUNNING or not self.its:
            return None
        return max(0.0, (self.iterations - self.iteration) / self.its)


class EventType(StrEnum):
    """Entries of a job's event stream (`Keys.events`): field `event` is one of these, `data` is JSON."""

    # {"iteration", "iterations", "loss", "its", "stage": {"index", "count", "text"}, "losses": [PromptLoss]}
    PROGRESS = "progress"
    FRAME = "frame"  # {"seq", "iteration"}
    FINISHED = "finished"  # {"state", "error"}


# Events kept per job stream; SSE clients that fall further behind read the job record instead.
EVENTS_MAXLEN = 500
