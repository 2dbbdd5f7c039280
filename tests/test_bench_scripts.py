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


def test_the_gpu_check_runs_its_stages_here_on_the_cpu() -> None:
    """bench/gpu_check.py is for a CUDA machine; its smoke run on the CPU times every stage in
    both engines, so it is ready when a GPU is at hand."""
    import json

    command = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--dtype", "float32", "--quick", "--cfg", "2"]
    command += ["--quantization", "int8_weight_only"]  # fp8 is for the GPU; the same path on int8 here
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # (its --ulysses 2 runs the code tests/test_parallel.py runs; here the CFG check alone, for time)
    engines = [r["engine"] for r in result["rows"]]
    assert result["project"] == "ran" and engines == ["diffusers", "project", "int8_weight_only", "cfg2"]
    diffusers, project, quantized, ranks = result["rows"]
    assert quantized["stages_s"]["high_noise"] > 0 and quantized["calls"] == project["calls"]
    assert result["parallel"] == ["cfg 2"]
    assert ranks["max_abs_diff"] <= 1e-5 and ranks["step_s"]["high_noise"] > 0, ranks
    for stage in ("encode", "high_noise", "low_noise", "decode"):
        assert diffusers["stages_s"][stage] > 0 and project["stages_s"][stage] > 0, stage
    assert diffusers["calls"]["high_noise"] + diffusers["calls"]["low_noise"] == 2 * diffusers["steps"]  # CFG
