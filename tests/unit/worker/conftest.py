"""Fixtures for the worker's unit tests: the `tiny` preset built once per session."""

from __future__ import annotations

import pytest

from worker.models import TINY_SEED, LoadedModels, build_random


@pytest.fixture(scope="session")
def tiny_models() -> LoadedModels:
    return build_random("tiny", "cpu", seed=TINY_SEED)
