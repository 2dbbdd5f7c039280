"""Starting Ray and deploying the app: shared by `t2v serve`, tests and benchmarks."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import NamedTuple

from contract.settings import Settings, is_loopback

APP_NAME = "t2v"


def ray_environment(token_auth: bool = False) -> None:
    """What Ray needs on these machines: no usage stats, an explicit auth mode (the CLI
    tools fail without one), and the venv's python first on PATH for `ray job submit`.
    `token_auth`: a Ray that other machines can reach (its GCS and raylets listen on the
    node's address) runs only code sent with its token; an explicit RAY_AUTH_MODE wins.
    Call it before `import ray`: Ray reads the auth mode once, on import."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "token" if token_auth else "disabled")
    bin_dir = os.path.dirname(os.sys.executable)  # not realpath: that leaves the venv for pyenv's bin
    if not os.environ.get("PATH", "").startswith(bin_dir):
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def token_auth() -> bool:
    """Whether this process's Ray calls carry a token (RAY_AUTH_MODE=token)."""
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


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


class Connection(NamedTuple):
    started: bool  # Ray was started here (and stops with this process)
    dashboard: str | None  # where `ray job submit --address` reaches it


def connect(settings: Settings, address: str | None = None, num_cpus: float | None = None) -> Connection:
    """Join `address`, or a running local cluster, or start one. One started to serve beyond
    loopback gets token auth (ray_environment); Ray writes a new token to ~/.ray/auth_token
    unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH gives one."""
    ray_environment(token_auth=not is_loopback(settings.serving.bind_host))
    import ray

    address = address or running_cluster()
    if address:
        context = ray.init(address=address, logging_level="WARNING")
    else:
        context = ray.init(
            address="local",
            _temp_dir=settings.serving.ray_temp_dir,
            include_dashboard=settings.serving.metrics,
            num_cpus=num_cpus,
            logging_level="WARNING",
        )
    dashboard = context.dashboard_url
    return Connection(not address, f"http://{dashboard}" if dashboard and "://" not in dashboard else dashboard)


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
