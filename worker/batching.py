"""How many jobs a worker may paint together: the memory a batch needs, measured as it runs.

A batch grows one job at a time. Each step's peak memory above what the worker held before the batch
started (models, caches) is divided by the cutouts stepped, giving a per-cutout footprint; a job joins
only if the memory in use plus its own cutouts' footprint stays under `fraction` of the device's
memory. Until a step of this model and picture size has been measured, nothing joins: the first step
runs with the jobs already there, and its measurement decides the rest. Footprints are kept per
(model, width, height) for the life of the process, so later batches of the same shape start full.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Shape = tuple[str, int, int]  # model, width, height


class CudaMemoryApi(Protocol):
    """The caching allocator's readings that `DeviceMemory` uses: `torch.cuda` itself, or in tests a
    simulated card (no test needs a GPU, and none patches `torch.cuda`)."""

    def memory_allocated(self, device: torch.device) -> int: ...

    def max_memory_allocated(self, device: torch.device) -> int: ...

    def reset_peak_memory_stats(self, device: torch.device) -> None: ...

    def mem_get_info(self, device: torch.device) -> tuple[int, int]: ...


def _read_meminfo_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class DeviceMemory:
    """Reads of one device's memory: bytes in use by this process, its peak since `reset`, and the limit.

    On CUDA: the caching allocator's allocated bytes and peak, and the card's total memory, read through
    `cuda` (None: `torch.cuda`). On CPU: the process's resident set (it also stands for the peak: freed
    activations mostly stay resident) and the resident set plus what the system still has available.
    """

    device: torch.device
    cuda: CudaMemoryApi | None = None

    def _cuda(self) -> CudaMemoryApi:
        if self.cuda is not None:
            return self.cuda
        import torch

        return torch.cuda

    def reset(self) -> None:
        if self.device.type == "cuda":
            self._cuda().reset_peak_memory_stats(self.device)

    def in_use(self) -> int:
        if self.device.type == "cuda":
            return int(self._cuda().memory_allocated(self.device))
        return _rss()

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(self._cuda().max_memory_allocated(self.device))
        return _rss()

    def limit(self) -> int:
        if self.device.type == "cuda":
            return int(self._cuda().mem_get_info(self.device)[1])
        return _rss() + _read_meminfo_available()


@dataclass
class MemoryBudget:
    """Decides whether one more job fits in a batch, from measured per-cutout footprints."""

    fraction: float
    measure: DeviceMemory
    per_cutout: dict[Shape, int] = field(default_factory=dict)
    _base: int | None = None

    @classmethod
    def for_device(cls, device: torch.device, fraction: float) -> MemoryBudget:
        return cls(fraction=fraction, measure=DeviceMemory(device))

    def start_batch(self) -> None:
        """Note the memory held before the batch's first step (models, caches, nothing per job yet)."""
        self._base = self.measure.in_use()

    def before_step(self) -> None:
        self.measure.reset()

    def after_step(self, shape: Shape, cutouts: int) -> None:
        """Record what a step of `cutouts` cutouts (all jobs together) needed above the base."""
        if self._base is None or cutouts <= 0:
            return
        used = max(0, self.measure.peak() - self._base)
        per_cutout = -(-used // cutouts)  # ceiling: never under-estimate
        # A step may need nothing above the base: on CPU the resident set already holds memory that earlier
        # work freed (the allocator keeps it), and the step fits in it. That is a measurement too: without
        # it the shape would stay unmeasured and nothing would ever join its batches in this process.
        if shape not in self.per_cutout or per_cutout > self.per_cutout[shape]:
            self.per_cutout[shape] = per_cutout

    def fits(self, shape: Shape, cutouts: int) -> bool:
        """Whether a job of `cutouts` cutouts can join a running batch of this shape."""
        per_cutout = self.per_cutout.get(shape)
        if per_cutout is None:
            return False  # not measured yet: the first step decides
        need = per_cutout * cutouts
        return self.measure.peak() + need <= self.fraction * self.measure.limit()


_budgets: dict[tuple[str, float], MemoryBudget] = {}


def budget_for(device: torch.device, fraction: float) -> MemoryBudget:
    """The process's budget for a device (footprints measured by one batch serve the next)."""
    key = (str(device), fraction)
    if key not in _budgets:
        _budgets[key] = MemoryBudget.for_device(device, fraction)
    return _budgets[key]
