"""The memory-bandwidth probe of the scale row (a small buffer here)."""

from __future__ import annotations

import torch

from bench.membw import measure_bandwidth


def test_bandwidth_figures_are_positive_and_torch_threads_are_restored() -> None:
    before = torch.get_num_threads()
    bw = measure_bandwidth(buffer_bytes=8 * 2**20, threads=1, repeats=2)
    assert bw.read_gbps > 0 and bw.copy_gbps > 0
    assert (bw.buffer_bytes, bw.threads) == (8 * 2**20, 1)
    assert set(bw.to_json()) == {"read_gbps", "copy_gbps", "buffer_bytes", "threads"}
    assert torch.get_num_threads() == before
