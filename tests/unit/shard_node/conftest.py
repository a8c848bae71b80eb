"""Fixtures of the shard node's unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """Tiny matmuls are dominated by intra-op thread hand-offs: one thread is ~3x faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
