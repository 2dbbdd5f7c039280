"""bench/cpu.py: CPU seconds by process role, and the ceiling they set."""

import os
import subprocess
import sys
import time

from bench.cpu import BENCHMARK, RAY, CpuMeter, ceiling, control_plane, role


def test_roles_name_serve_deployments_ray_and_the_benchmark():
    assert role(1, "ray::ServeReplica:t2v:HighNoiseExpert") == "HighNoiseExpert"
    assert role(1, "ray::ServeReplica:t2v:Ingress.handle_request_with_rejection") == "Ingress"
    assert role(1, "ray::SERVE_REPLICA::t2v#Decoder#e21rk68p:ServeReplica:t2v:Decoder") == "Decoder"
    assert role(1, "/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --log_dir=x") == RAY
    assert role(1, "ray::ServeController") == RAY
    assert role(os.getpid(), "python -m pytest") == BENCHMARK
    assert role(1, "/usr/bin/prometheus") == "other"


def test_the_meter_counts_cpu_where_it_was_spent():
    meter = CpuMeter().start()
    burn = (
        "import sys, time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\n"
        "print('burnt', flush=True)\nsys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        end = time.process_time() + 0.3
        while time.process_time() < end:  # this process burns too
            pass
        assert child.stdout.readline() == b"burnt\n"  # then waits on stdin: the meter reads it alive
        used = meter.stop()
    finally:
        child.communicate(b"")
    assert used[BENCHMARK] >= 0.25
    assert used["other"] >= 0.4


def test_the_ceiling_is_what_the_cores_can_do():
    assert ceiling(2, 0.75) == 160.0  # two cores, 0.75 CPU s per video


def test_the_control_plane_is_the_serving_roles_that_compute_nothing():
    per_video = {
        "Ingress": 0.05,
        "JobStore": 0.08,
        RAY: 0.1,
        "HighNoiseExpert": 0.5,
        "TextEncoder": 0.07,
        "other": 0.01,
        BENCHMARK: 0.004,
    }
    assert control_plane(per_video) == 0.23
    assert control_plane({"HighNoiseExpert": 0.5}) == 0.0
