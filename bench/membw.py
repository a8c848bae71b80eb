"""The machine's memory bandwidth as torch sees it: the ceiling the scale row's weight streaming is compared with.

Read: a sum over a 1 GB float32 tensor (bytes read / time). Copy: a 1 GB tensor copied into another (bytes read +
written / time). Best of 10 repetitions (the machine may be shared), with all cores (what the nodes share).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

GB = 1e9


@dataclass(frozen=True)
class Bandwidth:
    read_gbps: float  # sum(): bytes read / s
    copy_gbps: float  # copy_(): bytes read + written / s
    buffer_bytes: int
    threads: int

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def _best_s(fn: Callable[[], object], repeats: int) -> float:
    fn()  # touches every page once
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_bandwidth(buffer_bytes: int = int(GB), threads: int | None = None, repeats: int = 10) -> Bandwidth:
    import torch

    threads = threads or os.cpu_count() or 1
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(buffer_bytes // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        read_s = _best_s(lambda: src.sum(), repeats)
        copy_s = _best_s(lambda: dst.copy_(src), repeats)
    finally:
        torch.set_num_threads(before)
    n = src.numel() * 4
    return Bandwidth(read_gbps=n / read_s / GB, copy_gbps=2 * n / copy_s / GB, buffer_bytes=n, threads=threads)


if __name__ == "__main__":
    print(measure_bandwidth().to_json())  # noqa: T201
