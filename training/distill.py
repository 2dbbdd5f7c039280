"""A few-step adapter distilled from the shipped model: a LoRA pair that samples in 4 unguided steps
what the 10-step guided preview samples (`t2v model train-distill`).

The method is rectified flow's reflow with guidance folded in (Liu et al., "Flow Straight and Fast",
ICLR 2023; InstaFlow, Liu et al., ICLR 2024; guided distillation, Meng et al., CVPR 2023). The
teacher, the shipped model through the same stages that serve it (classifier-free guidance, its
scheduler, 10 steps), turns noise z into a latent x0 for a caption; the student, a LoRA on each
expert with guidance off, learns the straight path between the two, x_sigma = (1 - sigma) x0 +
sigma z, velocity z - x0, on the caption alone. A path that is straight is integrated exactly by
any step size, so 4 steps (and one forward each: no unconditional pass) land where the teacher's
20 forwards did. Each expert learns its side of the MoE boundary, as in training.

Why reflow here: its teacher runs once, before training (pairs are data), and each training step
is one student forward and backward. Progressive distillation (Salimans and Ho, ICLR 2022) needs a
round of training per halving; consistency distillation (Song et al., 2023; LCM) runs the teacher
inside every step; distribution matching (DMD, Yin et al., CVPR 2024) trains a second score
model beside the student. On two CPU cores the one-pass teacher is what fits.

Stages, each skipped when its result is in the work directory (a stopped run resumes): `pairs`
(the teacher's latents, noise and caption states), `distill_high` / `distill_low` (the two LoRAs,
side by side, snapshots every 100 steps). The adapter's `adapter.json` carries its sampling
settings (steps, guidance, flow shift): a request that names it samples as it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

from stages.checkpoint import Checkpoint
from stages.default_model import SEED
from training.clips import training_combinations
from training.flow_matching import FlowMatching, sample_sigmas
from training.lora import (
    EXPERTS,
    TARGETS,
    AdapterError,
    WorkDir,
    _cpu_settings,
    side_by_side,
    train_adapter,
    write_adapter,
)
from training.snapshots import Snapshots
from training.text import training_captions

# How the student samples: Lightning's 4 steps, no guidance; shift 5 puts 2 of them above the MoE boundary.
SAMPLING = {"steps": 4, "guidance": 1.0, "guidance_2": 1.0, "flow_shift": 5.0}


class DistillPlan(BaseModel):
    """The teacher's pairs and the student's training. The defaults are the shipped `fast` adapter's."""

    seed: int = SEED + 200
    pairs: int = Field(1600, ge=2)  # preview videos of the teacher (17 frames of 64x64)
    teacher_steps: int = Field(10, ge=1)  # the preview preset's
    steps: int = Field(1500, ge=1)
    batch: int = Field(8, ge=1)
    rank: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)

    @classmethod
    def quick(cls) -> DistillPlan:
        """A few steps of everything: the command's test."""
        return cls(pairs=3, teacher_steps=2, steps=3, batch=2, rank=2)


@dataclass
class Pairs:
    """The teacher's work: each pair's starting noise, its finished latent and its caption's states."""

    noise: torch.Tensor  # (n, C, T, H, W)
    x0: torch.Tensor
    states: torch.Tensor  # (n, max_sequence_length, dim), zero past the caption
    captions: list[str]


@dataclass
class Reflow:
    """The straight path from each pair's noise to its teacher latent, on one expert's sigmas."""

    expert: str
    boundary: float
    pairs: Pairs
    batch: int

    def loss(self, transformer, rng: np.random.Generator, generator: torch.Generator) -> tuple[int, torch.Tensor]:
        pick = torch.from_numpy(rng.integers(len(self.pairs.x0), size=self.batch))
        x0, noise = self.pairs.x0[pick], self.pairs.noise[pick]
        sigma = sample_sigmas(self.expert, self.boundary, self.batch, generator).view(-1, 1, 1, 1, 1)
        xt = (1 - sigma) * x0 + sigma * noise
        pred = transformer(xt, sigma.flatten() * 1000, self.pairs.states[pick], return_dict=False)[0]
        return 0, (pred - (noise - x0)).square().mean()

    step = FlowMatching.step  # the same optimizer step as the experts' and the style adapters'


def teacher_pairs(checkpoint: Checkpoint, plan: DistillPlan) -> Pairs:
    """The model's previews of `plan.pairs` training captions (EN and ZH; never the held-out
    combinations the quality benchmark asks for), made by the stage classes that serve it."""
    from contract.experts import ExpertKind
    from stages.denoising import prepare_latents
    from stages.expert import Expert
    from stages.text_encoder import TextEncoder
    from stages.validation import RequestValidator

    validator = RequestValidator(checkpoint.settings, checkpoint)
    encoder = TextEncoder(checkpoint)
    high, low = (Expert(checkpoint, kind, batching=False) for kind in ExpertKind)
    rng = np.random.default_rng(plan.seed)
    combos = training_combinations()
    noise, x0, states, captions = [], [], [], []
    for i in tqdm(range(plan.pairs), desc="teacher pairs", unit="video"):
        options = training_captions(combos[rng.integers(len(combos))])
        caption = options[rng.integers(len(options))]
        request = validator.request(
            prompt=caption, seed=plan.seed + i, preset="preview", num_inference_steps=plan.teacher_steps
        )
        embeddings = encoder(request.prompt, request.negative_prompt, request.classifier_free_guidance)
        final = low.phase(request, embeddings, high.phase(request, embeddings))
        shape = checkpoint.latent_shape(request.num_frames, request.height, request.width)
        noise.append(prepare_latents(shape, request.seed)[0])
        x0.append(final.latents[0].float())
        states.append(embeddings.prompt[0].float())
        captions.append(caption)
    return Pairs(torch.stack(noise), torch.stack(x0), torch.stack(states), captions)


def _worker(args) -> tuple[dict, dict]:
    expert, model, work, plan, boundary, position = args
    torch.set_num_threads(1)
    transformer = Checkpoint(model, _cpu_settings(model)).expert(EXPERTS[expert])
    pairs = torch.load(work / "pairs.pt", weights_only=False)
    snapshots = Snapshots(work / f"{expert}.snapshot.pt", every=100)
    objective = Reflow(expert, boundary, pairs, plan.batch)
    result = train_adapter(transformer, expert, objective, plan, position, snapshots, name="distill")
    snapshots.clear()
    return result


def train(out: Path, work: Path, plan: DistillPlan, model: Path | None = None) -> dict:
    """Distil the shipped model (or `model`) into a few-step adapter; write it to `out`. Returns adapter.json."""
    checkpoint = Checkpoint.from_settings(_cpu_settings(model))
    if not checkpoint.has_low_noise_expert:
        raise AdapterError(f"{checkpoint.path} has one transformer: the adapter is for a two-expert (Wan2.2) model")
    work_dir = WorkDir(work, checkpoint, plan)
    pairs = work / "pairs.pt"
    work_dir.stage("pairs", [pairs], lambda: torch.save(teacher_pairs(checkpoint, plan), pairs))
    students = [work / "high.pt", work / "low.pt"]
    work_dir.stage("students", students, lambda: side_by_side(_worker, ["high", "low"], checkpoint, work, plan))
    report = work_dir.report
    states = {e: torch.load(work / f"{e}.pt") for e in ("high", "low")}
    seconds = {k: report[f"seconds_{k}"] for k in ("pairs", "students") if f"seconds_{k}" in report}
    info = {
        "description": (
            f"{SAMPLING['steps']} steps, no guidance: a LoRA pair (rank {plan.rank}) distilled from "
            f"{checkpoint.model_id}'s {plan.teacher_steps}-step guided preview (reflow, training/distill.py)"
        ),
        **SAMPLING,
        "base_model": checkpoint.model_id,
        "experts": {e: EXPERTS[e].subfolder for e in ("high", "low")},
        "rank": plan.rank,
        "lora_alpha": plan.rank,
        "training": {
            "method": "reflow with guidance folded in (training/distill.py)",
            "plan": plan.model_dump(),
            "target_modules": TARGETS,
            "losses": {k: round(v, 5) for k, v in report.items() if "_loss_" in k},
            "seconds": seconds,
            "seconds_total": round(sum(seconds.values()), 1),
        },
    }
    write_adapter(out, states, info)
    return info
