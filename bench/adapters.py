"""What LoRA adapters cost an expert: a request without adapters on an expert that never loaded
one and on one holding `adapters.max_loaded` of them; a request with one and with two; the same
adapter set back to back against two sets taking turns; and loading an adapter from the store.

    python -m bench.adapters [--repeats 5] [--steps 10]

Each row is the median seconds of one high-noise phase at the preview size (CPU, the shipped
model and its `studio` / `studio-high` test adapters), all measured in one run, interleaved, so
the ratios hold on a noisy machine. Prints a table, then one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench.toolkit import log, model_settings, rounded
from cluster.pipeline import Pipeline
from contract.adapters import adapters_for
from contract.experts import ExpertKind
from stages.expert import Expert


def phase_seconds(expert: Expert, pipe: Pipeline, request) -> float:
    embeddings = pipe.text_encoder(request.prompt, request.negative_prompt, True, False)
    start = time.perf_counter()
    expert.phase(request, embeddings)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)

    settings = model_settings()
    settings = settings.model_copy(update={"cache": settings.cache.model_copy(update={"enabled": False})})
    pipe = Pipeline.from_settings(settings)
    listing = pipe.validator.adapters.listing()
    names = [n for n, info in listing.items() if info.problem is None and "high_noise" in info.experts]
    log(f"adapters: {names}")

    def request(*lora, seed=1):
        return pipe.validator.request(
            prompt="a red ball bounces on the grass", seed=seed, steps=args.steps, cache=False, lora=list(lora)
        )

    plain = request()
    one = request({"name": "studio"})
    two = request({"name": "studio"}, {"name": "studio-high", "scale": 0.5})
    half = request({"name": "studio", "scale": 0.5})
    fresh = Expert(pipe.checkpoint, ExpertKind.HIGH_NOISE)  # never loads an adapter
    loaded = pipe.high_noise_expert
    for name in names:  # every shipped adapter loaded, none active for `plain`
        loaded.adapters.load([(name, listing[name].revision)])

    rows: dict[str, list[float]] = {
        "no adapter, expert never adapted": [],
        f"no adapter, {len(names)} adapters loaded": [],
        "studio": [],
        "studio + studio-high x0.5": [],
        "studio, same set back to back": [],
        "studio x1 / x0.5 taking turns": [],
    }
    phase_seconds(fresh, pipe, plain)  # warm-up
    for i in range(args.repeats):
        log(f"round {i + 1}/{args.repeats}")
        rows["no adapter, expert never adapted"].append(phase_seconds(fresh, pipe, plain))
        rows[f"no adapter, {len(names)} adapters loaded"].append(phase_seconds(loaded, pipe, plain))
        rows["studio"].append(phase_seconds(loaded, pipe, one))
        rows["studio + studio-high x0.5"].append(phase_seconds(loaded, pipe, two))
        rows["studio, same set back to back"].append(phase_seconds(loaded, pipe, one))
        rows["studio x1 / x0.5 taking turns"].append(phase_seconds(loaded, pipe, half))

    # Loading: a fresh expert's first request with the adapter reads and loads it.
    loads = []
    for _ in range(args.repeats):
        expert = Expert(pipe.checkpoint, ExpertKind.HIGH_NOISE)
        pairs = [(a.name, a.revision) for a in adapters_for(one.lora, ExpertKind.HIGH_NOISE)]
        start = time.perf_counter()
        expert.adapters.load(pairs)
        loads.append(time.perf_counter() - start)

    base = float(np.median(rows["no adapter, expert never adapted"]))
    high_steps = len(pipe.plan(plain).high_noise_steps)
    print(
        f"\nLoRA adapters on the high-noise expert: one phase ({high_steps} of {args.steps} steps, preview size, "
        f"guided, CPU), median of {args.repeats} rounds, interleaved"
    )
    print(f"{'run':<40}{'seconds':>9}{'vs plain':>10}")
    result: dict = {"phase_seconds": {}, "vs_plain": {}}
    for name, values in rows.items():
        median = float(np.median(values))
        result["phase_seconds"][name] = median
        result["vs_plain"][name] = median / base
        print(f"{name:<40}{median:>9.3f}{median / base:>9.2f}x")
    result["load_seconds"] = float(np.median(loads))
    print(f"{'load studio into an expert (from the store)':<40}{result['load_seconds']:>9.3f}")
    result["adapters"] = {n: {"rank": listing[n].rank, "experts": list(listing[n].experts)} for n in names}
    print()
    print(json.dumps(rounded(result)), flush=True)
    return result


if __name__ == "__main__":
    main()
