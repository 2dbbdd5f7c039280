"""mp4 output: H.264 / yuv420p, marked as AI-generated in the container metadata."""

from __future__ import annotations

import hashlib
import io
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AI_GENERATED_COMMENT = "AI-generated video"


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def provenance(model_id: str, seed: int, prompt: str) -> dict[str, str]:
    """Container tags every output carries: what made it, from what, and that it is synthetic."""
    return {
        "comment": f"{AI_GENERATED_COMMENT}; model={model_id}; seed={seed}",
        "ai_generated": "true",
        "generator": "t2v-cluster",
        "model": model_id,
        "seed": str(seed),
        "prompt_sha256": prompt_hash(prompt),
    }


def encode_mp4(frames: np.ndarray, fps: int, metadata: dict[str, str], crf: int = 18) -> bytes:
    """uint8 frames (T, H, W, 3) -> mp4 bytes. H and W must be even (yuv420p)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    # A real file, not BytesIO: faststart (moov first, so browsers play while downloading)
    # rewrites the file at close. use_metadata_tags keeps our custom keys.
    with tempfile.NamedTemporaryFile(suffix=".mp4") as out:
        _write(out.name, frames, fps, metadata, crf)
        return Path(out.name).read_bytes()


def _write(path: str, frames: np.ndarray, fps: int, metadata: dict[str, str], crf: int) -> None:
    with av.open(path, mode="w", format="mp4", options={"movflags": "use_metadata_tags+faststart"}) as container:
        container.metadata.update(metadata)
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "fast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def probe_mp4(data: bytes) -> dict:
    """Frame count, size, fps, codec and metadata of an mp4, read back with PyAV."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(stream.average_rate),
            "frames": frames,
            "metadata": dict(container.metadata),
        }
