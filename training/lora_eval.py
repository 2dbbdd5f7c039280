"""What a style adapter does to generated videos, read from their frames.

Generated with diffusers' own `WanPipeline` (the reference the cluster's stages equal), at the
preview preset and the default guidance, from world captions spread over the four settings: once
without the adapter, then with it loaded into each expert it has keys for (by its prefix,
`transformer` / `transformer_2`) at scale 1 and at scale 0. The style's share of the frames
(`world.styles.style_strength`) should rise at scale 1; scale 0 must give the adapter-free frames
exactly; and the reader (`world.reading`) should still find the prompt's object in its colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contract.experts import ExpertKind
from contract.settings import Settings
from training.clips import training_combinations
from world.captions import Phrasing, caption
from world.reading import read_clip
from world.styles import style_strength
from world.vocabulary import SETTINGS

ADAPTER_NAME = "style"
SCALES = (1.0, 0.0)


def eval_prompts(count: int, seed: int = 0) -> list[tuple[dict[str, str], str]]:
    """`count` (attributes, English caption) pairs, the settings in turn: the style replaces each of them."""
    rng = np.random.default_rng(seed)
    combos = training_combinations()
    out = []
    for i in range(count):
        options = [c for c in combos if c["setting"] == SETTINGS[i % len(SETTINGS)]]
        attrs = options[rng.integers(len(options))]
        out.append((attrs, caption(attrs, Phrasing("en", 0, 0))))
    return out


def load_pipeline(model_dir: Path):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(model_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt: str, seed: int, preset: str = "preview") -> np.ndarray:
    """(T, H, W, 3) float frames in [0, 1], with the cluster's defaults for `preset`."""
    settings = Settings()
    p = settings.presets[preset]
    return pipe(
        prompt=prompt,
        negative_prompt=settings.negative_prompt,
        height=p.height,
        width=p.width,
        num_frames=p.num_frames,
        num_inference_steps=p.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        guidance_scale_2=settings.guidance_scale_2,
        max_sequence_length=pipe.tokenizer.model_max_length,  # the checkpoint's text length, as served
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).frames[0]


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def load_adapter(pipe, path: Path, name: str = ADAPTER_NAME) -> list[torch.nn.Module]:
    """Load the LoRA file into each expert it has keys for; returns those experts."""
    from safetensors.torch import load_file

    state = load_file(path)
    loaded = []
    for kind in ExpertKind:
        prefix = kind.subfolder
        if any(k.startswith(prefix + ".") for k in state):
            transformer = getattr(pipe, prefix)
            transformer.load_lora_adapter(state, prefix=prefix, adapter_name=name)
            loaded.append(transformer)
    return loaded


def set_scale(experts: list[torch.nn.Module], scale: float, name: str = ADAPTER_NAME) -> None:
    for transformer in experts:
        transformer.set_adapters([name], weights=[scale])


def measure(frames: list[np.ndarray], cases: list[tuple[dict[str, str], str, int]], style: str) -> dict:
    """Means over clips: the style's share of the pixels, the frames the object was found in, and how
    often the reader gives the prompt's colour, shape and motion."""
    clips = [to_uint8(f) for f in frames]
    readings = [read_clip(c) for c in clips]

    def right(key: str) -> float:
        return round(
            float(np.mean([getattr(r, key) == a[key] for r, (a, _, _) in zip(readings, cases, strict=True)])), 3
        )

    return {
        "style_strength": round(float(np.mean([style_strength(c, style) for c in clips])), 4),
        "object_found": round(float(np.mean([r.found for r in readings])), 3),
        "colour_right": right("color"),
        "shape_right": right("object"),
        "motion_right": right("motion"),
    }


def evaluate(model_dir: Path, adapter: Path, style: str, prompts: int = 8, seeds: int = 2) -> dict:
    """The adapter's effect at the preview preset, over `prompts` captions x `seeds` seeds."""
    pipe = load_pipeline(model_dir)
    cases = [(attrs, text, seed) for attrs, text in eval_prompts(prompts) for seed in range(seeds)]
    runs = {"no_adapter": [generate(pipe, text, seed) for _, text, seed in cases]}
    experts = load_adapter(pipe, adapter)
    for scale in SCALES:
        set_scale(experts, scale)
        runs[f"scale_{scale:g}"] = [generate(pipe, text, seed) for _, text, seed in cases]
    same = all(np.array_equal(a, b) for a, b in zip(runs["no_adapter"], runs["scale_0"], strict=True))
    return {
        "preset": "preview",
        "prompts": list(dict.fromkeys(text for _, text, _ in cases)),
        "seeds": list(range(seeds)),
        "experts_with_adapter": len(experts),
        "scale_0_equals_no_adapter": same,
        **{key: measure(frames, cases, style) for key, frames in runs.items()},
    }
