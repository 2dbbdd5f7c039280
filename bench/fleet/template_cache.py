"""The template cache in GPU-seconds per video: 20 variants of one template, cached against the same
requests uncached, in this process on the simulated stages (no Ray). SIMULATED GPUs.

    python -m bench.fleet.template_cache [--size 1280x720] [--gpu h100]

The first variant computes the shared high-noise phase; the others read it from the latent cache and
run only the low-noise steps, the decode and the encoder. Goal <= 0.45 of the uncached GPU-seconds.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.fleet.harness import Shape, add_common_arguments, finish, shape_of, sim_settings
from bench.toolkit import model_settings
from contract.settings import Settings, SimSettings

GOAL = 0.45
# 20 variants of one template, as an ad studio makes them (products x surfaces)
TEMPLATE_VARIANTS = [
    {"product": p, "surface": s}
    for p in ("a red sneaker", "a blue mug", "a green bottle", "a wooden chair", "a silver watch")
    for s in ("a marble table", "a wooden desk", "the sand", "a glass shelf")
]


def bench_template(base: Settings, shape: Shape, gpu: str) -> dict:
    """GPU-seconds per video of template variants, cached against uncached (in this process)."""
    from cluster.pipeline import Pipeline

    work = Path(tempfile.mkdtemp(prefix="fleet-template", dir="/tmp"))
    try:
        settings = sim_settings(base, work, SimSettings(gpu=gpu, time_scale=1e-6), shape)
        pipeline = Pipeline.from_settings(settings)
        spent = {}
        for cache in (False, True):
            before = sum(pipeline.simulated_seconds().values())
            for slots in TEMPLATE_VARIANTS:
                request = pipeline.validator.request(
                    template="product_showcase",
                    slots=slots,
                    width=shape.width,
                    height=shape.height,
                    num_frames=shape.frames,
                    num_inference_steps=shape.steps,
                    cache=cache,
                )
                pipeline(request)
            spent[cache] = (sum(pipeline.simulated_seconds().values()) - before) / len(TEMPLATE_VARIANTS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"uncached_gpu_s": spent[False], "cached_gpu_s": spent[True], "ratio": spent[True] / spent[False]}


def print_line(template: dict) -> None:
    print(
        f"\ntemplate cache, {len(TEMPLATE_VARIANTS)} variants of one template: {template['cached_gpu_s']:.1f} "
        f"against {template['uncached_gpu_s']:.1f} GPU-seconds per video uncached ({template['ratio']:.3f})"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, nodes=False, output=False)
    args = parser.parse_args(argv)
    shape = shape_of(args)
    template = bench_template(model_settings(), shape, args.gpu)
    print_line(template)
    print(f"({shape.size}, SIMULATED {args.gpu} GPUs: cost-model seconds, in process)")
    met = {"template": template["ratio"] <= GOAL}
    return finish(
        "fleet.template_cache", gpu=args.gpu, size=shape.size, template=template, goals={"template": GOAL}, met=met
    )


if __name__ == "__main__":
    main()
