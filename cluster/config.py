"""The one settings object: everything tunable lives here.

Environment variables (`T2V_*`, nested with `__`, e.g. `T2V_LIMITS__MAX_STEPS=60`)
and YAML files feed it; nothing else in the code base hard-codes sizes or limits.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Preset(BaseModel):
    """A named bundle of generation settings (tiered generation: cheap preview, then final)."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    fps: int = 16


class Limits(BaseModel):
    """Bounds every request is validated against, so one request cannot exhaust memory."""

    min_side: int = 16
    max_height: int = 256
    max_width: int = 256
    max_frames: int = 65
    max_steps: int = 60
    min_fps: int = 1
    max_fps: int = 60
    max_guidance: float = 20.0
    max_prompt_chars: int = 2000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="T2V_", env_nested_delimiter="__", extra="ignore")

    # Model: a diffusers-format Wan2.x T2V directory; None means the embedded default,
    # built on first use into `cache_dir`.
    model: Path | None = None
    model_id: str | None = Field(None, description="Name reported to clients; defaults to the directory name")
    cache_dir: Path = Path.home() / ".cache" / "t2v-cluster"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 on CUDA, fp32 on CPU unless set.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    vae_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_sequence_length: int = 512

    # Generation defaults (Wan2.2 A14B official: 4.0 / 3.0 guidance).
    default_preset: str = "preview"
    guidance_scale: float = 4.0
    guidance_scale_2: float = 3.0
    negative_prompt: str = ""
    presets: dict[str, Preset] = {
        "preview": Preset(height=64, width=64, num_frames=17, num_inference_steps=10),
        "final": Preset(height=128, width=128, num_frames=33, num_inference_steps=20),
    }
    limits: Limits = Limits()

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "Settings":
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls(**{**data, **overrides})


@lru_cache
def get_settings() -> Settings:
    return Settings()
