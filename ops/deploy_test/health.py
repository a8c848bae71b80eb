"""HEALTHCHECKs run on their schedule. A Docker engine runs each container's healthcheck every `interval` itself;
podman 4.3 hands that to systemd timers, and a machine without systemd ("unable to get systemd connection to add
healthchecks") never runs them. The pump does what the timers would: `podman healthcheck run` for every running
container of the project that has a healthcheck, every `interval` from its start. The checks themselves are the
images' and the compose file's own; podman keeps the status (start period and retries included) that
`docker compose up --wait` and `ps` read."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from ops.deploy_test.runtime import PROJECT, log, podman

NS_PER_S = 1_000_000_000


@dataclass
class Schedule:
    """When a container's next check is due (reset when the container restarts: a new StartedAt)."""

    started_at: str
    interval_s: float
    next_due: float
    seen_at: float  # when the pump first saw this start (within a period of it)


@dataclass
class HealthPump:
    period_s: float = 1.0
    schedules: dict[str, Schedule] = field(default_factory=dict)
    healthy_since: dict[str, float] = field(default_factory=dict)  # container name -> first healthy (monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-pump", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - a failed round is logged and tried again next period
                log(f"health pump: {e}")

    def tick(self) -> None:
        now = time.monotonic()
        for name, started_at, interval_s in self.running_with_checks():
            schedule = self.schedules.get(name)
            if schedule is None or schedule.started_at != started_at:
                schedule = self.schedules[name] = Schedule(started_at, interval_s, now + interval_s, now)
                self.healthy_since.pop(name, None)
            if now < schedule.next_due:
                continue
            schedule.next_due = now + interval_s
            result = podman("healthcheck", "run", name, check=False, capture=True, timeout=120)
            if result.returncode == 0 and name not in self.healthy_since:
                self.healthy_since[name] = time.monotonic()

    def healthy_since_start(self, name: str, started_at: str) -> bool:
        """A check passed since the container's start at ``started_at`` (its State.StartedAt)."""
        schedule = self.schedules.get(name)
        return schedule is not None and schedule.started_at == started_at and name in self.healthy_since

    def seconds_to_healthy(self, name: str) -> float | None:
        """From the container's (latest) start to its first passing check, or None while it has none."""
        if name not in self.healthy_since or name not in self.schedules:
            return None
        return self.healthy_since[name] - self.schedules[name].seen_at

    def running_with_checks(self) -> list[tuple[str, str, float]]:
        """(name, StartedAt, interval in s) of the project's running containers that have a healthcheck."""
        ids = podman("ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
                     capture=True, timeout=60).stdout.split()
        if not ids:
            return []
        out = []
        for c in json.loads(podman("container", "inspect", *ids, capture=True, check=False, timeout=60).stdout or "[]"):
            check = (c.get("Config") or {}).get("Healthcheck") or {}
            if check.get("Test") and check["Test"][0] != "NONE" and c["State"]["Status"] == "running":
                interval = (check.get("Interval") or 30 * NS_PER_S) / NS_PER_S
                out.append((c["Name"].lstrip("/"), c["State"]["StartedAt"], interval))
        return out
