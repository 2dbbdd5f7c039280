"""The whole recipe, from a seed: text encoder -> VAE -> latents -> both experts (side by side) -> a light decoder
for the VAE's encoder -> diffusers layout.

Each stage leaves its result in the work directory and is skipped when run again; the long
ones (VAE, experts) also leave a snapshot every 200 steps. So a stopped run resumes where it
stopped. A run may also start from the text encoder and VAE of a model this recipe trained
(`reuse`): the experts then train anew on the same latent space.

The high-noise expert alone decides layout and motion, so it gets the most steps; it takes the
low-noise expert's core when that one is done, and every `eval_every` steps its videos are read
back (training/progress.py) into the log.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from pydantic import BaseModel, Field

from stages.cpu_convolution import use_onednn_conv3d
from stages.cpu_rms_norm import use_rsqrt_rms_norm
from stages.default_model import DECODER_BASE_DIM, SEED, build_default_pipeline, save_pipeline
from training.clips import training_combinations
from training.decoder import train_decoder, with_light_decoder
from training.experts import train_expert
from training.flow_matching import TextTable
from training.latents import encode_clips
from training.progress import Progress
from training.snapshots import Snapshots
from training.text import caption_table, embed_captions, pretrain_text_encoder
from training.vae import latent_statistics, read_back, train_vae

TRAINED_MODEL_NAME = "t2v-world-wan2.2-a14b"


class TrainingPlan(BaseModel):
    """How long each stage trains. The defaults are the shipped model's (about an hour on two cores)."""

    seed: int = SEED
    text_steps: int = Field(600, ge=1)
    vae_steps: int = Field(3000, ge=1)
    decoder_steps: int = Field(4000, ge=1)  # the light decoder, against the finished encoder
    statistics_clips: int = Field(64, ge=1)  # encoded to measure the latents' mean and std
    preview_clips: int = Field(4000, ge=2)  # 17 frames of 64x64
    final_clips: int = Field(600, ge=0)  # 33 frames of 128x128: teaches the experts the final shape
    high_steps: int = Field(8000, ge=1)
    low_steps: int = Field(4000, ge=1)
    # Each latent cell the object touches counts this much more in the experts' loss (the motion is there).
    object_weight: float = Field(4.0, ge=0)
    eval_every: int = Field(1000, ge=0)  # high-noise steps between readings of its videos (0: none)
    eval_per_motion: int = Field(2, ge=1)  # held-out prompts of each motion, per language
    eval_clips: int = Field(24, ge=1)  # world clips the decoder's reconstructions are read back on
    preview_batch: int = Field(16, ge=1)
    final_batch: int = Field(4, ge=1)
    final_share: float = Field(0.2, ge=0, le=1)  # of each expert's steps
    # The shipped scheduler's flow shift, a sampling setting chosen with bench/quality.py: Wan's 12
    # leaves the low-noise expert 3 of 10 preview steps; 5 gives it 5 and reads back better.
    flow_shift: float = Field(5.0, gt=0)

    @classmethod
    def quick(cls) -> TrainingPlan:
        """A few steps of everything: the recipe's test."""
        return cls(
            text_steps=3,
            vae_steps=2,
            decoder_steps=2,
            statistics_clips=2,
            preview_clips=4,
            final_clips=2,
            high_steps=3,
            low_steps=2,
            eval_every=3,
            eval_per_motion=1,
            eval_clips=2,
            preview_batch=2,
            final_batch=1,
        )


def load_parts(pipe, work: Path) -> None:
    """The trained text encoder and VAE (with its latent statistics; its light decoder once trained)
    from the work directory into `pipe`."""
    pipe.text_encoder.load_state_dict(torch.load(work / "text_encoder.pt"))
    saved = torch.load(work / "decoder.pt" if (work / "decoder.pt").exists() else work / "vae.pt")
    vae = AutoencoderKLWan.from_config(saved["config"])
    vae.load_state_dict(saved["state"])
    vae.register_to_config(latents_mean=saved["mean"], latents_std=saved["std"])
    pipe.register_modules(vae=vae.eval())


def _save_vae(vae, path: Path, mean: list[float], std: list[float]) -> None:
    config = json.loads(vae.to_json_string())  # plain JSON: torch.load's weights_only reads it back
    torch.save({"config": config, "state": vae.state_dict(), "mean": mean, "std": std}, path)


def _after_high_noise_step(work: Path, plan: TrainingPlan, threads: int):
    progress = None

    def after(step: int, ema: torch.nn.Module) -> dict | None:
        nonlocal progress
        if step % 50 == 0 and torch.get_num_threads() == threads and (work / "low.pt").exists():
            torch.set_num_threads(os.cpu_count() or threads)  # the low-noise expert is done: its core is free
        if plan.eval_every and (step % plan.eval_every == 0 or step == plan.high_steps):
            if progress is None:
                pipe = build_default_pipeline()
                load_parts(pipe, work)
                use_rsqrt_rms_norm(use_onednn_conv3d(pipe.vae))
                pipe.scheduler.register_to_config(flow_shift=plan.flow_shift)
                progress = Progress(pipe, work, "high", plan.eval_per_motion)
            return progress(step, ema.state_dict())
        return None

    return after


def _expert_worker(args) -> dict:
    """Train one expert in its own process; leaves `<expert>.pt` (its EMA weights) and `<expert>.json` (its loss)."""
    expert, config, work, plan, boundary, position = args
    from diffusers import WanTransformer3DModel

    threads = max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(threads)
    torch.manual_seed(plan.seed + (1 if expert == "high" else 2))
    transformer = WanTransformer3DModel.from_config(config)
    text = torch.load(work / "captions.pt", weights_only=False)
    sets = [(torch.load(work / "latents_preview.pt", weights_only=False), plan.preview_batch, 1 - plan.final_share)]
    if plan.final_clips and plan.final_share > 0:
        sets.append((torch.load(work / "latents_final.pt", weights_only=False), plan.final_batch, plan.final_share))
    seed = plan.seed + (10 if expert == "high" else 20)
    snapshots = Snapshots(work / f"{expert}.snapshot.pt")
    losses, state = train_expert(
        transformer,
        expert,
        sets,
        text,
        boundary,
        plan.high_steps if expert == "high" else plan.low_steps,
        seed,
        position=position,
        snapshots=snapshots,
        object_weight=plan.object_weight,
        after_step=_after_high_noise_step(work, plan, threads) if expert == "high" else None,
    )
    tmp = work / f"{expert}.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, work / f"{expert}.pt")
    (work / f"{expert}.json").write_text(json.dumps(losses))
    snapshots.clear()
    return losses


def reuse_encoders(model: Path, work: Path) -> None:
    """Start `work` from the text encoder and VAE of `model` (a model of this recipe, e.g. the shipped one)."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5EncoderModel

    work.mkdir(parents=True, exist_ok=True)
    if not (work / "text_encoder.pt").exists():
        encoder = UMT5EncoderModel.from_pretrained(model / "text_encoder", dtype=torch.float32)
        torch.save(encoder.state_dict(), work / "text_encoder.pt")
        (work / "text_encoder.report.json").write_text(json.dumps({"text_encoder_from": str(model)}))
    if not (work / "vae.pt").exists():
        vae = AutoencoderKLWan.from_pretrained(model / "vae", dtype=torch.float32)
        _save_vae(vae, work / "vae.pt", vae.config.latents_mean, vae.config.latents_std)
        (work / "vae.report.json").write_text(json.dumps({"vae_from": str(model)}))


def run_stage(work: Path, name: str, done: Path, run) -> None:
    """Run one stage unless `done` exists; its result and time go to `<name>.report.json`."""
    if done.exists():
        return
    start = time.monotonic()
    result = run() or {}
    result[f"seconds_{name}"] = round(time.monotonic() - start, 1)
    (work / f"{name}.report.json").write_text(json.dumps(result, indent=2))


def decoder_stage(vae, work: Path, plan: TrainingPlan) -> dict:
    """A light decoder for `vae`'s encoder (training/decoder.py), left in `decoder.pt`."""
    light = with_light_decoder(vae, DECODER_BASE_DIM)
    snapshots = Snapshots(work / "decoder.snapshot.pt")
    result = train_decoder(
        light,
        plan.decoder_steps,
        plan.seed + 3,
        snapshots=snapshots,
        eval_every=plan.eval_every // 2,
        eval_clips=plan.eval_clips,
    )
    _save_vae(light, work / "decoder.pt", light.config.latents_mean, light.config.latents_std)
    snapshots.clear()
    return result | {f"decoder_read_back_{k}": v for k, v in read_back(light, plan.eval_clips).items()}


def train(out: Path, work: Path, plan: TrainingPlan, reuse: Path | None = None) -> dict:
    """Run the recipe; write the diffusers layout to `out`. Returns the final losses and the stage times.
    `reuse`: a model this recipe trained, whose text encoder and VAE are kept."""
    work.mkdir(parents=True, exist_ok=True)
    if reuse is not None:
        reuse_encoders(reuse, work)
    names = []

    def stage(name: str, done: Path, run) -> None:
        names.append(name)
        run_stage(work, name, done, run)

    torch.manual_seed(plan.seed)
    pipe = build_default_pipeline()
    combos = training_combinations()

    def text_stage():
        result = pretrain_text_encoder(pipe.text_encoder, pipe.tokenizer, combos, plan.text_steps, plan.seed)
        torch.save(pipe.text_encoder.state_dict(), work / "text_encoder.pt")
        return {"text_loss": result["text_loss"]}

    stage("text_encoder", work / "text_encoder.pt", text_stage)

    def vae_stage():
        # Encoder and decoder train together at full width; the light decoder comes after the experts.
        config = pipe.vae.config
        vae = AutoencoderKLWan.from_config({**config, "decoder_base_dim": config.base_dim})
        snapshots = Snapshots(work / "vae.snapshot.pt")
        result = train_vae(
            vae,
            plan.vae_steps,
            plan.seed,
            snapshots=snapshots,
            eval_every=plan.eval_every // 2,
            eval_clips=plan.eval_clips,
        )
        mean, std = latent_statistics(vae, plan.seed, plan.statistics_clips)
        _save_vae(vae, work / "vae.pt", mean, std)
        snapshots.clear()
        return result

    stage("vae", work / "vae.pt", vae_stage)
    load_parts(pipe, work)

    def captions_stage():
        captions, _, per_combo = caption_table(combos)
        states, lengths = embed_captions(pipe.text_encoder, pipe.tokenizer, captions + [""])
        empty = states[-1, : lengths[-1]]
        text = TextTable(states[:-1], per_combo, empty, pipe.tokenizer.model_max_length)  # the stage's padding
        torch.save(text, work / "captions.pt")

    stage("captions", work / "captions.pt", captions_stage)

    def latents_stage(name, count, frames, size, seed):
        def run():
            torch.save(encode_clips(pipe.vae, count, frames, size, seed), work / f"latents_{name}.pt")

        return run

    stage(
        "latents_preview", work / "latents_preview.pt", latents_stage("preview", plan.preview_clips, 17, 64, plan.seed)
    )
    if plan.final_clips:
        stage(
            "latents_final", work / "latents_final.pt", latents_stage("final", plan.final_clips, 33, 128, plan.seed + 1)
        )

    def experts_stage():
        boundary = pipe.config.boundary_ratio
        experts = (("high", pipe.transformer), ("low", pipe.transformer_2))
        jobs = [(e, dict(t.config), work, plan, boundary, i) for i, (e, t) in enumerate(experts)]
        jobs = [job for job in jobs if not (work / f"{job[0]}.json").exists()]  # one may be done already
        if jobs:
            with ProcessPoolExecutor(len(jobs), mp_context=get_context("spawn")) as pool:
                list(pool.map(_expert_worker, jobs))
        losses = {}
        for name, _ in experts:
            losses.update(json.loads((work / f"{name}.json").read_text()))
        (work / "experts.json").write_text(json.dumps(losses))
        return losses

    stage("experts", work / "experts.json", experts_stage)
    stage("decoder", work / "decoder.pt", lambda: decoder_stage(pipe.vae, work, plan))
    load_parts(pipe, work)
    pipe.transformer.load_state_dict(torch.load(work / "high.pt"))
    pipe.transformer_2.load_state_dict(torch.load(work / "low.pt"))

    pipe.scheduler.register_to_config(flow_shift=plan.flow_shift)
    # Shipped in half precision (half the bytes); loading casts to the configured dtype.
    save_pipeline(pipe.to(dtype=torch.float16), out, TRAINED_MODEL_NAME)
    report = {}
    for name in names:
        if (work / f"{name}.report.json").exists():
            report.update(json.loads((work / f"{name}.report.json").read_text()))
    report["plan"] = plan.model_dump()
    report["seconds_total"] = round(sum(v for k, v in report.items() if k.startswith("seconds_")), 1)
    (work / "report.json").write_text(json.dumps(report, indent=2))
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
