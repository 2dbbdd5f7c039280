"""Control-plane capacity: with compute at zero, the most jobs a second this machine serves through
the real app on `Nodes` (a fleet of 2 logical GPUs), and its CPU seconds per job by process.
SIMULATED GPUs. Goal >= 20 jobs/s.

    python -m bench.fleet.control_plane [--control-plane-jobs 150]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.fleet.harness import (
    LABEL,
    Fleet,
    Nodes,
    Shape,
    add_common_arguments,
    bodies,
    finish,
    fixed,
    load,
    nodes_for,
    schedule,
    sim_settings,
)
from bench.toolkit import model_settings
from cluster.sizing import expert_split
from contract.settings import Settings, SimSettings

GOAL = 20  # jobs a second
FLEET_GPUS = 2  # one per expert
CONCURRENCY = 64


def bench_control_plane(nodes: Nodes, base: Settings, jobs: int, concurrency: int = CONCURRENCY) -> dict:
    """The most jobs a second the serving path sustains here with compute at zero (a simulated
    second of 1 ns), and its CPU seconds per job by process: HTTP proxy, ingress, job store,
    hand-offs, and the stages' own CPU work (the stand-in video's mp4 and physics score)."""
    from bench.cpu import CpuMeter, ceiling, control_plane

    shape = Shape(64, 64, frames=17, steps=10)
    work = Path(tempfile.mkdtemp(prefix="fleet-cp", dir="/tmp"))
    settings = sim_settings(base, work, SimSettings(time_scale=1e-9), shape)
    high_steps, low_steps = schedule(settings, shape.steps)
    try:
        with Fleet(nodes, settings, fixed(expert_split(FLEET_GPUS, high_steps, low_steps))) as fleet:
            load(fleet.url, bodies(shape, min(jobs, concurrency), 30_000), concurrency)  # warm every route
            meter = CpuMeter().start()
            start = time.monotonic()
            results = load(fleet.url, bodies(shape, jobs, 40_000), concurrency)
            wall = time.monotonic() - start
            cpu = meter.stop()
            calls = store_calls(fleet.url, [r["id"] for r in results if r["id"]])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_job = {role: seconds / jobs for role, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]) if seconds > 0}
    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "failed": sum(r["status"] != 200 for r in results),
        "statuses": dict(Counter(r["status"] for r in results)),
        "jobs_per_second": jobs / wall,
        # the job store's calls a job cost (its record counts them): create, the stages' words, the end
        "job_store_calls_per_job": {"mean": sum(calls) / max(len(calls), 1), "max": max(calls, default=0)},
        "cpu_seconds_per_job": per_job,
        "control_plane_cpu_per_job": control_plane(per_job),
        "ceiling_jobs_per_second": ceiling(os.cpu_count() or 1, sum(per_job.values())) / 60,
        # derived: a head node whose cores do only the control plane (the stages' CPU on GPU nodes)
        "control_plane_only_jobs_per_second": ceiling(os.cpu_count() or 1, control_plane(per_job)) / 60,
    }


def store_calls(url: str, job_ids: list[str]) -> list[int]:
    """Each job's job-store calls, read from its record after the run."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as http:
        return [http.get(f"/v1/videos/{job_id}").json()["store_calls"] for job_id in job_ids]


def print_report(capacity: dict) -> None:
    print(f"\n== Control-plane capacity, compute at zero (64x64 x 17 stand-ins, {LABEL})")
    print(
        f"{capacity['jobs']} jobs, {capacity['concurrency']} in flight, {capacity['failed']} failed: "
        f"{capacity['jobs_per_second']:.1f} jobs/s (goal {GOAL}); "
        f"the CPU work per job caps it at {capacity['ceiling_jobs_per_second']:.1f} jobs/s on "
        f"{os.cpu_count()} cores"
    )
    calls = capacity["job_store_calls_per_job"]
    print(f"job-store calls a job: {calls['mean']:.2f} on average, {calls['max']} at most (goal: 4 at most)")
    for role, seconds in capacity["cpu_seconds_per_job"].items():
        print(f"  {role:<55} {seconds * 1000:7.1f} ms CPU per job")
    print(
        f"the control plane proper (proxy, Ray, ingress, job store): "
        f"{capacity['control_plane_cpu_per_job'] * 1000:.0f} ms a job, "
        f"{capacity['control_plane_only_jobs_per_second']:.1f} jobs/s on {os.cpu_count()} cores of its own (derived)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--control-plane-jobs", type=int, default=150, help="jobs for control-plane capacity (default 150; 0: skip)"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, size=False, gpu=False, output=False)
    add_arguments(parser)
    args = parser.parse_args(argv)
    capacity = None
    if args.control_plane_jobs:
        with nodes_for(FLEET_GPUS, args.gpus_per_node) as nodes:
            capacity = bench_control_plane(nodes, model_settings(), args.control_plane_jobs)
        print_report(capacity)
    met = None if capacity is None else capacity["jobs_per_second"] >= GOAL
    return finish(
        "fleet.control_plane", control_plane=capacity, goals={"control_plane": GOAL}, met={"control_plane": met}
    )


if __name__ == "__main__":
    main()
