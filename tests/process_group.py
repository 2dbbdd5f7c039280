"""A child that starts a Ray cluster of its own, run in a process group of its own: on a hang the
whole group goes (its raylets and workers too), so nothing it started outlives the test and
slows the tests after it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pytest


def run_group(command: list[str], timeout: float, **popen) -> subprocess.CompletedProcess:
    """`subprocess.run(command, capture_output=True, text=True)` in a new session; past `timeout`,
    SIGTERM (the child shuts its cluster down), then SIGKILL to the group, and the test fails
    with the child's last output."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **popen
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
        _kill_group(process)
        stdout, stderr = process.communicate()
        pytest.fail(
            f"{command[:3]} timed out after {timeout:.0f} s\nstdout:\n{stdout[-5000:]}\nstderr:\n{stderr[-5000:]}"
        )
    _kill_group(process)  # whatever the child left running
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # nothing of the group left
        os.killpg(process.pid, signal.SIGKILL)  # the group this test started, nothing else
