"""mp4 output: H.264 yuv420p, requested fps and frame count, AI-generated marking."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from stages.video import encode_mp4, probe_mp4, prompt_hash, provenance


def _moving_square(frames=17, size=64) -> np.ndarray:
    video = np.zeros((frames, size, size, 3), np.uint8)
    for i in range(frames):
        video[i, 20:36, 2 * i : 2 * i + 16] = (255, 128, 0)
    return video


def test_mp4_properties_and_metadata():
    data = encode_mp4(_moving_square(), fps=12, metadata=provenance("tiny", 42, "一只橘猫"))
    info = probe_mp4(data)
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert (info["width"], info["height"], info["frames"], info["fps"]) == (64, 64, 17, 12.0)
    meta = info["metadata"]
    assert meta["ai_generated"] == "true" and "AI-generated" in meta["comment"]
    assert (meta["model"], meta["seed"], meta["prompt_sha256"]) == ("tiny", "42", prompt_hash("一只橘猫"))
    assert data[4:8] == b"ftyp" and data.index(b"moov") < data.index(b"mdat")  # faststart


def test_rejects_wrong_frames():
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((3, 16, 16, 3), np.float32), 16, {})


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
def test_ffprobe_reads_it(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(encode_mp4(_moving_square(33), fps=16, metadata=provenance("tiny", 1, "p")))
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    probe = json.loads(out.stdout)
    stream = probe["streams"][0]
    assert (stream["codec_name"], stream["pix_fmt"], stream["nb_read_frames"]) == ("h264", "yuv420p", "33")
    assert stream["avg_frame_rate"] == "16/1"
    assert probe["format"]["tags"]["ai_generated"] == "true"
