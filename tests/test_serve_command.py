"""`t2v serve` as a user runs it: starts its own Ray, serves, stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from cluster.launch import free_port
from stages.video import probe_mp4


def outward_address() -> str | None:
    """This machine's address on its network (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return None


def test_t2v_serve_starts_serves_and_stops(tmp_path, wan22_dir):
    port = free_port()
    ray_tmp = Path(f"/tmp/t2v-cmd-{os.getpid()}")  # its own, so it cannot join the session's Ray
    env = {
        **os.environ,
        "RAY_TMPDIR": str(ray_tmp),
        "T2V_SERVING__RAY_TEMP_DIR": str(ray_tmp),
        "T2V_SERVING__OUTPUT_URI": str(tmp_path / "outputs"),
        "T2V_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("RAY_ADDRESS", None)
    server = subprocess.Popen(
        # Asks for every interface without API keys: gets loopback only, and is told so.
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "serve",
            "--port",
            str(port),
            "--model",
            str(wan22_dir),
            "--host",
            "0.0.0.0",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True).start()
    output: list[str] = []

    def read_until(text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in output):
            assert time.monotonic() < deadline, f"no {text!r} in:\n{''.join(output)}"
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                assert server.poll() is None, "".join(output)

    try:
        url = f"http://127.0.0.1:{port}"
        read_until("serving on 127.0.0.1 only (asked for 0.0.0.0)", timeout=60)
        read_until(f"serving at {url}", timeout=240)
        address = outward_address()
        if address and not address.startswith("127."):  # the machine's own address: nothing listens there
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2)
        read_until("curl", timeout=10)
        response = httpx.post(f"{url}/v1/videos/sync", json={"prompt": "a cat", "steps": 3}, timeout=120)
        assert response.status_code == 200
        assert probe_mp4(response.content)["frames"] == 17

        server.send_signal(signal.SIGINT)  # Ctrl-C
        assert server.wait(timeout=120) == 0
        read_until("stopping", timeout=10)
        try:
            httpx.get(f"{url}/healthz", timeout=2)
            raise AssertionError("still serving after Ctrl-C")
        except httpx.HTTPError:
            pass
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", str(ray_tmp)], check=False)
