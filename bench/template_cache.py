"""Template traffic through the Serve app, without and with the latent cache.

    python -m bench.template_cache [--preset preview] [--variants 8]

A workload of 3 templates x N slot variants, shuffled, is sent one request at a time
(POST /v1/videos/sync). Each request runs twice, back to back: cold (`cache: false`: the
full prompt through both experts, as without this feature) and cached (`cache: true`:
the template's high-noise phase is computed once per template, then read). Interleaving
the two keeps machine noise out of the ratio. Reports mean latency both ways and their
ratio (goal <= 0.5, must be <= 0.7), hit rates per cache level from the job records, and,
for information, the PSNR of each template-mode video against its full-prompt twin.
The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

VARIANTS = {
    "product_showcase": (
        "product",
        [
            "red sneakers",
            "a teapot",
            "a watch",
            "a lamp",
            "headphones",
            "a vase",
            "a backpack",
            "a camera",
            "a mug",
            "a bottle",
            "a chair",
            "a book",
        ],
    ),
    "pet_portrait": (
        "animal",
        ["cat", "dog", "rabbit", "parrot", "hamster", "horse", "fox", "owl", "turtle", "goat", "duck", "pony"],
    ),
    "scene": (
        "subject",
        [
            "a woman",
            "a man",
            "a child",
            "a robot",
            "a dancer",
            "a cyclist",
            "a chef",
            "a runner",
            "a knight",
            "a pilot",
            "a painter",
            "a surfer",
        ],
    ),
}


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def frames(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def workload(variants: int, seed: int) -> list[dict]:
    requests = [
        {"template": name, "slots": {slot: value}}
        for name, (slot, values) in VARIANTS.items()
        for value in values[:variants]
    ]
    random.Random(seed).shuffle(requests)
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="preview")
    parser.add_argument("--variants", type=int, default=8, help="slot variants per template (max 12)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed")
    args = parser.parse_args()

    import ray
    from ray import serve

    from cluster.client import T2VClient
    from cluster.launch import deploy, free_port, start_private_ray
    from contract.settings import CacheSettings, ServingSettings, Settings

    work = Path(tempfile.mkdtemp(prefix="t2v-bench-cache-"))
    settings = Settings(
        serving=ServingSettings(port=free_port(), output_uri=str(work / "outputs"), ray_temp_dir="/tmp/t2v-bc"),
        cache=CacheSettings(directory=work / "latents"),  # a cold cache for this run
    )
    start_private_ray(settings.serving.ray_temp_dir, 4, log_to_driver=False)
    try:
        client = T2VClient(deploy(settings))
        client.generate("warm-up", preset=args.preset, cache=False, seed=1)  # load every stage once

        rows = []
        for i, body in enumerate(workload(args.variants, args.seed)):
            row = {"template": body["template"], **body["slots"]}
            for mode, cache in (("cold", False), ("cached", True)):
                start = time.perf_counter()
                video = client.generate(None, **body, preset=args.preset, cache=cache)
                row[f"{mode}_s"] = time.perf_counter() - start
                row[f"{mode}_mp4"] = video
            job = client.list(limit=1)["data"][0]  # the cached run's record: which levels hit
            row["cache"] = job["cache"]
            row["psnr"] = psnr(frames(row["cold_mp4"]), frames(row["cached_mp4"]))
            rows.append(row)
            log(
                f"{i + 1:>3}/{len(VARIANTS) * args.variants} {body['template']:<17} cold {row['cold_s']:.2f}s "
                f"cached {row['cached_s']:.2f}s boundary {'hit' if row['cache'].get('boundary') else 'miss'}"
            )
    finally:
        serve.shutdown()
        ray.shutdown()

    cold = statistics.mean(r["cold_s"] for r in rows)
    cached = statistics.mean(r["cached_s"] for r in rows)
    hits = {
        level: sum(1 for r in rows if r["cache"].get(level)) / len(rows)
        for level in ("embeddings", "boundary", "result")
    }
    psnrs = [r["psnr"] for r in rows]
    print(f"{'template':<18}{'requests':>9}{'cold s':>9}{'cached s':>10}{'ratio':>8}{'PSNR dB':>9}")
    for name in VARIANTS:
        mine = [r for r in rows if r["template"] == name]
        c, h = statistics.mean(r["cold_s"] for r in mine), statistics.mean(r["cached_s"] for r in mine)
        print(
            f"{name:<18}{len(mine):>9}{c:>9.3f}{h:>10.3f}{h / c:>8.2f}{statistics.mean(r['psnr'] for r in mine):>9.1f}"
        )
    print(f"{'all':<18}{len(rows):>9}{cold:>9.3f}{cached:>10.3f}{cached / cold:>8.2f}{statistics.mean(psnrs):>9.1f}")
    print("hit rates: " + ", ".join(f"{level} {rate:.0%}" for level, rate in hits.items()))
    print(
        json.dumps(
            {
                "benchmark": "cache",
                "preset": args.preset,
                "requests": len(rows),
                "cold_mean_s": round(cold, 4),
                "cached_mean_s": round(cached, 4),
                "latency_ratio": round(cached / cold, 3),
                "hit_rates": {k: round(v, 3) for k, v in hits.items()},
                "psnr_template_vs_full_db": round(statistics.mean(psnrs), 2),
                "goal": 0.5,
                "limit": 0.7,
                "met": cached / cold <= 0.5,
                "within_limit": cached / cold <= 0.7,
            }
        )
    )


if __name__ == "__main__":
    main()
