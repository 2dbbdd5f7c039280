"""A check on a real GPU: the stages' times on CUDA in bf16, in under 5 minutes.

    python bench/gpu_check.py [--model DIR] [--device cuda] [--dtype bfloat16] [--ulysses 2] [--cfg 2]
                              [--quantization fp8]

Needs only torch, diffusers and transformers: it loads a diffusers-format Wan2.2 checkpoint
(default: the embedded default model shipped in stages/weights/) with diffusers'
`WanPipeline` and times each stage of a generation - the UMT5 text encoder, the high-noise and
the low-noise expert (`transformer`, `transformer_2`: every forward, per step), the VAE decode -
with the device synchronised around each, at a few sizes. Where the project's own dependencies
are installed too, it then runs the project's in-process pipeline (`cluster.pipeline.Pipeline`,
the stage classes the Serve deployments wrap) on the same device and prints its per-stage
timings beside diffusers'. `--ulysses 2` then runs each expert on two sequence-parallel ranks
(two GPUs, NCCL: stages/parallel.py), `--cfg 2` on two CFG ranks, both together on four, and
prints how far each final latent is from one GPU's, and each expert's seconds a step.
`--quantization fp8` (or int8_weight_only, int8_dynamic) runs the project's pipeline once more with
both experts quantized as they load (torchao, stages/quantization.py), beside the unquantized run.
Nothing here is simulated: these are the device's own seconds.

Prints a table, then one JSON line. `--device cpu --dtype float32` runs it here (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "stages" / "weights" / "t2v-world-wan2.2-a14b"
SIZES = [(64, 64, 17, 10), (128, 128, 33, 20), (256, 256, 33, 20)]  # width, height, frames, steps
PROMPT = "a red ball bouncing on a wooden floor"


class StageClock:
    """Seconds per stage: each timed call waits for the device before and after."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, obj, method: str, stage: str) -> None:
        original = getattr(obj, method)

        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            out = original(*args, **kwargs)
            self.sync()
            self.seconds[stage] += time.perf_counter() - start
            self.calls[stage] += 1
            return out

        setattr(obj, method, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def diffusers_run(model: Path, device: torch.device, dtype: torch.dtype, sizes) -> list[dict]:
    from diffusers import AutoencoderKLWan, WanPipeline

    start = time.perf_counter()
    vae = AutoencoderKLWan.from_pretrained(model, subfolder="vae", torch_dtype=torch.float32)  # as Wan2.2 decodes
    pipe = WanPipeline.from_pretrained(model, vae=vae, torch_dtype=dtype).to(device)
    load = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    clock = StageClock(device)
    clock.wrap(pipe, "encode_prompt", "encode")
    clock.wrap(pipe.transformer, "forward", "high_noise")
    if pipe.transformer_2 is not None:
        clock.wrap(pipe.transformer_2, "forward", "low_noise")
    clock.wrap(pipe.vae, "decode", "decode")
    rows = []
    for width, height, frames, steps in sizes:
        for _warm in (True, False):  # the first call at a size compiles kernels and fills caches
            clock.reset()
            clock.sync()
            start = time.perf_counter()
            pipe(
                PROMPT,
                height=height,
                width=width,
                num_frames=frames,
                num_inference_steps=steps,
                generator=torch.Generator(device).manual_seed(0),
                output_type="np",
            )
            clock.sync()
            total = time.perf_counter() - start
        rows.append(
            {
                "engine": "diffusers",
                "size": f"{width}x{height}",
                "frames": frames,
                "steps": steps,
                "total_s": total,
                "stages_s": dict(clock.seconds),
                "calls": dict(clock.calls),  # forwards per expert (one per guidance branch)
                "load_s": load,
            }
        )
    return rows


def project_run(model: Path, device: str, dtype: str, sizes, quantization: str = "none") -> list[dict] | str:
    """The project's in-process pipeline on the same device (its experts quantized as `quantization`
    says); a reason instead when it cannot run."""
    sys.path.insert(0, str(ROOT))
    try:
        from cluster.pipeline import Pipeline
        from contract.settings import Limits, Settings
    except ImportError as error:
        return f"skipped: the project's dependencies are not installed ({error.name})"
    biggest = max(max(w, h) for w, h, _, _ in sizes)
    limits = Limits(max_height=biggest, max_width=biggest, max_frames=max(f for *_, f, _ in sizes))
    quantized = {"high_noise": quantization, "low_noise": quantization}
    settings = Settings(model=model, device=device, dtype=dtype, limits=limits, quantization=quantized)
    settings = settings.model_copy(update={"cache": settings.cache.model_copy(update={"enabled": False})})
    pipeline = Pipeline.from_settings(settings)
    rows = []
    for width, height, frames, steps in sizes:
        for _warm in (True, False):
            request = pipeline.validator.request(
                prompt=PROMPT, width=width, height=height, num_frames=frames, num_inference_steps=steps, seed=0
            )
            start = time.perf_counter()
            result = pipeline(request)
            total = time.perf_counter() - start
        rows.append(
            {
                "engine": "project" if quantization == "none" else quantization,
                "size": f"{width}x{height}",
                "frames": frames,
                "steps": steps,
                "total_s": total,
                "stages_s": dict(result.timings),
                "calls": dict(result.steps),  # denoising steps per expert
            }
        )
    return rows


def parallel_runs(model: Path, device: str, dtype: str, size, layouts: list[dict]) -> list[dict | str]:
    """One video with each expert on a group of ranks per layout (`{"ulysses": 2}`, `{"cfg": 2}`,
    ...: one GPU a rank, NCCL; processes and gloo on a CPU) against the same video on one: how
    far apart their final latents are, and the stages' seconds a step on the ranks. A reason
    instead where one cannot run."""
    sys.path.insert(0, str(ROOT))
    try:
        from cluster.pipeline import Pipeline
        from contract.settings import Limits, ParallelSettings, Settings
    except ImportError as error:
        return [f"skipped: the project's dependencies are not installed ({error.name})"] * len(layouts)
    width, height, frames, steps = size
    limits = Limits(max_height=max(width, height), max_width=max(width, height), max_frames=frames)
    settings = Settings(model=model, device=device, dtype=dtype, limits=limits)
    settings = settings.model_copy(update={"cache": settings.cache.model_copy(update={"enabled": False})})
    fields = dict(prompt=PROMPT, width=width, height=height, num_frames=frames, num_inference_steps=steps, seed=0)
    one = Pipeline.from_settings(settings)
    expected = one(one.validator.request(**fields)).latents
    results: list[dict | str] = []
    for layout in layouts:
        parallel = ParallelSettings(**layout)
        name = " x ".join(f"{k} {v}" for k, v in layout.items())
        if device.startswith("cuda") and torch.cuda.device_count() < parallel.degree:
            gpus = torch.cuda.device_count()
            results.append(
                f"{name}: skipped, {parallel.degree} ranks need {parallel.degree} GPUs, this machine has {gpus}"
            )
            continue
        ranks = Pipeline.from_settings(settings.with_parallel_experts(parallel))
        try:
            for _warm in (True, False):
                start = time.perf_counter()
                result = ranks(ranks.validator.request(**fields))
                total = time.perf_counter() - start
        finally:
            for expert in (ranks.high_noise_expert, ranks.low_noise_expert):
                if expert is not None:
                    expert.close()
        results.append(
            {
                "engine": "".join(f"{k}{v}" for k, v in layout.items()),
                "layout": name,
                "size": f"{width}x{height}",
                "frames": frames,
                "steps": steps,
                "total_s": total,
                "stages_s": dict(result.timings),
                "calls": dict(result.steps),
                "step_s": {k: result.timings[k] / n for k, n in result.steps.items() if n},
                "max_abs_diff": float((result.latents.float() - expected.float()).abs().max()),
            }
        )
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=EMBEDDED, help="diffusers-format Wan2.x checkpoint directory")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--quick", action="store_true", help="the smallest size only")
    parser.add_argument(
        "--ulysses", type=int, default=0, help="also run each expert on this many ranks (GPUs), e.g. 2 (default: off)"
    )
    parser.add_argument(
        "--cfg",
        type=int,
        default=0,
        choices=[0, 2],
        help="also run each expert on two CFG ranks (with --ulysses: both)",
    )
    parser.add_argument(
        "--quantization",
        default="none",
        choices=["none", "int8_weight_only", "int8_dynamic", "fp8"],
        help="also run the project's pipeline with both experts quantized (fp8: Ada or Hopper GPUs)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: run it where one is, or pass --device cpu --dtype float32 for a smoke run")
    sizes = SIZES[:1] if args.quick else SIZES
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = diffusers_run(args.model, device, getattr(torch, args.dtype), sizes)
    project = project_run(args.model, args.device, args.dtype, sizes)
    if isinstance(project, list):
        rows += project
    if isinstance(project, list) and args.quantization != "none":
        rows += project_run(args.model, args.device, args.dtype, sizes, args.quantization)
    layouts = [{"ulysses": args.ulysses}] if args.ulysses > 1 else []
    layouts += [{"cfg": 2}] if args.cfg == 2 else []
    layouts += [{"ulysses": args.ulysses, "cfg": 2}] if len(layouts) == 2 else []
    parallel = parallel_runs(args.model, args.device, args.dtype, sizes[0], layouts) if layouts else []
    rows += [run for run in parallel if isinstance(run, dict)]

    print(f"== Stage times on {name}, {args.dtype}, {args.model.name} (seconds, second run at each size)")
    print(
        f"{'engine':>16} {'size':>9} {'frames':>6} {'steps':>5} {'encode':>8} {'high':>8} {'low':>8} {'decode':>8} {'total':>8}"
    )
    for r in rows:
        s = r["stages_s"]
        print(
            f"{r['engine']:>16} {r['size']:>9} {r['frames']:>6} {r['steps']:>5} {s.get('encode', 0):>8.3f} "
            f"{s.get('high_noise', 0):>8.3f} {s.get('low_noise', 0):>8.3f} {s.get('decode', 0):>8.3f} "
            f"{r['total_s']:>8.3f}"
        )
    if isinstance(project, str):
        print(f"project pipeline: {project}")
    for run in parallel:
        if isinstance(run, str):
            print(run)
            continue
        per_step = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in run["step_s"].items())
        print(f"{run['layout']}: max |latent difference| to one rank {run['max_abs_diff']:.2e}; a step: {per_step}")
    result = {
        "benchmark": "gpu_check",
        "device": name,
        "dtype": args.dtype,
        "model": args.model.name,
        "torch": torch.__version__,
        "rows": rows,
        "project": project if isinstance(project, str) else "ran",
        "parallel": [run if isinstance(run, str) else run["layout"] for run in parallel],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
