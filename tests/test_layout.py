"""The shape of the code: the layer contract (import-linter) holds, covers every module and
catches a back-edge; ruff's lint and format are clean."""

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
    assert "1 kept, 0 broken" in run.stdout


def test_every_module_sits_in_a_layer():
    """A module no layer names would escape the check: each must be a layer or inside one."""
    (contract,) = CONFIG["contracts"]
    layered = {m.strip() for layer in contract["layers"] for m in layer.split(":")}
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
        ("contract/request.py", "deployments.checkpoint"),  # the contract reaching up into stage logic
        ("cache/keys.py", "deployments.checkpoint"),  # the cache taking a Checkpoint again
        ("deployments/expert.py", "deployments.expert_deployment"),  # a stage class reaching for its wrapper
    ],
)
def test_a_back_edge_breaks_the_check(tmp_path, importer, imported):
    for package in CONFIG["root_packages"]:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / importer, "a") as module:
        module.write(f"\nimport {imported}  # noqa\n")
    run = lint_imports(tmp_path)
    assert run.returncode != 0 and "BROKEN" in run.stdout, run.stdout + run.stderr
    assert f"{importer[:-3].replace('/', '.')} -> {imported}" in run.stdout


def test_ruff_lint_and_format_are_clean():
    lint = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([str(BIN / "ruff"), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout
