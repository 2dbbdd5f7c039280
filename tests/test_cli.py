"""`t2v generate` and `t2v model init`, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stages.video import probe_mp4


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path, monkeypatch):
    """Each test its own model/latent cache: a result cached by an earlier run would hide the work."""
    monkeypatch.setenv("T2V_CACHE_DIR", str(tmp_path / "t2v-cache"))


def _t2v(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("prompt", ["一只橘猫在草地上奔跑", "an orange cat running on the grass"])
def test_generate_writes_a_valid_mp4(tmp_path, wan22_dir, prompt):
    out = tmp_path / "cat.mp4"
    run = _t2v("generate", prompt, "-o", str(out), "--seed", "3", "--model", str(wan22_dir))
    assert run.returncode == 0, run.stderr
    info = probe_mp4(out.read_bytes())
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (17, 64, 64, 16.0)
    assert info["metadata"]["seed"] == "3"
    assert "10/10" in run.stderr  # the progress bar reached every denoising step


def test_generate_on_the_simulated_accelerator_says_so(tmp_path, wan22_dir):
    out = tmp_path / "sim.mp4"
    env = {
        "T2V_DEVICE": "sim",
        "T2V_SIM__GPU": "l40s",
        "T2V_LIMITS__MAX_HEIGHT": "1280",
        "T2V_LIMITS__MAX_WIDTH": "1280",
        "T2V_LIMITS__MAX_FRAMES": "81",
    }
    args = ("generate", "a red ball", "-o", str(out), "--size", "1280x720", "--frames", "81", "--steps", "40")
    run = _t2v(*args, "--model", str(wan22_dir), env=env)
    assert run.returncode == 0, run.stderr
    assert "SIMULATED l40s" in run.stdout and "simulated s" in run.stdout
    total = float(run.stdout.split("total ")[1].split()[0])
    assert 1500 < total < 5000  # an L40S: ~2-3x an H100's 1,041 s for Wan2.2's 720p video
    assert probe_mp4(out.read_bytes())["frames"] == 81  # the stand-in video keeps the length


def test_generate_final_preset_and_size(tmp_path, wan22_dir):
    out = tmp_path / "final.mp4"
    run = _t2v(
        "generate",
        "a ball",
        "-o",
        str(out),
        "--preset",
        "final",
        "--size",
        "96x64",
        "--steps",
        "4",
        "--lora",
        "studio=0.5",
        "--flow-shift",
        "3",
        "--model",
        str(wan22_dir),
    )
    assert run.returncode == 0, run.stderr
    info = probe_mp4(out.read_bytes())
    assert (info["frames"], info["width"], info["height"]) == (33, 96, 64)
    assert "4/4" in run.stderr


def test_generate_bad_input_names_the_field(tmp_path, wan22_dir):
    run = _t2v("generate", "a ball", "-o", str(tmp_path / "x.mp4"), "--frames", "18", "--model", str(wan22_dir))
    assert run.returncode == 2
    assert "num_frames: num_frames must be 4k+1" in run.stderr
    assert not (tmp_path / "x.mp4").exists()
    run = _t2v("generate", "a ball", "--size", "big", "--model", str(wan22_dir))
    assert run.returncode == 2 and "size must be WxH" in run.stderr
    run = _t2v("generate", "a ball", "--lora", "studio=strong", "--model", str(wan22_dir))
    assert run.returncode == 2 and "the scale after '=' must be a number" in run.stderr
    run = _t2v("generate", "a ball", "--lora", "nope", "--model", str(wan22_dir))
    assert run.returncode == 2 and "unknown adapter 'nope'" in run.stderr


def test_model_init_and_first_use_cache(tmp_path):
    run = _t2v("model", "init", "--out", str(tmp_path / "m"))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "m" / "transformer_2" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((tmp_path / "m" / "model_index.json").read_text())["_name_or_path"] == "t2v-world-wan2.2-a14b"
    run = _t2v("model", "init", "--random", "--out", str(tmp_path / "r"))
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "r" / "model_index.json").read_text())["_name_or_path"] == "t2v-tiny-wan2.2-a14b"
    # Without --model, the default is the trained model shipped with the code: nothing is built.
    out = tmp_path / "v.mp4"
    run = _t2v("generate", "a dog", "-o", str(out), "--steps", "2", env={"T2V_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "cache" / "models").exists()
    assert probe_mp4(out.read_bytes())["frames"] == 17


def test_monitor_runs_prometheus_and_stops_with_it(tmp_path):
    """`t2v monitor` becomes Prometheus on monitoring/prometheus.yml: ready to query, and a
    SIGTERM to the command stops Prometheus itself (nothing left listening)."""
    import signal
    import socket
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monitor = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "monitor", "--port", str(port), "--data", str(tmp_path / "tsdb")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline, ready = time.monotonic() + 60, False
        while not ready and time.monotonic() < deadline and monitor.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert ready, f"Prometheus never became ready: {monitor.stdout.read1().decode(errors='replace')[-2000:]}"
        config = httpx.get(f"http://127.0.0.1:{port}/api/v1/status/config").json()["data"]["yaml"]
        assert "prom_metrics_service_discovery.json" in config  # the shipped config, finding Ray's agents
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=30)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2)
    finally:
        if monitor.poll() is None:
            monitor.kill()
