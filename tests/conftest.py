"""Shared fixtures: the embedded default model, built once per test session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from contract.settings import CacheSettings, ServingSettings, Settings
from deployments.default_model import write_default_model


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
        serving=ServingSettings(
            port=free_port(),
            output_uri=str(root / "outputs"),
            max_active_jobs=6,
            ray_temp_dir="/tmp/t2v-test",
            api_keys=["test-key-a", "test-key-b"],
        ),
        cache=CacheSettings(approximate_match=True),
    )
    # address="local": always a fresh cluster, never a developer's running one.
    # Its own dashboard port: jobs submitted by the tests must not reach another Ray on this
    # machine (a developer's `t2v serve` holds 8265).
    context = start_private_ray(settings.serving.ray_temp_dir, 4, dashboard=True)
    try:
        yield RunningApp(
            deploy(settings), settings, wan22_dir, f"http://{context.dashboard_url}", "test-key-a", "test-key-b"
        )
    finally:
        serve.shutdown()
        ray.shutdown()
