"""Where a benchmark's CPU goes: CPU seconds of every process on the machine, by role.

`CpuMeter` snapshots each process's user + system time; the difference over a run, summed
by role (a Serve deployment, Ray's own processes, the benchmark process), says what each
part of the serving path costs per video. With `ceiling`, it turns into the bound that
matters on a CPU box: no schedule can finish videos faster than the cores can do the
least CPU work one video needs.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import psutil

# ray::ServeReplica:<app>:<Deployment>[.method] (Ray renames a worker while it runs a task)
_REPLICA = re.compile(r"ray::(?:ServeReplica:[^:\s]+:|SERVE_REPLICA::[^#\s]+#)([A-Za-z]+)")
_RAY_SYSTEM = ("ray::", "gcs_server", "raylet", "ray/dashboard", "ray/_private", "ray/autoscaler")
BENCHMARK = "benchmark process (client, in-process pipeline)"
RAY = "Ray and Serve (GCS, raylet, controller, proxy, agents)"


def role(pid: int, command: str) -> str:
    if pid == os.getpid():
        return BENCHMARK
    if match := _REPLICA.search(command):
        return match.group(1)
    return RAY if any(marker in command for marker in _RAY_SYSTEM) else "other"


class CpuMeter:
    """CPU seconds by role between `start()` and `stop()`."""

    def __init__(self):
        self._start: dict[int, tuple[str, float]] = {}

    @staticmethod
    def _snapshot() -> dict[int, tuple[str, float]]:
        out = {}
        for process in psutil.process_iter(["cmdline", "name"]):
            try:
                times = process.cpu_times()
                command = " ".join(process.info["cmdline"] or [process.info["name"] or ""])
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            out[process.pid] = (role(process.pid, command), times.user + times.system)
        return out

    def start(self) -> CpuMeter:
        self._start = self._snapshot()
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds by role since `start()` (processes that ended meanwhile are missed)."""
        used: Counter[str] = Counter()
        for pid, (name, seconds) in self._snapshot().items():
            used[name] += seconds - self._start.get(pid, (name, 0.0))[1]
        return dict(used)


# What the serving path spends per video besides the stages' own work: HTTP, routing, job records.
CONTROL_PLANE = ("Ingress", "JobStore", RAY)


def control_plane(cpu_per_video: dict[str, float]) -> float:
    """CPU seconds per video of the roles that serve requests without computing them."""
    return sum(cpu_per_video.get(name, 0.0) for name in CONTROL_PLANE)


def ceiling(cores: int, cpu_seconds_per_video: float) -> float:
    """Videos per minute if every core did nothing but the measured CPU work per video."""
    return 60 * cores / cpu_seconds_per_video
