"""A real Prometheus for tests: scrapes a Ray cluster's metrics agents with the shipped
monitoring/prometheus.yml, and the queries tests ask it."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from cluster.launch import free_port

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"
DASHBOARD = MONITORING / "grafana" / "t2v-cluster.json"


def dashboard_queries() -> list[str]:
    return [t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel["targets"]]


@contextlib.contextmanager
def run_prometheus(ray_temp_dir: str | Path, root: Path) -> Iterator[str]:
    """Prometheus on a free port, scraping the Ray whose temp dir is `ray_temp_dir` (its
    dashboard writes the agents' service-discovery file there); yields its URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (.ci/run installs Debian's package)"
    discovery = Path(ray_temp_dir) / "prom_metrics_service_discovery.json"
    config = (MONITORING / "prometheus.yml").read_text()
    # The shipped interval (5 s), and with it a scrape's timeout: the agent's page grows with every
    # process a long session started (~2 s on 2 busy cores late in the suite), and one scrape that
    # times out marks every series stale at once.
    config = config.replace("/tmp/t2v-ray/prom_metrics_service_discovery.json", str(discovery))
    (root / "prometheus.yml").write_text(config)
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address={address}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not start"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def query(url: str, expr: str) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert response["status"] == "success", (expr, response)
    return response["data"]["result"]


def wait_for(url: str, expr: str, check, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while True:
        result = query(url, expr)
        if check(result):
            return result
        assert time.monotonic() < deadline, f"{expr} never satisfied: {result} ({scrapes(url)})"
        time.sleep(1)


def scrapes(url: str) -> str:
    """Whether Prometheus reached Ray's agents, and how long that took, for a failure's message."""
    up = query(url, "min_over_time(up[5m])")
    took = query(url, "max_over_time(scrape_duration_seconds[5m])")
    samples = query(url, "max_over_time(scrape_samples_scraped[5m])")
    return (
        f"lowest up={[r['value'][1] for r in up]}, slowest scrape s={[r['value'][1] for r in took]}, "
        f"most samples={[r['value'][1] for r in samples]} (5 min)"
    )


def present(url: str, expr: str, timeout: float = 20) -> bool:
    """Whether an instant query returns data within `timeout`: a scrape that failed under load
    leaves every series stale until the next one succeeds."""
    deadline = time.monotonic() + timeout
    while not query(url, expr):
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def total(result: list[dict]) -> float:
    return sum(float(r["value"][1]) for r in result)
