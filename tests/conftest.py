"""Shared fixtures: the embedded default model, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import Settings
from cluster.default_model import write_default_model


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
