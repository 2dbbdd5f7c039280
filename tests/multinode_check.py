"""Multi-node shape on one machine: the two experts on two nodes, one logical GPU each.

    python tests/multinode_check.py --work-dir /tmp/x [--model /path/to/wan22]

Starts a local three-node Ray cluster (`ray.cluster_utils.Cluster`): a head with no GPU
and two workers with one logical GPU each. Deploys `bind_app(settings)` with `num_gpus=1` per
expert, so the two experts can only land on different worker nodes. Then generates one
video over HTTP and asks each expert replica, from inside its own process, where it runs:
node, actor, the GPU ids Ray assigned, CUDA_VISIBLE_DEVICES, and torch's device (CPU here:
the GPUs are logical, and `Checkpoint` picks CUDA only when torch sees one).

Prints one line `MULTINODE_RESULT {json}` on stdout (also on failure, with "error"), and
always shuts Serve, the driver and the cluster down. Runs in its own process because the
test session's Ray is started in-process elsewhere; `tests/test_multinode.py` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

RESULT_MARKER = "MULTINODE_RESULT "
APP = "t2v-mn"
EXPERTS = {"high": "HighNoiseExpert", "low": "LowNoiseExpert"}
REQUEST = {"prompt": "a cat", "seed": 1, "steps": 4}


def probe(replica_actor) -> dict:
    """Runs inside a Serve replica actor (via `__ray_call__`): where am I, and on what device?"""
    import os

    import ray
    import torch
    from ray import serve

    context = ray.get_runtime_context()
    facts = {
        "node_id": context.get_node_id(),
        "actor_id": context.get_actor_id(),
        "pid": os.getpid(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch_cuda_available": torch.cuda.is_available(),
        "replica": serve.get_replica_context().replica_id.unique_id,
    }
    try:  # the user object behind the replica: ExpertPhase -> Expert (Ray Serve internals)
        expert = replica_actor._replica_impl._user_callable_wrapper._callable.expert
        facts["expert"] = expert.kind.stage
        facts["torch_device"] = str(next(expert.transformer.parameters()).device)
    except Exception as error:  # internals moved: the rest still says where the replica runs
        facts["torch_device"] = f"unknown ({type(error).__name__})"
    return facts


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def on_sigterm() -> None:
    """A SIGTERM (the test's timeout) interrupts the run, so the shutdown in `main` still runs."""
    signal.signal(signal.SIGTERM, _interrupt)


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def wait(self, what: str, check, interval: float = 0.5):
        """Poll `check()` until it returns something truthy; TimeoutError names `what`."""
        last = None
        while True:
            try:
                result = check()
                if result:
                    return result
            except Exception as error:  # not up yet
                last = error
            if not self.left():
                raise TimeoutError(f"timed out waiting for {what}" + (f" (last error: {last!r})" if last else ""))
            time.sleep(min(interval, self.left()))


def make_settings(args):
    from cluster.launch import free_port
    from contract.settings import Settings

    base = Settings(model=args.model, cache_dir=args.work_dir / "cache")
    deployments = dict(base.deployments)
    for name in EXPERTS.values():
        # One replica per expert, each holding one (logical) GPU.
        deployments[name] = deployments[name].model_copy(update={"num_gpus": 1, "min_replicas": 1, "max_replicas": 1})
    serving = base.serving.model_copy(
        update={
            "host": "127.0.0.1",
            "port": free_port(),
            "output_uri": str(args.work_dir / "outputs"),
            "ray_temp_dir": args.ray_temp_dir,
        }
    )
    return base.model_copy(update={"deployments": deployments, "serving": serving})


def app_status(serve) -> bool:
    """True once the app is RUNNING; raises at once when Serve gives up on it."""
    app = serve.status().applications.get(APP)
    if app is None:
        return False
    if app.status == "DEPLOY_FAILED":
        raise RuntimeError(
            f"deploy failed: {app.message} "
            + json.dumps({n: [d.status, d.message] for n, d in app.deployments.items()})
        )
    return app.status == "RUNNING"


def replicas_of(client, name: str) -> list[dict]:
    details = client.get_serve_details()
    deployment = details["applications"][APP]["deployments"][name]
    return [r for r in deployment["replicas"] if r["state"] == "RUNNING"]


def run(args, state: dict) -> dict:
    import httpx
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.serve.context import _get_global_client

    from cluster.app import bind_app

    deadline = Deadline(args.timeout)
    settings = make_settings(args)
    started = time.monotonic()
    node_args = {
        "temp_dir": settings.serving.ray_temp_dir,
        "object_store_memory": 100 * 1024**2,
        "dashboard_agent_listen_port": None,
    }  # None: a free port, not Ray's fixed default
    cluster = state["cluster"] = Cluster()
    cluster.add_node(num_cpus=2, num_gpus=0, include_dashboard=False, **node_args)  # head: no GPU
    gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=1, **node_args) for _ in range(2)]
    cluster.wait_for_nodes(timeout=deadline.left())
    head_id = cluster.head_node.node_id
    ray.init(address=cluster.address, log_to_driver=args.verbose)
    state["ray"] = True
    on_sigterm()  # again: Ray's core worker installs its own (aborting) SIGTERM handler
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}

    serve.start(proxy_location="HeadOnly", http_options={"host": settings.serving.host, "port": settings.serving.port})
    state["serve"] = True
    serve.run_many(
        [serve.RunTarget(bind_app(settings), name=APP, route_prefix="/")], wait_for_applications_running=False
    )
    deadline.wait(f"application {APP} RUNNING", lambda: app_status(serve), interval=1.0)
    deployed = time.monotonic()

    url = f"http://{settings.serving.host}:{settings.serving.port}"
    with httpx.Client(base_url=url, timeout=httpx.Timeout(deadline.left(), connect=10)) as http:
        deadline.wait("/healthz", lambda: http.get("/healthz").status_code == 200)
        response = http.post("/v1/videos/sync", json=REQUEST, timeout=deadline.left())
        generated = time.monotonic()
        video_id = response.headers.get("x-video-id")
        job = http.get(f"/v1/videos/{video_id}").json() if video_id else None

    client = _get_global_client()
    placement = {}
    for key, name in EXPERTS.items():
        replicas = deadline.wait(f"a RUNNING {name} replica", lambda name=name: replicas_of(client, name))
        if len(replicas) != 1:
            raise AssertionError(f"{name}: expected one replica, got {replicas}")
        replica = replicas[0]
        actor = ray.get_actor(replica["actor_name"], namespace="serve")
        facts = ray.get(actor.__ray_call__.remote(probe), timeout=deadline.left())
        facts["serve_node_id"] = replica["node_id"]  # where the controller says it is
        facts["serve_actor_id"] = replica["actor_id"]
        facts["node_gpus"] = nodes.get(facts["node_id"], {}).get("GPU", 0)
        placement[key] = facts

    body = response.content
    return {
        "status": response.status_code,
        "content_type": response.headers.get("content-type"),
        "mp4_bytes": len(body),
        "mp4_ftyp": body[4:8] == b"ftyp",
        "error_body": None if response.status_code == 200 else response.text[:2000],
        "video_id": video_id,
        "job_status": job and job.get("status"),
        "trace": job and [{"stage": s["stage"], "replica": s["replica"]} for s in job.get("trace", [])],
        "head_node_id": head_id,
        "gpu_node_ids": [n.node_id for n in gpu_nodes],
        "high": placement["high"],
        "low": placement["low"],
        "seconds": {"deploy": round(deployed - started, 1), "generate": round(generated - deployed, 1)},
    }


def shutdown(state: dict) -> list[str]:
    """Serve, then the driver, then every node; each step runs even when one before it failed."""
    import ray

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up (the test SIGKILLs after 60 s)
    problems = []
    if state.get("serve"):
        try:
            from ray import serve

            serve.shutdown()
        except BaseException as error:
            problems.append(f"serve.shutdown: {error!r}")
    if state.get("ray"):
        try:
            ray.shutdown()
        except BaseException as error:
            problems.append(f"ray.shutdown: {error!r}")
    if state.get("cluster") is not None:
        try:
            state["cluster"].shutdown()
        except BaseException as error:
            problems.append(f"cluster.shutdown: {error!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="cache_dir and output_uri live here")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint dir; default: the embedded model")
    parser.add_argument("--ray-temp-dir", default="/tmp/t2v-mn", help="short: Ray's socket paths are length-limited")
    parser.add_argument("--timeout", type=float, default=420, help="seconds for start, deploy and request together")
    parser.add_argument("--verbose", action="store_true", help="stream replica logs to this process")
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    # `Cluster` records its address in $RAY_TMPDIR/ray/ray_current_cluster, where a bare
    # `ray.init()` anywhere on the machine would find and join it: keep that file private.
    os.environ.setdefault("RAY_TMPDIR", args.ray_temp_dir)
    Path(os.environ["RAY_TMPDIR"], "ray").mkdir(parents=True, exist_ok=True)

    on_sigterm()
    started = time.monotonic()
    state: dict = {}
    result: dict
    try:
        result = run(args, state)
    except BaseException as error:
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    finally:
        problems = shutdown(state)
    result["shutdown_problems"] = problems
    result["seconds_total"] = round(time.monotonic() - started, 1)
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
