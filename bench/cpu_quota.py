"""A process held to a share of the CPU by a cgroup (a slower node on the same machine): v1's cpu controller
(``cpu.cfs_quota_us``) or v2's ``cpu.max``, whichever this machine has writable; CpuQuotaUnavailable (with the
reason) where neither is. The group is removed when the quota is lifted."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CpuQuotaUnavailable(RuntimeError):
    """No writable cgroup CPU controller here."""


@dataclass
class CpuQuota:
    group: Path
    cores: float
    root_procs: Path  # where the process goes back to

    @classmethod
    def apply(cls, pid: int, cores: float, name: str = "shardline-bench-slow") -> CpuQuota:
        """Puts ``pid`` (all its threads) in a new group allowed ``cores`` CPUs' worth of time per period."""
        quota = max(1000, int(cores * PERIOD_US))
        if (V1 / "cpu.cfs_quota_us").is_file() and os.access(V1, os.W_OK):
            group = V1 / name
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
            root = V1 / "cgroup.procs"
        elif "cpu" in (V2 / "cgroup.controllers").read_text(errors="ignore").split() if (
                V2 / "cgroup.controllers").is_file() else False:
            group = V2 / name
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            root = V2 / "cgroup.procs"
        else:
            raise CpuQuotaUnavailable("no writable cgroup cpu controller (v1 /sys/fs/cgroup/cpu or v2 cpu.max)")
        (group / "cgroup.procs").write_text(str(pid))
        return cls(group, cores, root)

    def lift(self) -> None:
        """Moves the group's processes back and removes it."""
        procs = self.group / "cgroup.procs"
        for pid in procs.read_text().split() if procs.is_file() else []:
            try:
                self.root_procs.write_text(pid)
            except OSError:
                pass  # it exited meanwhile
        try:
            self.group.rmdir()
        except OSError:
            pass
