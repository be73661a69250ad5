"""Shared fixtures: the tiny offline models, built once per test session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines import ModelComponents, load_model
from pipelines.synthetic import moving_pattern


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def tiny() -> ModelComponents:
    """The `tiny` preset on the CPU in float32. Shared: tests must not modify its modules."""
    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_lora() -> ModelComponents:
    return load_model("tiny-lcm-lora", device="cpu")


@pytest.fixture
def frame() -> np.ndarray:
    return moving_pattern(128, 64, 5)
