"""Every setting of the service, read from `ARTGEN_*` environment variables (or a `.env` file)."""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "admin"}


class Settings(BaseSettings):
    """One place for configuration; the README's settings table mirrors these fields."""

    model_config = SettingsConfigDict(env_prefix="ARTGEN_", env_file=".env", extra="ignore")

    # --- connections -----------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Namespace for every Redis key, so several deployments (or test runs) can share one server.
    redis_prefix: str = "artgen"
    # Celery's queues on a Redis of their own; None = the same Redis as the job data (`redis_url`).
    broker_url: str | None = None
    # Share of Redis' maxmemory above which /readyz says degraded and submissions get 503 + Retry-After.
    redis_memory_high: float = Field(0.8, gt=0, le=1)

    # --- models ----------------------------------------------------------------------------------
    # None means "choose for me": imagenet-16384 when its weights are present, else the offline demo.
    model: str | None = None
    models_dir: Path = Path.home() / ".cache" / "artgen" / "models"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Models a worker serves (one Celery queue each); empty = just `model`.
    worker_models: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- HTTP ------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # uvicorn processes of `artgen api` (one event loop each, on one port); /metrics sums over them.
    api_workers: int = Field(1, ge=1, le=64)
    public_url: str | None = None  # what `artgen up` prints; defaults to http://host:port
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Server-Sent Events streams one API process serves at once; beyond it, 503 with Retry-After (the
    # page then polls). Every watcher of a job shares one Redis reader per process.
    max_watchers: int = Field(10_000, ge=1)
    # A full garbage collection in an API process (one pass over every object of every open stream) runs
    # at most once per this many young ones (Python's default: 10); streams arriving by the thousand
    # otherwise cause one full pass after another, each pausing every request (BENCHMARKS.md).
    api_gc_full_every: int = Field(300, ge=1)
    # Seconds a blocking alias route (/v1/generate_text2img) waits before answering 504.
    blocking_timeout_s: float = Field(600.0, gt=0)

    # --- limits (every one is enforced by the API before a job is queued) -------------------------
    max_size: int = Field(512, ge=16)  # pixels, each side
    max_iterations: int = Field(1000, ge=1)
    max_cutn: int = Field(128, ge=1)
    max_prompt_chars: int = Field(2000, ge=1)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_upload_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_queue_depth: int = Field(1000, ge=1)
    # Jobs one caller (API key, or client address with keys off) may submit per minute; 0 = no limit.
    rate_limit_per_minute: int = Field(60, ge=0)

    # --- job defaults ----------------------------------------------------------------------------
    # What a request that leaves these out gets; None = its model's own default (shared.model_facts).
    default_size: int | None = None
    default_iterations: int | None = Field(None, ge=1)
    default_cutn: int | None = Field(None, ge=1)
    preview_every: int = Field(5, ge=1)
    # Preview frames kept per job for the time-lapse (older ones are thinned out).
    timelapse_max_frames: int = Field(60, ge=2)
    # ... and at most this many bytes of them (thinned the same way), so a big picture's run stays bounded.
    timelapse_max_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024)

    # --- lifetimes -------------------------------------------------------------------------------
    job_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    frame_ttl_s: int = Field(24 * 3600, ge=60)
    # Seconds a finished job's pictures (frames, result, time-lapse, uploads) stay in Redis; after that
    # they are served from the result store. The record and events keep `job_ttl_s`.
    finished_bytes_ttl_s: int = Field(300, ge=1)

    # --- worker ----------------------------------------------------------------------------------
    soft_time_limit_s: int = Field(3600, ge=1)
    hard_time_limit_s: int = Field(3900, ge=1)
    worker_concurrency: int = Field(1, ge=1)
    # Latent + optimiser state saved this often, so a job redelivered after a crash resumes from there.
    checkpoint_every: int = Field(25, ge=1)
    # Engine speed-ups (the engine's EngineOptions); "auto" = the fast choice for the device, and
    # each can be switched off for comparison (docs in BENCHMARKS.md, "Speed").
    engine_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    engine_channels_last: Literal["auto", "on", "off"] = "auto"
    engine_fast_clip: bool = True
    engine_weight_cache: bool = True
    engine_compile: Literal["auto", "on", "off"] = "auto"
    engine_cudnn_benchmark: bool = True
    # Compatible queued jobs (same model and picture size) a worker paints together as one batch; 1 = alone.
    batch_size: int = Field(4, ge=1, le=64)
    # A job joins a batch only if the batch's measured memory plus its own stays under this share of the
    # device's memory (GPU memory on CUDA, the machine's RAM on CPU).
    batch_memory_fraction: float = Field(0.8, gt=0, le=1)
    # A running job's lock expires this long after its worker stops refreshing it (crash detection).
    lock_ttl_s: int = Field(30, ge=5)
    # Deliveries of one job before it is marked failed instead of tried again.
    max_attempts: int = Field(3, ge=1)

    # --- results (final pictures and time-lapses; they outlive Redis) ------------------------------
    result_store: Literal["directory", "s3"] = "directory"
    results_dir: Path = Path.home() / ".cache" / "artgen" / "results"
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None  # None = AWS; MinIO or another S3-compatible server otherwise
    s3_region: str | None = None
    s3_access_key_id: SecretStr | None = None  # None = boto3's own chain (env, profile, instance role)
    s3_secret_access_key: SecretStr | None = None

    # --- for the programs that call artgen: webhooks, idempotency, deadlines, retention ------------
    # Standard Webhooks signing secret, `whsec_<base64 of 24 to 64 bytes>`; None = webhooks are refused.
    webhook_secret: SecretStr | None = None
    # Hosts or CIDRs a webhook may reach although they are loopback, private or reserved (tests, LANs).
    webhook_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # At most one "progress" delivery per job this often.
    webhook_progress_interval_s: float = Field(5.0, gt=0)
    # Connect timeout, and read timeout, of one delivery attempt.
    webhook_timeout_s: float = Field(10.0, gt=0, le=60)
    # Attempts of one event before it is given up; waits between them grow 3x from the base.
    webhook_max_attempts: int = Field(6, ge=1, le=20)
    webhook_retry_base_s: float = Field(5.0, gt=0)
    # Deliveries one webhooks worker process makes at once (threads: delivery is waiting on the network).
    webhook_concurrency: int = Field(8, ge=1, le=256)
    # Seconds an Idempotency-Key is remembered per caller.
    idempotency_ttl_s: int = Field(24 * 3600, ge=60)
    # A job still unfinished this long after it was submitted is canceled; None = no default deadline.
    default_deadline_s: int | None = Field(None, ge=1)
    # Results in the directory store older than this are swept (by the webhooks worker); None = kept.
    result_ttl_s: int | None = Field(None, ge=1)
    # A succeeded job's final latent and optimiser state (what POST /v1/jobs/{id}/extend continues from)
    # is kept this long after the job ends; later, extend answers 409 and the sweep removes the file.
    state_ttl_s: int = Field(7 * 24 * 3600, ge=60)

    # --- ops -------------------------------------------------------------------------------------
    flower_port: int = Field(5555, ge=1, le=65535)
    flower_user: str | None = None
    flower_password: SecretStr | None = None
    log_level: str = "INFO"

    @field_validator("worker_models", "cors_origins", "webhook_allow_hosts", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            keys = [part.strip() for part in value.split(",") if part.strip()]
            weak = [k for k in keys if k.lower() in _PLACEHOLDER_SECRETS or len(k) < 16]
            if weak:
                raise ValueError("ARTGEN_API_KEYS holds a placeholder or a key shorter than 16 characters")
            return keys
        return value

    @field_validator("flower_password")
    @classmethod
    def _refuse_placeholder_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().lower() in _PLACEHOLDER_SECRETS:
            raise ValueError("ARTGEN_FLOWER_PASSWORD is a placeholder; set a real secret")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        text = value.get_secret_value()
        try:
            raw = base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except binascii.Error as exc:
            raise ValueError("ARTGEN_WEBHOOK_SECRET must be whsec_ followed by base64") from exc
        if not text.startswith("whsec_") or not 24 <= len(raw) <= 64:
            raise ValueError("ARTGEN_WEBHOOK_SECRET must be whsec_ followed by the base64 of 24 to 64 bytes")
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.hard_time_limit_s <= self.soft_time_limit_s:
            raise ValueError("hard_time_limit_s must be greater than soft_time_limit_s")
        if self.default_size is not None and (self.default_size > self.max_size or self.default_size % 16):
            raise ValueError("default_size must be a multiple of 16 and at most max_size")
        return self

    @model_validator(mode="after")
    def _check_result_store(self) -> Settings:
        if self.result_store == "s3" and not self.s3_bucket:
            raise ValueError("ARTGEN_RESULT_STORE=s3 needs ARTGEN_S3_BUCKET")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("set both ARTGEN_S3_ACCESS_KEY_ID and ARTGEN_S3_SECRET_ACCESS_KEY, or neither")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def served_models(self) -> list[str]:
        """The models this deployment's workers take jobs for (one queue each); [] when none is set."""
        return self.worker_models or ([self.model] if self.model else [])

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def celery_broker_url(self) -> str:
        """Where Celery's queues live: `broker_url`, else the job data's Redis."""
        return self.broker_url or self.redis_url

    @property
    def visibility_timeout_s(self) -> int:
        # Above the hard limit, so the broker never redelivers a job that is still legitimately running.
        return self.hard_time_limit_s + 600


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings(...)` instead."""
    return Settings()
