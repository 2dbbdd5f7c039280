"""CI cannot pass by skipping: under CI=true a skipped test fails the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def run_skipping_test(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    suite = tmp_path / "tests"
    suite.mkdir()
    shutil.copy(TESTS / "conftest.py", suite / "conftest.py")
    (suite / "test_skips.py").write_text("import pytest\n\n\ndef test_needs_a_gpu():\n    pytest.skip('no GPU')\n")
    env = {**os.environ, "CI": ci}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_a_skip_fails_under_ci(tmp_path):
    run = run_skipping_test(tmp_path, "true")
    assert run.returncode == 1 and "1 failed" in run.stdout, run.stdout
    assert "skipped under CI=true" in run.stdout


def test_a_skip_is_a_skip_elsewhere(tmp_path):
    run = run_skipping_test(tmp_path, "")
    assert run.returncode == 0 and "1 skipped" in run.stdout, run.stdout


def test_the_test_command_names_the_system_packages_it_cannot_install(tmp_path):
    """Not root and the programs missing: `make test` stops at once, naming the Debian packages."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    script = TESTS.parent / ".ci" / "system-packages"
    run = subprocess.run(["/bin/bash", str(script)], env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    assert run.returncode == 1
    assert "the tests need ffprobe prometheus chromium chromedriver" in run.stderr
    assert "apt-get install -y --no-install-recommends ffmpeg prometheus chromium chromium-driver" in run.stderr
