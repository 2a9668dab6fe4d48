"""Publishing a running job's progress to Redis: the engine's `on_step` callback and its helpers.

Per iteration the reporter makes one pipelined round trip (progress fields, a progress event, and a
read of the cancel flag). Preview frames are PNG-encoded and stored on a background thread so the
optimisation loop never waits for an encoder or the network.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from PIL import Image

from shared.jobs import EVENTS_MAXLEN, CallerOptions, CancelReason, EventType
from shared.keys import Keys
from shared.settings import Settings
from shared.webhooks import Notify, WebhookEvent, announce, wants

if TYPE_CHECKING:
    import redis

    from worker.engine import StepInfo

log = logging.getLogger(__name__)


def publish_event(pipe: Any, keys: Keys, job_id: str, event: EventType, data: dict[str, Any]) -> None:
    """Queue one event on the job's stream (on a pipeline or a client)."""
    pipe.xadd(
        keys.events(job_id),
        {"event": event.value, "data": json.dumps(data)},
        maxlen=EVENTS_MAXLEN,
        approximate=True,
    )


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # compress_level 1: previews are replaced every few iterations; speed beats size here.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def thinned(frames: list[bytes], max_frames: int, max_bytes: int) -> list[bytes]:
    """Every other frame, always keeping the newest, until at most `max_frames` and `max_bytes` are
    left (or only two frames, the first and the newest)."""
    kept = frames
    while len(kept) > 2 and (len(kept) > max_frames or sum(map(len, kept)) > max_bytes):
        kept = kept[::2] if len(kept) % 2 else [*kept[:-1:2], kept[-1]]
    return kept


class FrameWriter:
    """Encodes and stores preview frames on its own thread; when it falls behind, the newest frame wins."""

    def __init__(self, client: redis.Redis, keys: Keys, job_id: str, settings: Settings) -> None:
        self._client = client
        self._keys = keys
        self._job_id = job_id
        self._settings = settings
        self._pending: queue.Queue[tuple[Image.Image, int] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._closed = False
        self._frames_bytes: int | None = None  # bytes in the time-lapse list; read once on a resumed job
        self._thread = threading.Thread(target=self._run, name=f"frames-{job_id[:8]}", daemon=True)
        self._thread.start()

    def submit(self, image: Image.Image, iteration: int) -> None:
        if self._error is not None:
            raise RuntimeError("storing preview frames failed") from self._error
        try:
            self._pending.put_nowait((image, iteration))
        except queue.Full:
            # Replace the frame still waiting: only the latest picture matters to a watcher.
            with contextlib.suppress(queue.Empty):
                self._pending.get_nowait()
            self._pending.put_nowait((image, iteration))

    def close(self) -> None:
        """Store whatever is pending, then stop; raises if storing any frame failed. Idempotent."""
        if not self._closed:
            self._closed = True
            self._pending.put(None)
            self._thread.join()
        if self._error is not None:
            raise RuntimeError("storing preview frames failed") from self._error

    def _run(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                return
            image, iteration = item
            try:
                self.store(encode_png(image), iteration)
            except Exception as exc:  # surfaced to the loop by submit()/close()
                log.exception("storing a preview frame of job %s failed", self._job_id)
                self._error = exc
                return

    def store(self, png: bytes, iteration: int) -> None:
        keys, job_id, ttl = self._keys, self._job_id, self._settings.frame_ttl_s
        frames_key = keys.frames(job_id)
        pipe = self._client.pipeline(transaction=True)
        pipe.set(keys.frame(job_id), png, ex=ttl)
        pipe.rpush(frames_key, png)
        pipe.expire(frames_key, ttl)
        pipe.hincrby(keys.job(job_id), "frame_seq", 1)
        _, length, _, seq = pipe.execute()
        publish_event(self._client, keys, job_id, EventType.FRAME, {"seq": seq, "iteration": iteration})
        if self._frames_bytes is None:
            # A job resumed on this worker may already have frames from the one before.
            earlier = self._client.lrange(frames_key, 0, -1) if length > 1 else [png]
            self._frames_bytes = sum(map(len, earlier))
        else:
            self._frames_bytes += len(png)
        settings = self._settings
        if length > settings.timelapse_max_frames or self._frames_bytes > settings.timelapse_max_bytes:
            self._thin_out(frames_key)

    def _thin_out(self, frames_key: str) -> None:
        # Keep every other frame (and always the newest), so the time-lapse still spans the whole job;
        # again while the list is over its byte cap, down to the first and the newest frame.
        frames = self._client.lrange(frames_key, 0, -1)
        kept = thinned(frames, self._settings.timelapse_max_frames, self._settings.timelapse_max_bytes)
        self._frames_bytes = sum(map(len, kept))
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(frames_key)
        pipe.rpush(frames_key, *kept)
        pipe.expire(frames_key, self._settings.frame_ttl_s)
        pipe.execute()


class ProgressReporter:
    """The engine's `on_step`: progress every iteration, a frame every `preview_every` iterations, a
    "progress" webhook at most every `webhook_progress_interval_s`; it also watches the job's deadline."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        job_id: str,
        settings: Settings,
        preview_every: int,
        worker: str,
        *,
        options: CallerOptions | None = None,
        notify: Notify | None = None,
        stages: list[str] | None = None,
    ) -> None:
        self._client = client
        self._stages = stages or [""]  # each stage's text, for progress events
        self._keys = keys
        self._job_id = job_id
        self._worker = worker
        self._preview_every = preview_every
        self._options = options or CallerOptions()
        self._notify = notify if wants(self._options, WebhookEvent.PROGRESS) else None
        self._progress_every_s = settings.webhook_progress_interval_s
        self._progress_sent: float | None = None  # time.monotonic() of the last progress webhook
        self.frames = FrameWriter(client, keys, job_id, settings)
        self.cancel_reason: CancelReason | None = None
        self._note_cancel(bool(client.exists(keys.cancel(job_id))))
        self.handback_requested = bool(client.exists(keys.shutdown(worker)))

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_reason is not None

    def _note_cancel(self, flagged: bool) -> None:
        """A client's cancel flag, else a deadline that has passed, asks the job to stop."""
        deadline = self._options.deadline_at
        if flagged:
            self.cancel_reason = CancelReason.CLIENT
        elif deadline is not None and time.time() >= deadline:
            self.cancel_reason = CancelReason.DEADLINE

    def __call__(self, info: StepInfo) -> None:
        keys, job_id = self._keys, self._job_id
        losses = prompt_losses(info)
        fields: dict[str, str | int] = {
            "iteration": info.iteration,
            "loss": f"{info.loss:.6g}",
            "its": f"{info.its:.4g}",
            "stage": info.stage,
            "losses": json.dumps(losses),
        }
        if info.converged:
            fields["stopped_at"] = info.iteration
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(keys.job(job_id), mapping=fields)
        event = {
            "iteration": info.iteration,
            "iterations": info.total,
            "loss": info.loss,
            "its": info.its,
            "stage": {"index": info.stage, "count": info.stages, "text": self._stage_text(info.stage)},
            "losses": losses,
        }
        publish_event(pipe, keys, job_id, EventType.PROGRESS, event)
        pipe.exists(keys.cancel(job_id))
        pipe.exists(keys.shutdown(self._worker))
        *_, cancel, shutdown = pipe.execute()
        self._note_cancel(bool(cancel))
        self.handback_requested = bool(shutdown)
        if self._notify is not None:
            now = time.monotonic()
            if self._progress_sent is None or now - self._progress_sent >= self._progress_every_s:
                self._progress_sent = now
                announce(self._notify, job_id, self._options, WebhookEvent.PROGRESS, info.iteration)
        # The first frame comes at once, so a watcher sees the picture start to form; the last of each stage
        # (and of an early stop) too, so that the time-lapse tells a schedule's whole story.
        due = (
            info.iteration == 1
            or info.iteration % self._preview_every == 0
            or info.iteration == info.total
            or info.stage_end
            or info.converged
        )
        if due:
            self.frames.submit(info.image(), info.iteration)

    def should_cancel(self) -> bool:
        return self.cancel_requested

    def _stage_text(self, stage: int) -> str:
        return self._stages[stage] if stage < len(self._stages) else ""


def prompt_losses(info: StepInfo) -> list[dict[str, Any]]:
    """The step's per-piece rows (shared.jobs.PromptLoss): text, weight, distance. A term is
    |w| * mean(sign(w) * distance), so the distance is the term over the weight."""
    return [
        {"text": spec.text, "weight": spec.weight, "distance": round(term / spec.weight, 6)}
        for spec, term in zip(info.specs, info.losses, strict=True)
    ]
