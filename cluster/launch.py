"""Starting Ray and deploying the app: shared by `t2v serve`, tests and benchmarks."""

from __future__ import annotations

import os

from cluster.config import Settings

APP_NAME = "t2v"


def ray_environment() -> None:
    """What Ray needs on these machines: no usage stats, an explicit auth mode (the CLI
    tools fail without one), and the venv's python first on PATH for `ray job submit`."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    bin_dir = os.path.dirname(os.path.realpath(os.sys.executable))
    if not os.environ.get("PATH", "").startswith(bin_dir):
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def connect(settings: Settings, address: str | None = None, num_cpus: float | None = None) -> bool:
    """Join `address`, or a running local cluster, or start one. True when started here."""
    import ray

    ray_environment()
    if address:
        ray.init(address=address, logging_level="WARNING")
        return False
    try:
        ray.init(address="auto", logging_level="WARNING")
        return False
    except ConnectionError:
        ray.init(
            _temp_dir=settings.serving.ray_temp_dir, include_dashboard=False, num_cpus=num_cpus,
            logging_level="WARNING",
        )
        return True


def deploy(settings: Settings, blocking: bool = False) -> str:
    """Deploy the app on the connected cluster; returns its base URL once it is ready."""
    from ray import serve

    from cluster.app import bind_app

    serve.start(http_options={"host": settings.serving.host, "port": settings.serving.port})
    serve.run(bind_app(settings), name=APP_NAME, route_prefix="/", blocking=blocking)
    return f"http://{settings.serving.host}:{settings.serving.port}"
