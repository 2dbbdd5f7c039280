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
from tests.prometheus_server import dashboard_queries, query, run_prometheus, scrapes


def outward_address() -> str | None:
    """This machine's address on its network (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return None


class ServerOutput:
    """What a `t2v serve` process prints, read as it comes."""

    def __init__(self, server: subprocess.Popen):
        self.server, self.lines, self.seen = server, queue.Queue(), []
        threading.Thread(target=lambda: [self.lines.put(line) for line in server.stdout], daemon=True).start()

    def read_until(self, text: str, timeout: float) -> str:
        """The first line with `text` in it, waiting up to `timeout` for it."""
        deadline = time.monotonic() + timeout
        while not (found := [line for line in self.seen if text in line]):
            assert time.monotonic() < deadline, f"no {text!r} in:\n{''.join(self.seen)}"
            try:
                self.seen.append(self.lines.get(timeout=1))
            except queue.Empty:
                assert self.server.poll() is None, "".join(self.seen)
        return found[0]


def start_serve(env: dict, port: int, model: Path) -> ServerOutput:
    """`t2v serve --host 0.0.0.0` in a session of its own (a kill takes its Ray with it)."""
    command = [sys.executable, "-m", "cluster.cli", "serve", "--port", str(port), "--model", str(model)]
    server = subprocess.Popen(
        [*command, "--host", "0.0.0.0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return ServerOutput(server)


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
    # Asks for every interface without API keys: gets loopback only, and is told so.
    output = start_serve(env, port, wan22_dir)
    server = output.server
    try:
        url = f"http://127.0.0.1:{port}"
        output.read_until("serving on 127.0.0.1 only (asked for 0.0.0.0)", timeout=60)
        output.read_until(f"serving at {url}", timeout=240)
        address = outward_address()
        if address and not address.startswith("127."):  # the machine's own address: nothing listens there
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2)
        output.read_until("curl", timeout=10)
        response = httpx.post(f"{url}/v1/videos/sync", json={"prompt": "a cat", "steps": 3}, timeout=120)
        assert response.status_code == 200
        assert probe_mp4(response.content)["frames"] == 17

        server.send_signal(signal.SIGINT)  # Ctrl-C
        assert server.wait(timeout=120) == 0
        output.read_until("stopping", timeout=10)
        try:
            httpx.get(f"{url}/healthz", timeout=2)
            raise AssertionError("still serving after Ctrl-C")
        except httpx.HTTPError:
            pass
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", str(ray_tmp)], check=False)


def test_t2v_serve_beyond_loopback_starts_ray_with_token_auth(tmp_path, wan22_dir):
    """With API keys, `t2v serve --host 0.0.0.0` binds every interface, so the Ray it starts
    takes only calls that carry its token: Ray's CLI with the token is answered, without it or
    with another refused. Fresh as a user starts it, every dashboard query has data once a
    video is made (series of events that have not happened yet start at zero)."""
    port, key = free_port(), "test-key-a-0123456"
    ray_tmp = Path(f"/tmp/t2v-tok-{os.getpid()}")
    home = tmp_path / "home"  # where Ray writes the token it makes (~/.ray/auth_token)
    home.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))},
        "HOME": str(home),
        "RAY_TMPDIR": str(ray_tmp),
        "T2V_SERVING__RAY_TEMP_DIR": str(ray_tmp),
        "T2V_SERVING__OUTPUT_URI": str(tmp_path / "outputs"),
        "T2V_SERVING__API_KEYS": f'["{key}"]',
        "T2V_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
    }
    output = start_serve(env, port, wan22_dir)
    server = output.server
    try:
        output.read_until(f"serving at http://0.0.0.0:{port}", timeout=240)
        dashboard = output.read_until("Ray dashboard (ray job submit --address): ", timeout=10).split(": ")[-1].strip()
        output.read_until("Ray token auth is on", timeout=10)
        assert (home / ".ray" / "auth_token").is_file()

        url = f"http://127.0.0.1:{port}"
        video = httpx.post(
            f"{url}/v1/videos/sync",
            json={"prompt": "a red ball bouncing", "steps": 3},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
        assert video.status_code == 200, video.text

        # Ray's CLI against its dashboard: refused without the token, answered with it (read from
        # ~/.ray/auth_token, as README's `ray job submit` reads it). (Not `ray job submit` itself:
        # its job agent listens on a port fixed per machine, which the test session's own Ray holds.)
        ray_jobs = [str(Path(sys.executable).with_name("ray")), "job", "list", "--address", dashboard]
        refused = subprocess.run(
            ray_jobs, env={**env, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode != 0, refused.stdout
        listed = subprocess.run(
            ray_jobs, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=120
        )
        assert listed.returncode == 0, listed.stdout + listed.stderr
        wrong = subprocess.run(
            ray_jobs,
            env={**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert wrong.returncode != 0, wrong.stdout

        with run_prometheus(ray_tmp, tmp_path) as prometheus:
            deadline = time.monotonic() + 120
            while empty := [expr for expr in dashboard_queries() if not query(prometheus, expr)]:
                assert time.monotonic() < deadline, f"dashboard queries without data: {empty} ({scrapes(prometheus)})"
                time.sleep(2)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", str(ray_tmp)], check=False)
