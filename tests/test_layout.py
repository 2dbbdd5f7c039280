"""The shape of the code: the layer contract (import-linter) holds, covers every module and
catches a back-edge, an import between independent siblings and a module cycle (a lazy
import included); ruff's lint and format are clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(cwd)},
        timeout=300,
    )


def test_the_layers_hold():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 kept, 0 broken" in run.stdout


def test_every_module_sits_in_a_layer():
    """A module no layer names would escape the check: each must be a layer or inside one."""
    (layers,) = [c for c in CONFIG["contracts"] if c["type"] == "layers"]
    layered = {m.strip() for layer in layers["layers"] for m in layer.split("|")}
    modules = []
    for package in CONFIG["root_packages"]:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if len(parts) > 1 or package in layered:  # a root package's own __init__ holds no code
                modules.append(".".join(parts))
    outside = [m for m in modules if not any(m == layer or m.startswith(layer + ".") for layer in layered)]
    assert modules and not outside, f"modules in no layer of pyproject.toml's contract: {outside}"


@pytest.mark.parametrize(
    "importer, imported",
    [
        ("contract/request.py", "stages.checkpoint"),  # the contract reaching up into stage logic
        ("cache/keys.py", "stages.checkpoint"),  # the cache taking a Checkpoint again
        ("stages/expert.py", "deployments.high_noise_expert"),  # a stage class reaching for its wrapper
        ("cache/store.py", "sim.gpu"),  # independent siblings of one layer
        ("training/recipe.py", "deployments.decoder"),  # likewise
    ],
)
def test_a_back_edge_breaks_the_check(tmp_path, importer, imported):
    run = lint_with(tmp_path, importer, f"\nimport {imported}  # noqa\n")
    assert run.returncode != 0 and "BROKEN" in run.stdout, run.stdout + run.stderr
    assert f"{importer[:-3].replace('/', '.')} -> {imported}" in run.stdout


def test_a_lazy_import_that_closes_a_cycle_breaks_the_check(tmp_path):
    """cluster.batch imports cluster.batch_engine; the way back, even inside a function, is a cycle."""
    run = lint_with(tmp_path, "cluster/batch_engine.py", "\ndef later():\n    import cluster.batch  # noqa\n")
    assert run.returncode != 0 and "No cycles are allowed in cluster" in run.stdout, run.stdout + run.stderr


def lint_with(tmp_path: Path, importer: str, code: str) -> subprocess.CompletedProcess:
    """lint-imports on a copy of the project with `code` appended to `importer`."""
    for package in CONFIG["root_packages"]:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / importer, "a") as module:
        module.write(code)
    return lint_imports(tmp_path)


def test_ruff_lint_and_format_are_clean():
    lint = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([str(BIN / "ruff"), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout


def test_the_ingress_starts_without_the_model_libraries():
    """The ingress replica answers /healthz before it has imported torch, diffusers or transformers
    (seconds of CPU each, on cores the stage replicas start on too): it loads them after it is up."""
    code = "import sys, deployments.ingress; print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"deployments.ingress imports {run.stdout.strip()}"
