"""Starting Ray and deploying the app: shared by `t2v serve`, tests and benchmarks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from contract.settings import Settings

APP_NAME = "t2v"


def ray_environment() -> None:
    """What Ray needs on these machines: no usage stats, an explicit auth mode (the CLI
    tools fail without one), and the venv's python first on PATH for `ray job submit`."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    bin_dir = os.path.dirname(os.sys.executable)  # not realpath: that leaves the venv for pyenv's bin
    if not os.environ.get("PATH", "").startswith(bin_dir):
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running_cluster() -> str | None:
    """The cluster `ray start` left running here (or RAY_ADDRESS), if it answers.

    Not `address="auto"`: that also scans for any Ray process on the machine, and would
    join a test's or a benchmark's private cluster.
    """
    address = os.environ.get("RAY_ADDRESS")
    record = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    if not address and record.is_file():
        address = record.read_text().strip()
    if not address or "://" in address:
        return address or None
    host, _, port = address.rpartition(":")
    try:  # a record left by a crashed cluster points at nothing
        socket.create_connection((host, int(port)), timeout=2).close()
        return address
    except (OSError, ValueError):
        return None


def connect(settings: Settings, address: str | None = None, num_cpus: float | None = None) -> bool:
    """Join `address`, or a running local cluster, or start one. True when started here."""
    import ray

    ray_environment()
    address = address or running_cluster()
    if address:
        ray.init(address=address, logging_level="WARNING")
        return False
    ray.init(
        address="local",
        _temp_dir=settings.serving.ray_temp_dir,
        include_dashboard=settings.serving.metrics,
        num_cpus=num_cpus,
        logging_level="WARNING",
    )
    return True


def start_private_ray(temp_dir: str, num_cpus: float, dashboard: bool = False, log_to_driver: bool = True):
    """A fresh local Ray of its own for tests and benchmarks: never a running one (address="local"),
    logical CPUs enough for every fractional replica, and a dashboard (job submission, the
    metrics agents' discovery file) on a free port when asked: never a developer's 8265."""
    import ray

    ray_environment()
    return ray.init(
        address="local",
        _temp_dir=temp_dir,
        include_dashboard=dashboard,
        dashboard_port=free_port() if dashboard else None,
        num_cpus=num_cpus,
        logging_level="WARNING",
        log_to_driver=log_to_driver,
    )


def deploy(settings: Settings, blocking: bool = False) -> str:
    """Deploy the app on the connected cluster; returns its base URL once it is ready."""
    from ray import serve

    from cluster.app import bind_app

    host = settings.serving.bind_host
    serve.start(http_options={"host": host, "port": settings.serving.port})
    serve.run(bind_app(settings), name=APP_NAME, route_prefix="/", blocking=blocking)
    return f"http://{host}:{settings.serving.port}"
