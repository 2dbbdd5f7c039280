"""The whole recipe, from a seed: text encoder -> VAE -> latents -> both experts (side by side) -> diffusers layout.

Each stage leaves its result in the work directory and is skipped when run again; the long
ones (VAE, experts) also leave a snapshot every 200 steps. So a stopped run resumes where it
stopped.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from stages.default_model import SEED, build_default_pipeline, save_pipeline
from training.clips import training_combinations
from training.experts import train_expert
from training.flow_matching import TextTable
from training.latents import encode_clips
from training.snapshots import Snapshots
from training.text import caption_table, embed_captions, pretrain_text_encoder
from training.vae import latent_statistics, train_vae

TRAINED_MODEL_NAME = "t2v-world-wan2.2-a14b"


class TrainingPlan(BaseModel):
    """How long each stage trains. The defaults are the shipped model's (about an hour on two cores)."""

    seed: int = SEED
    text_steps: int = Field(600, ge=1)
    vae_steps: int = Field(3000, ge=1)
    statistics_clips: int = Field(64, ge=1)  # encoded to measure the latents' mean and std
    preview_clips: int = Field(4000, ge=2)  # 17 frames of 64x64
    final_clips: int = Field(600, ge=0)  # 33 frames of 128x128: teaches the experts the final shape
    expert_steps: int = Field(2500, ge=1)
    preview_batch: int = Field(16, ge=1)
    final_batch: int = Field(4, ge=1)
    final_share: float = Field(0.2, ge=0, le=1)  # of the expert steps
    # The shipped scheduler's flow shift, a sampling setting chosen with bench/quality.py: Wan's 12
    # leaves the low-noise expert 3 of 10 preview steps; 5 gives it 5 and reads back better.
    flow_shift: float = Field(5.0, gt=0)

    @classmethod
    def quick(cls) -> TrainingPlan:
        """A few steps of everything: the recipe's test."""
        return cls(
            text_steps=3,
            vae_steps=2,
            statistics_clips=2,
            preview_clips=4,
            final_clips=2,
            expert_steps=3,
            preview_batch=2,
            final_batch=1,
        )


def _expert_worker(args) -> tuple[dict, dict]:
    expert, config, work, plan, boundary, position = args
    from diffusers import WanTransformer3DModel

    torch.set_num_threads(1)
    torch.manual_seed(plan.seed + (1 if expert == "high" else 2))
    transformer = WanTransformer3DModel.from_config(config)
    text = torch.load(work / "captions.pt", weights_only=False)
    sets = [(torch.load(work / "latents_preview.pt", weights_only=False), plan.preview_batch, 1 - plan.final_share)]
    if plan.final_clips and plan.final_share > 0:
        sets.append((torch.load(work / "latents_final.pt", weights_only=False), plan.final_batch, plan.final_share))
    seed = plan.seed + (10 if expert == "high" else 20)
    snapshots = Snapshots(work / f"{expert}.snapshot.pt")
    result = train_expert(
        transformer, expert, sets, text, boundary, plan.expert_steps, seed, position=position, snapshots=snapshots
    )
    snapshots.clear()
    return result


def train(out: Path, work: Path, plan: TrainingPlan) -> dict:
    """Run the recipe; write the diffusers layout to `out`. Returns the final losses and the stage times."""
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}

    def stage(name: str, done: Path, run) -> None:
        if done.exists():
            return
        start = time.monotonic()
        result = run() or {}
        report.update(result)
        report[f"seconds_{name}"] = round(time.monotonic() - start, 1)
        report_path.write_text(json.dumps(report, indent=2))

    torch.manual_seed(plan.seed)
    pipe = build_default_pipeline()
    combos = training_combinations()

    def text_stage():
        result = pretrain_text_encoder(pipe.text_encoder, pipe.tokenizer, combos, plan.text_steps, plan.seed)
        torch.save(pipe.text_encoder.state_dict(), work / "text_encoder.pt")
        return {"text_loss": result["text_loss"]}

    stage("text_encoder", work / "text_encoder.pt", text_stage)
    pipe.text_encoder.load_state_dict(torch.load(work / "text_encoder.pt"))

    def vae_stage():
        snapshots = Snapshots(work / "vae.snapshot.pt")
        result = train_vae(pipe.vae, plan.vae_steps, plan.seed, snapshots=snapshots)
        mean, std = latent_statistics(pipe.vae, plan.seed, plan.statistics_clips)
        torch.save({"state": pipe.vae.state_dict(), "mean": mean, "std": std}, work / "vae.pt")
        snapshots.clear()
        return result

    stage("vae", work / "vae.pt", vae_stage)
    saved = torch.load(work / "vae.pt")
    pipe.vae.load_state_dict(saved["state"])
    pipe.vae.register_to_config(latents_mean=saved["mean"], latents_std=saved["std"])

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
        jobs = [
            (e, dict(t.config), work, plan, boundary, i)
            for i, (e, t) in enumerate((("high", pipe.transformer), ("low", pipe.transformer_2)))
        ]
        with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_expert_worker, jobs))
        losses = {}
        for (name, _, *_), (loss, state) in zip(jobs, results, strict=True):
            torch.save(state, work / f"{name}.pt")
            losses.update(loss)
        return losses

    stage("experts", work / "low.pt", experts_stage)
    pipe.transformer.load_state_dict(torch.load(work / "high.pt"))
    pipe.transformer_2.load_state_dict(torch.load(work / "low.pt"))

    pipe.scheduler.register_to_config(flow_shift=plan.flow_shift)
    # Shipped in half precision (half the bytes); loading casts to the configured dtype.
    save_pipeline(pipe.to(dtype=torch.float16), out, TRAINED_MODEL_NAME)
    report["plan"] = plan.model_dump()
    report["seconds_total"] = round(
        sum(v for k, v in report.items() if k.startswith("seconds_") and k != "seconds_total"), 1
    )
    report_path.write_text(json.dumps(report, indent=2))
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
