"""Job statistics aggregated across all workers, kept in one Redis hash (`Keys.stats`).

Workers add to it when a job ends; the API turns it into Prometheus metrics at scrape time, so the
figures cover every worker without each one running a metrics server of its own. Histogram buckets
are stored as plain (non-cumulative) counts per bucket; readers make them cumulative.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

# Seconds. Jobs run from seconds (small, on a GPU) to an hour (the default hard limit).
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
HISTOGRAMS = {"duration": DURATION_BUCKETS, "queue_wait": QUEUE_WAIT_BUCKETS}
# What one webhook delivery attempt came to: delivered (2xx); retrying (failed, tried again later); failed
# (the last attempt failed); refused (the address is not allowed); dropped (the job was deleted).
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed", "refused", "dropped")


def _bucket_label(buckets: tuple[float, ...], value: float) -> str:
    index = bisect.bisect_left(buckets, value)
    return "+Inf" if index == len(buckets) else repr(buckets[index])


def record_finished(
    pipe: Any, key: str, model: str, state: str, run_s: float | None, wait_s: float | None, iterations: int
) -> None:
    """Queue the HINCRBY/HINCRBYFLOAT commands that count one finished job (on a pipeline)."""
    pipe.hincrby(key, f"finished|{model}|{state}", 1)
    pipe.hincrby(key, f"iterations|{model}", iterations)
    for name, value in (("duration", run_s), ("queue_wait", wait_s)):
        if value is None or not math.isfinite(value) or value < 0:
            continue
        pipe.hincrby(key, f"{name}|{model}|{_bucket_label(HISTOGRAMS[name], value)}", 1)
        pipe.hincrbyfloat(key, f"{name}_sum|{model}", value)


def webhook_field(outcome: str) -> str:
    """The stats hash's field counting webhook delivery attempts of one outcome (one of WEBHOOK_OUTCOMES)."""
    return f"webhook|{outcome}"


def record_webhook(pipe: Any, key: str, outcome: str) -> None:
    """Count one webhook delivery attempt by its outcome."""
    pipe.hincrby(key, webhook_field(outcome), 1)


@dataclass
class Histogram:
    """Cumulative bucket counts, as Prometheus wants them."""

    buckets: list[tuple[str, float]] = field(default_factory=list)
    total: float = 0.0

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0


@dataclass
class JobStats:
    finished: dict[tuple[str, str], float] = field(default_factory=dict)  # (model, state) -> count
    iterations: dict[str, float] = field(default_factory=dict)  # model -> iterations done
    histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # (name, model)
    webhooks: dict[str, float] = field(default_factory=dict)  # outcome -> delivery attempts


def read_stats(raw: dict[Any, Any]) -> JobStats:
    """Decode the stats hash (an HGETALL reply)."""
    fields = {
        (k.decode() if isinstance(k, bytes) else k): float(v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    stats = JobStats()
    per_bucket: dict[tuple[str, str], dict[str, float]] = {}
    sums: dict[tuple[str, str], float] = {}
    for name, value in fields.items():
        kind, _, rest = name.partition("|")
        if kind == "finished":
            model, _, state = rest.partition("|")
            stats.finished[(model, state)] = value
        elif kind == "iterations":
            stats.iterations[rest] = value
        elif kind == "webhook":
            stats.webhooks[rest] = value
        elif kind in HISTOGRAMS:
            model, _, bound = rest.partition("|")
            per_bucket.setdefault((kind, model), {})[bound] = value
        elif kind.endswith("_sum") and kind.removesuffix("_sum") in HISTOGRAMS:
            sums[(kind.removesuffix("_sum"), rest)] = value
    for (kind, model), counts in per_bucket.items():
        running = 0.0
        cumulative = []
        for bound in [*map(repr, HISTOGRAMS[kind]), "+Inf"]:
            running += counts.get(bound, 0.0)
            cumulative.append((bound, running))
        stats.histograms[(kind, model)] = Histogram(cumulative, sums.get((kind, model), 0.0))
    return stats
