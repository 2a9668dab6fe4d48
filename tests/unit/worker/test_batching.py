"""The memory budget that bounds a worker's batch, with the device's memory readings played by a fake."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from worker.batching import DeviceMemory, MemoryBudget

GIB = 2**30
SHAPE = ("tiny", 64, 64)


@dataclass
class FakeMemory(DeviceMemory):
    used: int = 0
    top: int = 0
    total: int = 10 * GIB

    def reset(self) -> None:
        self.top = self.used

    def in_use(self) -> int:
        return self.used

    def peak(self) -> int:
        return self.top

    def limit(self) -> int:
        return self.total


@pytest.fixture
def memory() -> FakeMemory:
    return FakeMemory(torch.device("cpu"), used=2 * GIB, top=2 * GIB)


def test_nothing_joins_before_a_step_of_the_shape_is_measured(memory: FakeMemory) -> None:
    budget = MemoryBudget(fraction=0.8, measure=memory)
    budget.start_batch()
    assert not budget.fits(SHAPE, 8)


def test_a_job_joins_while_the_measured_footprint_leaves_room(memory: FakeMemory) -> None:
    budget = MemoryBudget(fraction=0.8, measure=memory)
    budget.start_batch()  # 2 GiB of models
    budget.before_step()
    memory.top = 3 * GIB  # one step of 16 cutouts peaked 1 GiB above the models
    budget.after_step(SHAPE, 16)
    assert budget.per_cutout[SHAPE] == GIB // 16
    assert budget.fits(SHAPE, 16)  # 3 + 1 <= 8 GiB
    assert budget.fits(SHAPE, 5 * 16)  # 3 + 5 = 8 GiB, exactly the limit
    assert not budget.fits(SHAPE, 5 * 16 + 1)
    assert not budget.fits(("tiny", 128, 128), 1)  # another shape is measured on its own


def test_a_step_that_needs_no_memory_above_the_base_counts_as_measured(memory: FakeMemory) -> None:
    # On CPU the resident set can already hold what a step needs (freed by earlier work, kept by the
    # allocator): the step's footprint above the base is 0, and jobs of that shape may still join.
    budget = MemoryBudget(fraction=0.8, measure=memory)
    budget.start_batch()
    budget.before_step()
    budget.after_step(SHAPE, 8)  # the peak stayed at the base
    assert budget.per_cutout[SHAPE] == 0
    assert budget.fits(SHAPE, 8)
    budget.before_step()
    memory.top = 3 * GIB  # a later, larger step does need more: the footprint grows to it
    budget.after_step(SHAPE, 16)
    assert budget.per_cutout[SHAPE] == GIB // 16


def test_the_largest_footprint_seen_is_kept(memory: FakeMemory) -> None:
    budget = MemoryBudget(fraction=0.5, measure=memory)
    budget.start_batch()
    for peak, cutouts in ((3 * GIB, 16), (4 * GIB, 16), (3 * GIB, 32)):
        budget.before_step()
        memory.top = peak
        budget.after_step(SHAPE, cutouts)
    assert budget.per_cutout[SHAPE] == 2 * GIB // 16
    memory.top = 3 * GIB
    assert budget.fits(SHAPE, 16) and not budget.fits(SHAPE, 17)  # 3 + 2 <= 5 GiB


def test_the_real_cpu_readings_are_sane() -> None:
    memory = DeviceMemory(torch.device("cpu"))
    assert 0 < memory.in_use() <= memory.peak() * 2 and memory.in_use() < memory.limit()
