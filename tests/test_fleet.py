"""The simulated fleet (bench/fleet.py) end to end on a small fleet: a multi-node Ray cluster with
logical GPUs, the real app in `device: sim`, requests over HTTP. Run as a subprocess: this test
session's own Ray is started in-process elsewhere, and one process drives one Ray cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_small_simulated_fleet_serves_every_request_and_says_it_is_simulated():
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-m", "bench.fleet", "--gpus", "2", "--videos-per-gpu", "12", "--size", "256x256"]
    command += ["--batching-concurrency", "4", "--control-plane-jobs", "40"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "SIMULATED GPUs" in run.stdout
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["simulated"] is True and result["met"]["no_failures"], result
    (fleet,) = result["fleets"]
    assert fleet["split"] == [1, 1] and fleet["steps"] == [26, 14]  # Wan2.2's schedule, one GPU per expert
    # simulated GPUs compute one thing at a time: the fleet cannot beat the split's bound
    assert fleet["videos_per_hour"] <= 1.05 * fleet["split_bound_per_hour"]
    assert 0 < result["template"]["ratio"] < 1  # variants of a template share the high-noise phase
    runs = {(b["size"], b["batching"]) for b in result["batching"]}
    assert runs == {(size, on) for size in ("832x480", "256x256") for on in (False, True)}
    assert all(b["videos_per_hour"] > 0 and b["p95_s"] > 0 for b in result["batching"])
    capacity = result["control_plane"]
    assert capacity["failed"] == 0 and capacity["jobs_per_second"] > 0
    assert {"Ingress", "JobStore", "Decoder"} <= set(capacity["cpu_seconds_per_job"])  # CPU by process
