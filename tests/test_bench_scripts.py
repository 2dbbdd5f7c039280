"""The benchmarks run as scripts too (`python bench/x.py`), which puts bench/ first on sys.path: a module
there named like one of the project's top-level packages would shadow it (`import cache` would find
a cache module in bench/ instead of the cache package)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def top_level_packages() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.rstrip("*").rstrip(".") for pattern in include}


def test_no_bench_module_shadows_a_package() -> None:
    packages = top_level_packages()
    assert {"bench", "monitoring"} <= packages, packages
    modules = {p.stem for p in BENCH.glob("*.py")} | {
        p.name for p in BENCH.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    }
    clashes = sorted(modules & packages)
    assert not clashes, f"bench/ modules named like top-level packages: {clashes}"


def test_benchmark_runs_as_a_script() -> None:
    run = subprocess.run(
        [sys.executable, "bench/physics.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "--repeats" in run.stdout
