"""Process plumbing: children that die with the bench, peak RSS from /proc, JSON workers."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.children import Child as LauncherChild
from ops.children import die_with_parent

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def log(msg: str) -> None:
    """Progress line on stdout, flushed at once (make shows it as it goes)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: T201 - progress


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS of a process in bytes (empty when it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def self_vm_hwm() -> int:
    return proc_status(os.getpid()).get("VmHWM", 0)


@dataclass
class Child(LauncherChild):
    """The launcher's child process (own log file, dies with its parent) plus a pid and a stop of its own."""

    def start(self, env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if env is not None:
            self.env = env
        super().start()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.alive:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def stop_all(children: list[Child], timeout_s: float = 10.0) -> None:
    for c in reversed(children):
        if c.alive:
            assert c.process is not None
            c.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for c in children:
        if c.process is None:
            continue
        try:
            c.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.process.kill()
            c.process.wait()


class WorkerError(RuntimeError):
    pass


def worker_main(worker: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The command line of a JSON worker: ``--spec FILE --out FILE``."""
    p = argparse.ArgumentParser()
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    Path(args.out).write_text(json.dumps(worker(json.loads(Path(args.spec).read_text()))))


def run_worker(module: str, spec: dict[str, Any], work_dir: Path, name: str, timeout_s: float) -> dict[str, Any]:
    """Runs ``python -m MODULE --spec S --out O`` in its own process (so its RSS is its own); returns O's JSON.

    The worker's stdout/stderr go to work_dir/NAME.log; lines starting with "progress:" are echoed here.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = work_dir / f"{name}.spec.json", work_dir / f"{name}.out.json"
    log_path = work_dir / f"{name}.log"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    argv = [PY, "-u", "-m", module, "--spec", str(spec_path), "--out", str(out_path)]
    deadline = time.monotonic() + timeout_s
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=REPO, preexec_fn=die_with_parent)
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                logf.write(raw)
                logf.flush()
                line = raw.decode(errors="replace").rstrip()
                if line.startswith("progress:"):
                    log(f"  {name}: {line[len('progress:'):].strip()}")
                if time.monotonic() > deadline:
                    proc.kill()
                    break
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if time.monotonic() > deadline:
        raise WorkerError(f"{name} ran past its {timeout_s:.0f} s limit (log: {log_path})")
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise WorkerError(f"{name} exited with code {proc.returncode}; last lines of {log_path}:\n{tail}")
    return json.loads(out_path.read_text())


# ------------------------------------------------------------------------------------- CPU accounting

_TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds incl. its reaped children) for every live process."""
    out: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()  # after "pid (comm) "
        ppid = int(fields[1])
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        out[int(entry)] = (ppid, (utime + stime + cutime + cstime) / _TICK)
    return out


def _bench_cpu_s() -> float:
    """CPU seconds of this process and every descendant (reaped ones count in their parent's c*time)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += table.get(pid, (0, 0.0))[1]
        todo.extend(children.get(pid, []))
    return total


class CpuMeter:
    """How much CPU the bench's own process tree used during a part, and how much everything else did."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.ours0 = time.monotonic(), _machine_busy_s(), _bench_cpu_s()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        busy = _machine_busy_s() - self.busy0
        ours = _bench_cpu_s() - self.ours0
        other = max(0.0, busy - ours)
        return {"wall_s": round(wall, 1), "machine_busy_cpu_s": round(busy, 1), "bench_cpu_s": round(ours, 1),
                "other_cpu_s": round(other, 1), "other_cores_avg": round(other / wall, 2) if wall > 0 else 0.0}


def wait_for_quiet(max_wait_s: float, window_s: float = 2.0, max_other_cores: float = 0.15) -> float:
    """Waits until processes outside the bench use less than ``max_other_cores`` over a ``window_s`` window (at most
    ``max_wait_s``, then goes on anyway); returns the seconds waited."""
    start = time.monotonic()
    while True:
        meter = CpuMeter()
        time.sleep(window_s)
        if meter.stop()["other_cores_avg"] < max_other_cores or time.monotonic() - start >= max_wait_s:
            return time.monotonic() - start
