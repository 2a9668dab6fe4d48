"""Builders for every Redis key the service uses; nothing else spells a key by hand.

All keys start with the configured prefix so that deployments and test runs can share a server.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (`Settings.redis_prefix`)."""

    prefix: str = "artgen"

    # --- per job ---------------------------------------------------------------------------------
    def job(self, job_id: str) -> str:
        """Hash: the job record (parameters, state, progress, timings)."""
        return f"{self.prefix}:job:{job_id}"

    def frame(self, job_id: str) -> str:
        """String: PNG bytes of the latest intermediate frame."""
        return f"{self.prefix}:job:{job_id}:frame"

    def frames(self, job_id: str) -> str:
        """List: PNG bytes of the preview frames kept for the time-lapse, oldest first."""
        return f"{self.prefix}:job:{job_id}:frames"

    def result(self, job_id: str) -> str:
        """String: PNG bytes of the final picture."""
        return f"{self.prefix}:job:{job_id}:result"

    def timelapse(self, job_id: str) -> str:
        """String: the animated WebP of a finished job's frames, made on first request."""
        return f"{self.prefix}:job:{job_id}:timelapse"

    def init_image(self, job_id: str) -> str:
        """String: the uploaded start picture (kept out of broker messages)."""
        return f"{self.prefix}:job:{job_id}:init"

    def image_prompt(self, job_id: str, index: int) -> str:
        """String: an uploaded image prompt."""
        return f"{self.prefix}:job:{job_id}:image_prompt:{index}"

    def cancel(self, job_id: str) -> str:
        """String flag: set by the API, checked by the loop every iteration."""
        return f"{self.prefix}:job:{job_id}:cancel"

    def events(self, job_id: str) -> str:
        """Stream: progress / frame / finished events for SSE clients."""
        return f"{self.prefix}:job:{job_id}:events"

    def lock(self, job_id: str) -> str:
        """String with TTL: held by the one worker running the job, refreshed as a heartbeat."""
        return f"{self.prefix}:job:{job_id}:lock"

    def checkpoint(self, job_id: str) -> str:
        """String: serialized latent and optimiser state, for resuming after a crash."""
        return f"{self.prefix}:job:{job_id}:checkpoint"

    def reaped(self, job_id: str) -> str:
        """String with TTL: marks a job another worker re-queued after its worker died (once per death)."""
        return f"{self.prefix}:job:{job_id}:reaped"

    def webhooks(self, job_id: str) -> str:
        """Hash: `<webhook id>:<field>` -> one event's delivery: status, attempts, body, owning task."""
        return f"{self.prefix}:job:{job_id}:webhooks"

    def deliveries(self, job_id: str) -> str:
        """List: JSON of every webhook delivery attempt of the job, oldest first."""
        return f"{self.prefix}:job:{job_id}:deliveries"

    def every_key_of_job(self, job_id: str, image_prompt_count: int) -> list[str]:
        """Every key named after one job, for DELETE (index entries are members, removed apart)."""
        return [
            *self.all_for_job(job_id),
            *(self.image_prompt(job_id, index) for index in range(image_prompt_count)),
            self.lock(job_id),
            self.reaped(job_id),
            self.webhooks(job_id),
            self.deliveries(job_id),
        ]

    def all_for_job(self, job_id: str) -> list[str]:
        """Every fixed key of one job (image prompts aside), for TTLs and clean-up."""
        return [
            self.job(job_id),
            self.frame(job_id),
            self.frames(job_id),
            self.result(job_id),
            self.timelapse(job_id),
            self.init_image(job_id),
            self.cancel(job_id),
            self.events(job_id),
            self.checkpoint(job_id),
        ]

    def bytes_for_job(self, job_id: str, image_prompt_count: int = 0) -> list[str]:
        """The keys of one job that hold pictures or other bulk bytes (the result store keeps the ones
        clients download); they leave Redis soon after the job ends."""
        return [
            self.frame(job_id),
            self.frames(job_id),
            self.result(job_id),
            self.timelapse(job_id),
            self.init_image(job_id),
            self.checkpoint(job_id),
            *(self.image_prompt(job_id, index) for index in range(image_prompt_count)),
        ]

    def kept_for_job(self, job_id: str) -> list[str]:
        """The small keys of one job that live as long as its record: the record, events, cancel flag."""
        return [self.job(job_id), self.cancel(job_id), self.events(job_id)]

    # --- indexes ---------------------------------------------------------------------------------
    def recent(self) -> str:
        """Sorted set: every job id, scored by creation time."""
        return f"{self.prefix}:jobs:recent"

    def owner_jobs(self, owner: str) -> str:
        """Sorted set: one API key's job ids (owner is a hash of the key), scored by creation time."""
        return f"{self.prefix}:owner:{owner}:jobs"

    def queued(self, queue: str) -> str:
        """Sorted set: job ids waiting in one queue, scored by enqueue time (for queue positions)."""
        return f"{self.prefix}:queued:{queue}"

    def deadlines(self) -> str:
        """Sorted set: ids of jobs with a deadline, scored by it (unix seconds), for the deadline sweep."""
        return f"{self.prefix}:jobs:deadlines"

    def idempotency(self, scope: str, key_hash: str) -> str:
        """String with TTL: `fingerprint` while the first request runs, then `fingerprint:job id`."""
        return f"{self.prefix}:idem:{scope}:{key_hash}"

    def sweep_lock(self) -> str:
        """String with TTL: held by the one process sweeping old results at a time."""
        return f"{self.prefix}:results:sweep"

    def rate(self, owner: str, window: int) -> str:
        """Counter: requests by one caller in one rate-limit window."""
        return f"{self.prefix}:rate:{owner}:{window}"

    def running(self) -> str:
        """Set: ids of jobs a worker has started and not finished (checked for dead workers)."""
        return f"{self.prefix}:jobs:running"

    def shutdown(self, worker: str) -> str:
        """String flag: this worker is shutting down; its running jobs checkpoint and go back to the queue."""
        return f"{self.prefix}:worker:{worker}:shutdown"

    def stats(self) -> str:
        """Hash: finished-job counts and duration / queue-wait histograms, over all workers."""
        return f"{self.prefix}:stats"

    def workers(self) -> str:
        """Hash: worker name -> last heartbeat (unix seconds) and models served."""
        return f"{self.prefix}:workers"
