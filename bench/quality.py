"""What the default model makes, judged from its frames: held-out prompts in English and Chinese, both presets,
and what each speed feature costs in quality on the same prompts.

    python -m bench.quality [--prompts 34] [--final-prompts 16] [--model DIR]
    python -m bench.quality --prompts 0 --final-prompts 0 --adapter-prompts 0 --shot-prompts 0 \
        --features 16 --only quantization      # one feature's rows against the plain path

Prompts are (colour, object, motion, setting) combinations the training set never held
(`world.scene.held_out_combinations`), each with a camera, in sentence frames the training
captions never used (`world.captions`, held-out frames). `world.reading` reads every video
back - the object's colour and shape, its motion from the tracked centroid with the camera's
shift taken out, the setting - and each is compared with what was asked. Also: the physics
score of every video (`monitoring.physics`, as served) and the share of near-static videos
where motion was asked for. Each preset and language also gets a row of its static-camera
prompts and one of its panning ones: a pan moves everything in the frame, so motion is read
against the camera's estimated shift there, and the camera itself is read right or wrong only
where it moves (`TARGETS`).

Speed features, on the preview prompts in English (each against the plain path, same seeds):
- template: the `world` template, its high-noise phase shared from the base prompt through
  the latent cache (slot adherence: does a cached `red` template still make a red object?);
- step caches: FirstBlockCache and TaylorSeer on both experts;
- batching: the requests run four at a time through the experts' step batcher;
- repair: `min_physics_score` with two re-samples of the detail phase;
- quantization: both experts' weights in int8 (torchao, `quantization` settings), weight-only and
  with dynamic int8 activations.

A distilled few-step adapter (`--distilled fast`, `t2v model train-distill`; skipped when the
adapter store has none): the held-out preview prompts in each language through the adapter (4
steps, no guidance, as its adapter.json says) against the 10-step guided preview that taught it,
time per video included; and a 4-step preview made final by the distilled low-noise expert (the
shot's adapter again) and by the full one (`lora: []`: the final preset's guided steps).

The ad studio's workflow, on moving held-out prompts (`--adapter-prompts`, `--shot-prompts`):
- the `studio` LoRA pair (stages/weights/test-adapters, `t2v model train-lora`) at scales
  0, 0.5 and 1 against no adapter: how much of the frames show its backdrop
  (`world.styles.style_strength`), whether the object still reads right, and whether scale 0
  gives the base model's frames bit for bit;
- preview -> final of the same shot (`from`) against a plain final with the same seed and
  shape: how much of the preview each keeps (`world.reading.shot_difference`: colour, object,
  motion, the tracked object's path frame by frame), its detail, and the denoising it costs.
Prints tables, then one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.toolkit import log, model_settings, rounded
from cluster.pipeline import Pipeline
from contract.settings import QuantizationSettings, Settings, StepCacheSettings
from world.captions import EN, caption, phrasings
from world.reading import read_clip, shot_difference
from world.scene import held_out_combinations
from world.styles import style_strength
from world.vocabulary import CAMERAS

KEYS = ("color", "object", "motion", "setting", "camera")
CAMERA_ROWS = ("static camera", "panning")  # each preset and language's prompts by camera, apart
# What the default model should read back as, at preview, in each language
TARGETS = {
    "static camera": {"motion": 0.85, "object": 0.90, "color": 0.95, "setting": 0.95},
    "panning": {"motion": 0.75, "camera": 0.80},
}
PHYSICS_TARGET = 0.8  # mean score of the generated videos (the world's own clips score 0.86)
SHARED_STEPS = (None, 4, 2, 1)  # template_shared_steps (None: the whole high-noise phase)
STEP_CACHES = {
    "first_block 0.05": StepCacheSettings(kind="first_block", options={"threshold": 0.05}),
    "taylorseer 2": StepCacheSettings(kind="taylorseer", options={"cache_interval": 2, "disable_cache_before_step": 2}),
}

QUANTIZED = {
    "int8 weight-only": QuantizationSettings(high_noise="int8_weight_only", low_noise="int8_weight_only"),
    "int8 dynamic": QuantizationSettings(high_noise="int8_dynamic", low_noise="int8_dynamic"),
}
FEATURES = ("template", "step_cache", "batching", "repair", "quantization")


def prompts(language: str, count: int) -> list[tuple[dict[str, str], str, int]]:
    """(attributes, prompt, seed): held-out combinations in held-out phrasings, cameras in turn."""
    held = held_out_combinations()
    options = phrasings(language, held_out=True)
    out = []
    for i in range(count):
        attrs = held[i % len(held)] | {"camera": CAMERAS[i % len(CAMERAS)]}
        out.append((attrs, caption(attrs, options[(i * 5) % len(options)]), 1000 + i))
    return out


def camera_row(camera: str) -> str:
    return "static camera" if camera == "static" else "panning"


def template_slots(attrs: dict[str, str]) -> dict[str, str]:
    """The `world` template's slots for a combination (its plain wordings), camera left out."""
    return {k: EN[k][attrs[k]][0] for k in ("color", "object", "motion", "setting")}


def judge(attrs: dict[str, str], frames: np.ndarray) -> dict:
    reading = read_clip(frames)
    right = {k: getattr(reading, k) == attrs[k] for k in KEYS}
    moving = attrs["motion"] != "stays still"
    return {"right": right, "static": moving and reading.static, "moving": moving, "reading": reading.as_dict()}


def summary(rows: list[dict]) -> dict:
    moving = [r for r in rows if r["moving"]]
    out = {k: float(np.mean([r["right"][k] for r in rows])) for k in KEYS}
    out["physics"] = float(np.mean([r["physics"] for r in rows]))
    out["static_when_moving"] = float(np.mean([r["static"] for r in moving])) if moving else 0.0
    out["seconds"] = float(np.median([r["seconds"] for r in rows]))
    out["videos"] = len(rows)
    return out


def run(pipe: Pipeline, settings: Settings, cases, preset: str, **fields) -> list[dict]:
    rows = []
    for attrs, prompt, seed in cases:
        # A template's requests take its seed: that is how they meet in the cache.
        seeded = {} if fields.get("template") else {"seed": seed}
        request = pipe.validator.request(preset=preset, **seeded, **fields_for(prompt, attrs, fields))
        start = time.perf_counter()
        result = pipe(request)
        row = judge(attrs, result.frames)
        row.update(
            physics=result.physics.score,
            seconds=time.perf_counter() - start,
            prompt=request.prompt,
            camera=attrs["camera"],
        )
        rows.append(row)
    return rows


def fields_for(prompt: str, attrs: dict[str, str], fields: dict) -> dict:
    if fields.get("template"):
        return {**fields, "slots": template_slots(attrs)}
    return {"prompt": prompt, **fields}


def run_batched(pipe: Pipeline, settings: Settings, cases, preset: str, width: int = 4) -> list[dict]:
    """The same requests, `width` at a time, through experts that batch concurrent steps."""
    batched = Pipeline(pipe.checkpoint, None, batching=True)
    with ThreadPoolExecutor(width) as pool:
        return list(pool.map(lambda case: run(batched, settings, [case], preset, cache=False)[0], cases))


def table(results: dict[str, dict]) -> None:
    header = (
        f"{'run':<26}{'videos':>7}" + "".join(f"{k:>9}" for k in KEYS) + f"{'physics':>9}{'static':>8}{'s/video':>9}"
    )
    print(header)
    for name, row in results.items():
        cells = "".join(f"{row[k] * 100:>8.0f}%" for k in KEYS)
        print(
            f"{name:<26}{row['videos']:>7}{cells}{row['physics']:>9.3f}"
            f"{row['static_when_moving'] * 100:>7.0f}%{row['seconds']:>9.2f}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=34, help="preview prompts per language")
    parser.add_argument("--final-prompts", type=int, default=16, help="final prompts per language")
    parser.add_argument("--features", type=int, default=None, help="prompts for the speed features (default: all)")
    parser.add_argument("--adapter-prompts", type=int, default=8, help="prompts for the studio adapter")
    parser.add_argument("--shot-prompts", type=int, default=8, help="moving prompts for preview -> final")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--only", nargs="+", choices=FEATURES, default=FEATURES, help="speed features to measure")
    parser.add_argument("--distilled", default="fast", help="a few-step adapter to measure against its teacher")
    parser.add_argument("--distilled-prompts", type=int, default=None, help="its prompts (default: --prompts)")
    args = parser.parse_args(argv)

    base = model_settings()
    if args.model:
        base = base.model_copy(update={"model": args.model})
    cache_dir = Path(tempfile.mkdtemp(prefix="t2v-quality-"))
    plain = base.model_copy(update={"cache_dir": cache_dir, "cache": base.cache.model_copy(update={"enabled": False})})
    pipe = Pipeline.from_settings(plain)
    results: dict[str, dict] = {}
    rows: dict[str, list[dict]] = {}
    for preset, count in (("preview", args.prompts), ("final", args.final_prompts)):
        for language in ("en", "zh") if count else ():
            name = f"{preset} {language}"
            log(f"{name}: {count} held-out prompts")
            rows[name] = run(pipe, plain, prompts(language, count), preset, cache=False)
            results[name] = summary(rows[name])
            for kind in CAMERA_ROWS:
                if picked := [r for r in rows[name] if camera_row(r["camera"]) == kind]:
                    results[f"{name}, {kind}"] = summary(picked)

    cases = prompts("en", args.prompts if args.features is None else args.features)
    if cases:
        features(results, pipe, base, plain, cache_dir, cases, args.only)
        # The plain path on the same prompts: the first rows of "preview en" when it ran them.
        same = rows.get("preview en", [])[: len(cases)]
        if len(same) < len(cases):
            same = run(pipe, plain, cases, "preview", cache=False)
        results["preview en (same prompts)"] = summary(same)

    if results:
        print(f"\nquality of the default model from its frames ({pipe.model_id}); held-out combinations and phrasings")
        table(results)
    result = {"model": pipe.model_id, "results": results, "targets": targets(results, rows)}
    count = args.prompts if args.distilled_prompts is None else args.distilled_prompts
    if count and args.distilled in pipe.validator.adapters.listing():
        result["distilled"] = distilled_rows(pipe, plain, args.distilled, count, rows)
        distilled_table(result["distilled"], args.distilled)
        if args.shot_prompts:
            log(f"a {args.distilled} preview made final two ways: {args.shot_prompts} moving prompts")
            result["distilled_shots"] = distilled_shot_rows(pipe, args.distilled, moving_prompts(args.shot_prompts))
            distilled_shot_table(result["distilled_shots"])
    if args.adapter_prompts:
        log(f"studio adapter: {args.adapter_prompts} prompts at scales 0, 0.5, 1")
        result["adapters"] = adapter_rows(pipe, moving_prompts(args.adapter_prompts))
        adapter_table(result["adapters"])
    if args.shot_prompts:
        log(f"preview -> final: {args.shot_prompts} moving prompts")
        result["shots"] = shot_rows(pipe, moving_prompts(args.shot_prompts), plain.finalize_strength)
        shot_table(result["shots"])
    print()
    print(json.dumps(rounded(result)), flush=True)
    return result


def moving_prompts(count: int) -> list[tuple[dict[str, str], str, int]]:
    """The first `count` held-out English prompts whose object moves (a still one has no path to keep)."""
    cases = [c for c in prompts("en", 4 * count) if c[0]["motion"] != "stays still"]
    return cases[:count]


ADAPTER = "studio"  # the shipped test adapter pair
ADAPTER_SCALES = (None, 0.0, 0.5, 1.0)  # None: no adapter


def adapter_rows(pipe: Pipeline, cases) -> dict:
    """The studio adapter's effect: its backdrop's share of the pixels, the object read right or not,
    and scale 0 against no adapter, frame for frame."""
    out, base = {}, {}
    for scale in ADAPTER_SCALES:
        rows = []
        for attrs, prompt, seed in cases:
            lora = [] if scale is None else [{"name": ADAPTER, "scale": scale}]
            start = time.perf_counter()
            result = pipe(pipe.validator.request(prompt=prompt, seed=seed, preset="preview", cache=False, lora=lora))
            row = judge(attrs, result.frames)
            row.update(physics=result.physics.score, seconds=time.perf_counter() - start)
            row["style"] = style_strength(result.frames)
            if scale is None:
                base[seed] = result.frames
            else:
                row["same_as_base"] = bool(np.array_equal(result.frames, base[seed]))
            rows.append(row)
        name = "no adapter" if scale is None else f"{ADAPTER} x{scale:g}"
        out[name] = summary(rows) | {
            "style": float(np.mean([r["style"] for r in rows])),
            **({"same_as_base": float(np.mean([r["same_as_base"] for r in rows]))} if scale is not None else {}),
        }
    return out


def adapter_table(rows: dict) -> None:
    print(f"\nLoRA adapter '{ADAPTER}' (both experts), preview preset, {rows['no adapter']['videos']} prompts")
    print(
        f"{'run':<16}{'backdrop':>9}"
        + "".join(f"{k:>9}" for k in KEYS[:3])
        + f"{'physics':>9}{'= base':>8}{'s/video':>9}"
    )
    for name, row in rows.items():
        same = f"{row['same_as_base'] * 100:>7.0f}%" if "same_as_base" in row else f"{'-':>8}"
        cells = "".join(f"{row[k] * 100:>8.0f}%" for k in KEYS[:3])
        print(f"{name:<16}{row['style'] * 100:>8.0f}%{cells}{row['physics']:>9.3f}{same}{row['seconds']:>9.2f}")


def detail(frames: np.ndarray) -> float:
    """Mean absolute Laplacian of the grey frames: edges and texture (a blurry upscale has little)."""
    import cv2

    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in frames]
    return float(np.mean([np.abs(cv2.Laplacian(g, cv2.CV_32F)).mean() for g in grey]))


def upscaled(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames])


def shot_rows(pipe: Pipeline, cases, strength: float) -> dict:
    """Preview -> final of the same shot against a plain final of the same seed and shape."""
    runs: dict[str, list[dict]] = {"final of the preview": [], "plain final, same seed": [], "preview, upscaled": []}
    for attrs, prompt, seed in cases:
        preview = pipe(pipe.validator.request(prompt=prompt, seed=seed, preset="preview", cache=False))
        seen = read_clip(preview.frames)
        final = pipe.final_of(preview, cache=False)
        plain = pipe(final.request.model_copy(update={"from_video": None}))
        size = (final.request.width, final.request.height)
        for name, result, frames in (
            ("final of the preview", final, final.frames),
            ("plain final, same seed", plain, plain.frames),
            ("preview, upscaled", preview, upscaled(preview.frames, size)),
        ):
            row = shot_difference(seen, read_clip(frames)) | judge(attrs, frames)
            row["detail"] = detail(frames)
            row["physics"] = result.physics.score
            row["steps"] = sum(result.steps.values())
            row["denoise_seconds"] = result.timings.get("high_noise", 0) + result.timings.get("low_noise", 0)
            runs[name].append(row)
    out = {name: shot_summary(rows) for name, rows in runs.items()}
    final, plain = out["final of the preview"], out["plain final, same seed"]
    out["saved"] = {
        "strength": strength,
        "steps": 1 - final["steps"] / plain["steps"],
        "denoise_seconds": 1 - final["denoise_seconds"] / plain["denoise_seconds"],
        # the preview's own denoising counted too (at its smaller size), as if it were made for this final alone
        "with_preview_seconds": 1
        - (final["denoise_seconds"] + out["preview, upscaled"]["denoise_seconds"]) / plain["denoise_seconds"],
    }
    return out


def shot_summary(rows: list[dict]) -> dict:
    """Means of a shot's rows: what of the preview each final keeps, reads right, its detail and cost."""
    mean = lambda key: float(np.nanmean([r[key] for r in rows]))  # noqa: E731
    return {
        "keeps_color": mean("color"),
        "keeps_object": mean("object"),
        "keeps_motion": mean("motion"),
        "path": mean("path"),
        "path_max": mean("path_max"),
        "right": {k: float(np.mean([r["right"][k] for r in rows])) for k in KEYS[:3]},
        "detail": mean("detail"),
        "physics": mean("physics"),
        "steps": mean("steps"),
        "denoise_seconds": mean("denoise_seconds"),
        "videos": len(rows),
    }


def shot_table(rows: dict) -> None:
    saved = rows["saved"]
    print(
        f"\npreview -> final of the same shot (strength {saved['strength']}), {rows['plain final, same seed']['videos']} "
        "moving prompts; kept = same as the preview; path = tracked object's distance from the preview's, frame heights"
    )
    header = f"{'run':<24}{'colour':>8}{'object':>8}{'motion':>8}{'path':>7}{'path max':>9}{'detail':>8}"
    print(header + f"{'physics':>8}{'steps':>7}{'denoise s':>10}")
    for name, row in rows.items():
        if name == "saved":
            continue
        kept = "".join(f"{row[k] * 100:>7.0f}%" for k in ("keeps_color", "keeps_object", "keeps_motion"))
        print(
            f"{name:<24}{kept}{row['path']:>7.3f}{row['path_max']:>9.3f}{row['detail']:>8.2f}"
            f"{row['physics']:>8.3f}{row['steps']:>7.1f}{row['denoise_seconds']:>10.2f}"
        )
    print(
        f"saved against the plain final: {saved['steps'] * 100:.0f} % of the denoising steps, "
        f"{saved['denoise_seconds'] * 100:.0f} % of the denoising time ({saved['with_preview_seconds'] * 100:.0f} % "
        "counting the preview's too)"
    )


# A distilled adapter against its teacher (issue goals): time, and quality points it may give up.
DISTILLED_TARGETS = {
    "seconds_ratio": 0.3,
    "color": -0.05,
    "setting": -0.05,
    "motion": 0.0,
    "object": 0.0,
    "physics": -0.05,
}


def distilled_rows(pipe: Pipeline, plain: Settings, adapter: str, count: int, rows: dict) -> dict:
    """Each language's held-out preview prompts through `adapter` (its own steps and guidance),
    against the guided preview of the same prompts and seeds: summaries, and the targets met."""
    out = {}
    for language in ("en", "zh"):
        cases = prompts(language, count)
        teacher = rows.get(f"preview {language}", [])[:count]
        if len(teacher) < count:
            log(f"teacher, preview {language}: {count} prompts")
            teacher = run(pipe, plain, cases, "preview", cache=False)
        log(f"distilled '{adapter}', {language}: {count} prompts")
        student = run(pipe, plain, cases, "preview", cache=False, lora=[{"name": adapter}])
        ours, theirs = summary(student), summary(teacher)
        delta = {k: ours[k] - theirs[k] for k in ("color", "setting", "motion", "object", "physics")}
        ratio = ours["seconds"] / theirs["seconds"]
        met = {k: delta[k] >= floor for k, floor in DISTILLED_TARGETS.items() if k != "seconds_ratio"}
        met["seconds_ratio"] = ratio <= DISTILLED_TARGETS["seconds_ratio"]
        out[language] = {"teacher": theirs, "student": ours, "delta": delta, "seconds_ratio": ratio, "met": met}
    return out


def distilled_table(rows: dict, adapter: str) -> None:
    print(f"\ndistilled adapter '{adapter}' against its teacher (the guided preview), same prompts and seeds")
    table({f"{who} {lang}": row[who] for lang, row in rows.items() for who in ("teacher", "student")})
    for lang, row in rows.items():
        missed = [k for k, ok in row["met"].items() if not ok]
        print(
            f"{lang}: time {row['seconds_ratio']:.2f}x the teacher's; "
            + ", ".join(
                f"{k} {v * 100:+.0f} pts" if k != "physics" else f"physics {v:+.3f}" for k, v in row["delta"].items()
            )
            + (f"; missed: {', '.join(missed)}" if missed else "; every target met")
        )


def distilled_shot_rows(pipe: Pipeline, adapter: str, cases) -> dict:
    """A preview made by `adapter`, made final by the adapter's low-noise expert (its 4 steps) and by
    the full one (no adapter: the final preset's guided steps): what each keeps, its detail, its time."""
    runs: dict[str, list[dict]] = {f"final with '{adapter}'": [], "final, full low-noise expert": []}
    for attrs, prompt, seed in cases:
        preview = pipe(
            pipe.validator.request(prompt=prompt, seed=seed, preset="preview", cache=False, lora=[{"name": adapter}])
        )
        seen = read_clip(preview.frames)
        for name, fields in zip(runs, ({}, {"lora": []}), strict=True):
            final = pipe.final_of(preview, cache=False, **fields)
            row = shot_difference(seen, read_clip(final.frames)) | judge(attrs, final.frames)
            row.update(
                detail=detail(final.frames),
                physics=final.physics.score,
                steps=sum(final.steps.values()),
                denoise_seconds=final.timings.get("low_noise", 0.0),
            )
            runs[name].append(row)
    return {name: shot_summary(rows) for name, rows in runs.items()}


def distilled_shot_table(rows: dict) -> None:
    videos = next(iter(rows.values()))["videos"]
    print(f"\na 4-step preview made final, {videos} moving prompts; kept = same as the preview")
    print(
        f"{'run':<32}{'colour':>8}{'object':>8}{'motion':>8}{'path':>7}{'detail':>8}{'physics':>8}{'steps':>7}{'denoise s':>10}"
    )
    for name, row in rows.items():
        kept = "".join(f"{row[k] * 100:>7.0f}%" for k in ("keeps_color", "keeps_object", "keeps_motion"))
        print(
            f"{name:<32}{kept}{row['path']:>7.3f}{row['detail']:>8.2f}{row['physics']:>8.3f}"
            f"{row['steps']:>7.1f}{row['denoise_seconds']:>10.2f}"
        )


def features(
    results: dict, pipe: Pipeline, base: Settings, plain: Settings, cache_dir: Path, cases, only=FEATURES
) -> None:
    """The speed features' rows (those in `only`), on `cases` at the preview preset."""
    if "template" in only:
        template_rows(results, pipe, base, plain, cache_dir, cases)
    for name, step_cache in STEP_CACHES.items() if "step_cache" in only else ():
        log(f"step cache {name}")
        settings = plain.model_copy(update={"step_cache": step_cache})
        results[f"step cache {name}"] = summary(
            run(Pipeline.from_settings(settings), settings, cases, "preview", cache=False)
        )
    if "batching" in only:
        log("batching, 4 at a time")
        results["batching x4"] = summary(run_batched(pipe, plain, cases, "preview"))
    if "repair" in only:
        log("repair: min_physics_score 0.9, 2 re-samples")
        results["repair (min 0.9)"] = summary(
            run(pipe, plain, cases, "preview", cache=False, min_physics_score=0.9, max_retries=2)
        )
    for name, quantization in QUANTIZED.items() if "quantization" in only else ():
        log(f"quantization: {name}")
        settings = plain.model_copy(update={"quantization": quantization})
        results[f"experts {name}"] = summary(
            run(Pipeline.from_settings(settings), settings, cases, "preview", cache=False)
        )


def template_rows(results: dict, pipe: Pipeline, base: Settings, plain: Settings, cache_dir: Path, cases) -> None:
    """The same combinations through the `world` template (its seed), cold, then sharing k of the
    high-noise steps from the base prompt through the cache."""
    log("template: uncached")
    results["template, uncached"] = summary(run(pipe, plain, cases, "preview", template="world", cache=False))
    for k in SHARED_STEPS:
        log(f"template: sharing {k or 'all'} high-noise steps")
        cache = base.cache.model_copy(update={"enabled": True, "template_shared_steps": k})
        settings = base.model_copy(update={"cache_dir": Path(tempfile.mkdtemp(dir=cache_dir)), "cache": cache})
        shared = Pipeline.from_settings(settings)
        results[f"template, shares {k or 'all'} steps"] = summary(
            run(shared, settings, cases, "preview", template="world")
        )


def targets(results: dict, rows: dict) -> dict:
    if not all(f"{preset} {lang}" in results for preset in ("preview", "final") for lang in ("en", "zh")):
        return {}
    physics = float(np.mean([r["physics"] for name in rows for r in rows[name]]))
    return {
        **{
            kind: all(
                results[f"preview {lang}, {kind}"][k] >= goal for lang in ("en", "zh") for k, goal in goals.items()
            )
            if all(f"preview {lang}, {kind}" in results for lang in ("en", "zh"))
            else None  # too few prompts for a row of this kind
            for kind, goals in TARGETS.items()
        },
        "final_within_5_points": all(
            results[f"preview {lang}"][k] - results[f"final {lang}"][k] <= 0.05
            for lang in ("en", "zh")
            for k in ("color", "object", "motion", "setting")
        ),
        "physics_mean": physics,
        "physics_mean_met": physics >= PHYSICS_TARGET,
        "template_within_5_points": {
            name: all(
                results["template, uncached"][k] - row[k] <= 0.05 for k in ("color", "object", "motion", "setting")
            )
            for name, row in results.items()
            if name.startswith("template, shares")
        },
    }


if __name__ == "__main__":
    main()
