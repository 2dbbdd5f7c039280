"""Strips of frames from generated videos, one row per seed, as a PNG (the README's first picture).

    python -m bench.frames "a red ball bounces on the grass" --out docs/images/red-ball.png \
        [--preset final] [--seeds 1 2 3] [--count 6] [--model DIR]

Runs the prompt through the in-process pipeline on the default model (or `--model`) once per
seed (several seeds, so the picture is not one chosen sample), picks `--count` evenly spaced
frames of each video, and writes them side by side, scaled up 2x with nearest-neighbour so the
pixels stay honest. Prints what `world.reading` reads back from each video.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from bench.toolkit import model_settings
from cluster.pipeline import Pipeline
from contract.request import GenerationRequest
from world.reading import read_clip


def strip(frames: np.ndarray, count: int, scale: int = 2, gap: int = 2) -> np.ndarray:
    """`count` evenly spaced frames side by side on white, each scaled `scale` times."""
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    tiles = [cv2.resize(frames[i], None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for i in picks]
    height, width = tiles[0].shape[:2]
    out = np.full((height, count * width + (count - 1) * gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        out[:, i * (width + gap) : i * (width + gap) + width] = tile
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="final")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args(argv)

    settings = model_settings()
    if args.model:
        settings = settings.model_copy(update={"model": args.model})
    settings = settings.model_copy(update={"cache": settings.cache.model_copy(update={"enabled": False})})
    pipe = Pipeline.from_settings(settings)
    rows, readings = [], []
    for seed in args.seeds:
        request = GenerationRequest.build(settings, prompt=args.prompt, preset=args.preset, seed=seed, cache=False)
        result = pipe(request)
        rows.append(strip(result.frames, args.count))
        reading = read_clip(result.frames).as_dict()
        readings.append({"seed": seed, "read": reading, "physics": round(result.physics.score, 3)})
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    picture = np.concatenate([part for row in rows for part in (row, gap)][:-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), picture[..., ::-1])
    out = {"prompt": args.prompt, "model": pipe.model_id, "preset": args.preset, "videos": readings}
    print(json.dumps(out, ensure_ascii=False))
    return out


if __name__ == "__main__":
    main()
