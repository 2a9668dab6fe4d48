"""Picture encodings both sides produce: the time-lapse of a job's preview frames."""

from __future__ import annotations

import io

from PIL import Image


def timelapse_webp(frames: list[bytes], frame_ms: int = 120, hold_last_ms: int = 1500) -> bytes:
    """Animated, lossless WebP of PNG frames; the last frame is held so the finished picture is seen."""
    if not frames:
        raise ValueError("a time-lapse needs at least one frame")
    images = [Image.open(io.BytesIO(frame)).convert("RGB") for frame in frames]
    durations = [frame_ms] * (len(images) - 1) + [hold_last_ms]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="WEBP",
        save_all=True,
        append_images=images[1:],
        duration=durations,
        loop=0,
        lossless=True,
    )
    return buffer.getvalue()
