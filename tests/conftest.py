"""Shared fixtures: the embedded default model, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from contract.settings import CacheSettings, ServingSettings, Settings
from stages.default_model import write_default_model


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skipped test is a failed one: CI must never pass by skipping."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI", "").lower() == "true" and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {report.longrepr}"


@pytest.fixture(scope="session")
def wan22_dir(tmp_path_factory) -> Path:
    """The tiny Wan2.2 A14B-architecture model (two experts), in diffusers layout."""
    return write_default_model(tmp_path_factory.mktemp("models") / "wan22")


@pytest.fixture(scope="session")
def wan21_dir(tmp_path_factory) -> Path:
    """A Wan2.1-style single-transformer checkpoint of the same tiny size."""
    return write_default_model(tmp_path_factory.mktemp("models") / "wan21", two_experts=False)


@pytest.fixture(scope="session")
def settings(wan22_dir, tmp_path_factory) -> Settings:
    return Settings(model=wan22_dir, cache_dir=tmp_path_factory.mktemp("cache"))


@dataclass
class RunningApp:
    url: str
    settings: Settings
    model_dir: Path
    dashboard: str  # Ray's dashboard (job submission) address, http://host:port
    api_key: str  # the app requires keys: this one, or other_key (which sees other jobs)
    other_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def served_adapters(model_dir: Path, store: Path) -> Path:
    """The shipped test adapters and `few-step`, random weights that sample as a distilled pair
    does (4 steps, no guidance): what the session's app serves."""
    import json
    import shutil

    from contract.experts import ExpertKind
    from stages.adapter_store import TEST_ADAPTERS_DIR
    from tests.test_adapters import write_adapter

    shutil.copytree(TEST_ADAPTERS_DIR, store)
    write_adapter(store, "few-step", model_dir, list(ExpertKind), 7, rank=2)
    sampling = {"steps": 4, "guidance": 1.0, "guidance_2": 1.0, "flow_shift": 5.0}
    (store / "few-step" / "adapter.json").write_text(json.dumps({"description": "4 steps, no guidance", **sampling}))
    return store


@pytest.fixture(scope="session")
def serve_app(wan22_dir, tmp_path_factory) -> RunningApp:
    """The real Serve app on a real local Ray, started once per session (~10-45 s here)."""
    import ray
    from ray import serve

    from cluster.launch import deploy, free_port, start_private_ray

    root = tmp_path_factory.mktemp("serve")
    settings = Settings(
        model=wan22_dir,
        cache_dir=root / "cache",
        adapters={"uri": str(served_adapters(wan22_dir, root / "adapters"))},
        serving=ServingSettings(
            port=free_port(),
            output_uri=str(root / "outputs"),
            max_active_jobs=6,
            ray_temp_dir="/tmp/t2v-test",
            api_keys=["test-key-a-0123456", "test-key-b-0123456"],
            # the test model's phases last under a second: words often enough to show progress in them
            progress_seconds=0.25,
        ),
        cache=CacheSettings(approximate_match=True),
    )
    # address="local": always a fresh cluster, never a developer's running one.
    # Its own dashboard port: jobs submitted by the tests must not reach another Ray on this
    # machine (a developer's `t2v serve` holds 8265).
    context = start_private_ray(settings.serving.ray_temp_dir, 4, dashboard=True)
    try:
        yield RunningApp(
            deploy(settings),
            settings,
            wan22_dir,
            f"http://{context.dashboard_url}",
            "test-key-a-0123456",
            "test-key-b-0123456",
        )
    finally:
        serve.shutdown()
        ray.shutdown()


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "t2v-test",
    "AWS_SECRET_ACCESS_KEY": "t2v-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_uri() -> Callable[[str], str]:
    """An S3-compatible object store on loopback (moto's server: real HTTP and the S3 API), with
    credentials in the environment as a real deployment gives them; returns `prefix -> URI`."""
    import httpx

    from cluster.launch import free_port

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(f"moto's S3 server did not start on port {port}") from None
            time.sleep(0.2)
    with pytest.MonkeyPatch.context() as env:
        for name, value in S3_CREDENTIALS.items():
            env.setenv(name, value)
        query = f"endpoint_override=127.0.0.1:{port}&scheme=http&allow_bucket_creation=true&region=us-east-1"
        yield lambda prefix: f"s3://t2v-test/{prefix}?{query}"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def prometheus(serve_app, tmp_path_factory):
    """A real Prometheus scraping the session's Ray, for one test module: its scrapes cost the
    agents CPU, so it runs only while a module needs it."""
    from tests.prometheus_server import run_prometheus, scrapes

    with run_prometheus(serve_app.settings.serving.ray_temp_dir, tmp_path_factory.mktemp("prometheus")) as url:
        yield url
        print(f"\nPrometheus scraped Ray: {scrapes(url)}")  # how near the scrape timeout (-s shows it)
