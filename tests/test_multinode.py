"""Multi-node shape on one machine: with one logical GPU per worker node and `num_gpus=1`
per expert, the two experts run on different actors, nodes and GPUs, never on the GPU-less
head, and a request still completes (torch runs on CPU: the GPUs are only logical).

The cluster runs in a subprocess (`tests/multinode_check.py`): this session's own Ray, if
any, is started in-process by other tests, and one process can drive one Ray cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process_group import run_group

SCRIPT = Path(__file__).with_name("multinode_check.py")
MARKER = "MULTINODE_RESULT "
TIMEOUT = 600  # the check needs about a minute on 2 cores; its own deadline is 420 s


def run_check(work_dir: Path, model: Path) -> tuple[dict, subprocess.CompletedProcess]:
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("RAY_ADDRESS", None)  # the check starts its own cluster, it must not join another
    command = [sys.executable, str(SCRIPT), "--work-dir", str(work_dir), "--model", str(model)]
    done = run_group(command, TIMEOUT, env=env)
    stdout, stderr = done.stdout, done.stderr
    lines = [line for line in stdout.splitlines() if line.startswith(MARKER)]
    assert lines, f"no result line (exit {done.returncode})\nstdout:\n{stdout[-5000:]}\nstderr:\n{stderr[-5000:]}"
    return json.loads(lines[-1][len(MARKER) :]), done


@pytest.fixture(scope="module")
def multinode(wan22_dir, tmp_path_factory) -> dict:
    result, done = run_check(tmp_path_factory.mktemp("multinode"), wan22_dir)
    print(f"\nmultinode check result: {json.dumps(result, indent=1)}")
    assert "error" not in result, f"{result['error']}\n{result.get('traceback', '')}\nstderr:\n{done.stderr[-5000:]}"
    assert done.returncode == 0, done.stderr[-5000:]
    return result


def test_request_completes(multinode):
    assert multinode["status"] == 200, multinode["error_body"]
    assert multinode["content_type"] == "video/mp4"
    assert multinode["mp4_bytes"] > 0 and multinode["mp4_ftyp"]
    assert multinode["job_status"] == "completed"


def test_experts_on_different_actors_nodes_and_gpus(multinode):
    high, low = multinode["high"], multinode["low"]
    assert high["expert"] == "high_noise" and low["expert"] == "low_noise"
    assert high["actor_id"] != low["actor_id"]
    assert high["node_id"] != low["node_id"]
    # What the replica sees from inside agrees with what the Serve controller reports.
    for facts in (high, low):
        assert facts["node_id"] == facts["serve_node_id"]
        assert facts["actor_id"] == facts["serve_actor_id"]
    # Each holds exactly one logical GPU on its node: distinct (node, GPU) pairs.
    assert len(high["gpu_ids"]) == 1 and len(low["gpu_ids"]) == 1
    assert (high["node_id"], high["gpu_ids"][0]) != (low["node_id"], low["gpu_ids"][0])
    assert high["cuda_visible_devices"] == high["gpu_ids"][0]
    assert low["cuda_visible_devices"] == low["gpu_ids"][0]


def test_experts_only_on_gpu_worker_nodes(multinode):
    head = multinode["head_node_id"]
    for facts in (multinode["high"], multinode["low"]):
        assert facts["node_id"] != head
        assert facts["node_id"] in multinode["gpu_node_ids"]
        assert facts["node_gpus"] == 1


def test_torch_runs_on_cpu_behind_logical_gpus(multinode):
    for facts in (multinode["high"], multinode["low"]):
        assert facts["torch_cuda_available"] is False
        assert facts["torch_device"] == "cpu"


def test_request_went_through_those_replicas(multinode):
    replicas = {span["stage"]: span["replica"] for span in multinode["trace"]}
    assert replicas["high_noise"] == multinode["high"]["replica"]
    assert replicas["low_noise"] == multinode["low"]["replica"]
