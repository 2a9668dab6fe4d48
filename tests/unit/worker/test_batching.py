"""The memory budget that bounds a worker's batch: readings played by a fake, and the CUDA reader itself on
a simulated card with GPU-sized numbers (an H200, an H100, the original API's T4)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from shared.jobs import JobState
from worker.admission import AdmissionPolicy, BatchView, Candidate, Verdict
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


# --- the CUDA reader, on a simulated card ------------------------------------------------------------

MIB = 2**20
H200_MIB = 143771  # what nvidia-smi reports for an H200
T4_MIB = 15360


class SimulatedCard:
    """A GPU's caching allocator as `torch.cuda` reports it: bytes allocated, their peak since the last
    reset, and (free, total). The test allocates and frees; the reader under test only reads."""

    def __init__(self, index: int, total: int) -> None:
        self.index, self.total = index, total
        self.allocated = self.top = 0

    def _check(self, device: torch.device) -> None:
        assert device.type == "cuda" and device.index == self.index, f"read {device}, not this card"

    def malloc(self, size: int) -> None:
        self.allocated += size
        self.top = max(self.top, self.allocated)

    def free(self, size: int) -> None:
        self.allocated -= size

    def memory_allocated(self, device: torch.device) -> int:
        self._check(device)
        return self.allocated

    def max_memory_allocated(self, device: torch.device) -> int:
        self._check(device)
        return self.top

    def reset_peak_memory_stats(self, device: torch.device) -> None:
        self._check(device)
        self.top = self.allocated

    def mem_get_info(self, device: torch.device) -> tuple[int, int]:
        self._check(device)
        return self.total - self.allocated, self.total


def _gpu_budget(total_mib: int, fraction: float = 0.8) -> tuple[MemoryBudget, SimulatedCard]:
    card = SimulatedCard(1, total_mib * MIB)
    return MemoryBudget(fraction, DeviceMemory(torch.device("cuda", 1), cuda=card)), card


def test_the_cuda_reader_reads_the_allocator_of_its_own_card() -> None:
    budget, card = _gpu_budget(H200_MIB)
    reader = budget.measure
    card.malloc(1500 * MIB)
    assert reader.in_use() == reader.peak() == 1500 * MIB
    card.malloc(6 * GIB)
    card.free(6 * GIB)
    assert reader.in_use() == 1500 * MIB and reader.peak() == 1500 * MIB + 6 * GIB
    reader.reset()
    assert reader.peak() == 1500 * MIB
    assert reader.limit() == H200_MIB * MIB  # the card's total, not what is free right now
    other = DeviceMemory(torch.device("cuda", 0), cuda=card)
    with pytest.raises(AssertionError, match="not this card"):
        other.in_use()


def _first_step(budget: MemoryBudget, card: SimulatedCard, models: int, per_job: int, cutn: int) -> None:
    """The worker's first batch step of one job, as the runner brackets it."""
    card.malloc(models)
    budget.start_batch()
    budget.before_step()
    card.malloc(per_job)  # activations of the step, freed when it ends
    card.free(per_job)
    budget.after_step(("imagenet-16384", 512, 512), cutn)


@pytest.mark.parametrize(
    ("card_mib", "joining"),
    # Footprints of the size the GPU run will measure (1.5 GiB of models, 6 GiB per job of 64 cutouts at
    # 512x512; illustrative, not measured). 80% of an H200 holds 17 jobs beside the first (a batch of 8
    # takes 7 of them), of an H100 9, of the original API's T4 none: 7.5 + 6 GiB > 12 GiB.
    [(H200_MIB, 17), (80 * 1024, 9), (T4_MIB, 0)],
    ids=["h200", "h100-80gb", "t4"],
)
def test_jobs_join_as_far_as_the_cards_memory_allows(card_mib: int, joining: int) -> None:
    budget, card = _gpu_budget(card_mib)
    shape = ("imagenet-16384", 512, 512)
    assert not budget.fits(shape, 64)  # nothing joins before the first step is measured
    _first_step(budget, card, models=1536 * MIB, per_job=6 * GIB, cutn=64)
    assert budget.per_cutout[shape] == 6 * GIB // 64
    fits = [budget.fits(shape, 64 * n) for n in range(1, 20)]
    assert fits == [n <= joining for n in range(1, 20)]
    # What the admission policy decides for the next job in the queue, with the budget's answer.
    policy = AdmissionPolicy(batch_size=8, soft_time_limit_s=3600)
    batch = BatchView(512, 512, jobs=1, elapsed_s=1.0, step_s=0.1)
    candidate = Candidate("next", JobState.QUEUED.value, 512, 512, 64, 100)
    verdict = policy.judge(batch, candidate, budget.fits(shape, 64))
    assert verdict is (Verdict.JOIN if joining else Verdict.STOP)
