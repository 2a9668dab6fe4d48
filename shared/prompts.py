"""The prompt syntax, `text:weight:stop` pieces joined by `|`, in stages joined by `^`, parsed without torch.

The API validates with it (so a bad prompt is a 422 before anything is queued) and the engine builds
its loss terms from it. Colons inside the text are allowed: only trailing pieces that look like
numbers are read as weight and stop, so "poster: a red fox" keeps its text intact
(while "a sign saying 10:30" reads 30 as a weight, as in the original notebooks).

A schedule (`a seed ^ a sprout ^ a tree`, nerdyrodent's `^`) paints its stages one after another, each
for `change_every` iterations; the last stage runs to the end (`stage_at`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUMBERISH = re.compile(r"^\s*[-+]?[\d.eE+\-]*(inf)?\s*$", re.IGNORECASE)
_PLAIN_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


class PromptSyntaxError(ValueError):
    """A prompt that cannot be parsed; the message says which piece and why."""


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """One weighted prompt: the loss term is weight * distance until the distance falls below stop."""

    text: str
    weight: float = 1.0
    stop: float = -math.inf


def _looks_numeric(piece: str) -> bool:
    return bool(piece.strip()) and bool(_NUMBERISH.match(piece)) and any(c.isdigit() for c in piece)


def _number_or_blank(part: str) -> bool:
    word = part.strip().lower().lstrip("+-")
    return not word or _looks_numeric(part) or word in {"inf", "infinity", "nan"}


def _says_something(text: str) -> bool:
    """Whether text holds more than colons, invisible characters and numbers after a leading colon.

    ":1:2:3", ":nan" and "::0.5" are weights (or malformed ones) without a text, while "poster: a red fox"
    and ": a red fox" are texts.
    """
    visible = "".join(c for c in text if c.isprintable() and not c.isspace())
    head, *rest = visible.split(":")
    return bool(head) or not all(_number_or_blank(part) for part in rest)


def _to_float(piece: str, what: str, whole: str) -> float:
    piece = piece.strip()
    if piece.lower() in {"-inf", "inf", "+inf"}:
        return float(piece)
    if not _PLAIN_NUMBER.match(piece):
        raise PromptSyntaxError(f"malformed {what} {piece!r} in prompt piece {whole!r}")
    return float(piece)


def parse_prompt(piece: str) -> PromptSpec:
    """Parse one `text[:weight[:stop]]` piece."""
    parts = piece.split(":")
    numbers: list[str] = []
    # Peel at most two numeric-looking pieces off the right: weight, then stop.
    while len(parts) > 1 and len(numbers) < 2 and _looks_numeric(parts[-1]):
        numbers.insert(0, parts.pop())
    text = ":".join(parts).strip()
    if not _says_something(text):
        raise PromptSyntaxError(f"prompt piece {piece.strip()!r} has no text")
    weight = _to_float(numbers[0], "weight", piece.strip()) if numbers else 1.0
    stop = _to_float(numbers[1], "stop", piece.strip()) if len(numbers) > 1 else -math.inf
    if not math.isfinite(weight):
        raise PromptSyntaxError(f"weight must be a finite number in prompt piece {piece.strip()!r}")
    if weight == 0:
        raise PromptSyntaxError(f"weight 0 in prompt piece {piece.strip()!r} would have no effect")
    return PromptSpec(text=text, weight=weight, stop=stop)


def parse_prompts(prompt: str) -> list[PromptSpec]:
    """Parse a whole `a:1|b:-0.5` prompt; empty pieces between bars are an error, not ignored."""
    if not prompt or not prompt.strip():
        raise PromptSyntaxError("prompt is empty")
    pieces = prompt.split("|")
    specs = []
    for index, piece in enumerate(pieces, start=1):
        if not piece.strip():
            raise PromptSyntaxError(f"prompt piece {index} is empty (two '|' in a row, or one at an end)")
        specs.append(parse_prompt(piece))
    if all(spec.weight < 0 for spec in specs):
        raise PromptSyntaxError("every prompt piece has a negative weight: there is nothing to paint towards")
    return specs


STAGE_SEPARATOR = "^"


def stage_texts(prompt: str) -> list[str]:
    """The text of each stage of a schedule, stripped; a prompt without `^` is one stage."""
    return [stage.strip() for stage in prompt.split(STAGE_SEPARATOR)]


def parse_schedule(prompt: str) -> list[list[PromptSpec]]:
    """Parse `stage ^ stage ^ ...`, each stage a whole `a:1|b:-0.5` prompt; an empty stage is an error."""
    if not prompt or not prompt.strip():
        raise PromptSyntaxError("prompt is empty")
    stages = stage_texts(prompt)
    if len(stages) == 1:
        return [parse_prompts(prompt)]
    schedule = []
    for index, stage in enumerate(stages, start=1):
        if not stage:
            raise PromptSyntaxError(f"stage {index} is empty (two '^' in a row, or one at an end)")
        try:
            schedule.append(parse_prompts(stage))
        except PromptSyntaxError as exc:
            raise PromptSyntaxError(f"stage {index}: {exc}") from None
    return schedule


def default_change_every(iterations: int, stages: int) -> int:
    """Iterations per stage when the job does not say: the iterations split evenly, the last stage taking
    the remainder (10 iterations in 3 stages: 3, 3 and 4)."""
    return max(1, iterations // max(1, stages))


def stage_at(step: int, change_every: int, stages: int) -> int:
    """The stage (0-based) that paints step `step` (0-based: the step that makes iteration step + 1)."""
    return min(step // change_every, stages - 1)
