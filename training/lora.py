"""A style adapter for the shipped default model: a LoRA on each expert, trained on the world in a style
(`world.styles`), written as one diffusers-format LoRA file.

The experts' own objective (training/flow_matching.py): flow matching, the high-noise expert on sigma >=
the boundary, the low-noise one below it, one caption in ten dropped to the empty prompt. What
changes is the data and what trains: clips in the style, encoded by the shipped VAE and captioned by
the shipped text encoder, and only the low-rank matrices peft adds to the attention and feed-forward
layers; the shipped weights stay frozen. lora_alpha equals the rank, so the adapter applies at scale
1 as trained. The two experts train side by side, one process each, as in the recipe.

`<out>/pytorch_lora_weights.safetensors` holds the high-noise expert's matrices under `transformer.`
and the low-noise one's under `transformer_2.` (diffusers' names for them), so that
`load_lora_adapter(state, prefix=...)` takes each expert's part; `<out>/adapter.json` says what it is,
how it trained, and what it does to generated frames (training/lora_eval.py).

Each stage leaves its result in the work directory and is skipped when run again; training leaves a
snapshot every 100 steps. So a stopped run resumes, and a second run with other `experts` writes
another selection of the same training.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

from contract.experts import ExpertKind
from contract.settings import Settings
from stages.checkpoint import Checkpoint
from stages.default_model import SEED
from training.clips import training_combinations
from training.flow_matching import FlowMatching, TextTable, lr_schedule
from training.latents import encode_clips
from training.snapshots import Snapshots
from training.text import caption_table, embed_captions
from world.styles import STYLES

ADAPTER = "style"  # peft's name for the adapter while training (it must not be a module attribute)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2", "proj_out"]
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' load_lora_weights looks for
EXPERTS = {"high": ExpertKind.HIGH_NOISE, "low": ExpertKind.LOW_NOISE}
Experts = Literal["high", "low", "both"]


class AdapterError(ValueError):
    """The adapter cannot be trained as asked: an unknown style, a one-expert model, another plan's work."""


class LoraPlan(BaseModel):
    """What the adapter trains on and how long. The defaults are the shipped studio adapter's
    (about 15 minutes on two cores)."""

    style: str = "studio"
    seed: int = SEED + 100
    rank: int = Field(8, ge=1)
    preview_clips: int = Field(1500, ge=2)  # 17 frames of 64x64
    final_clips: int = Field(200, ge=0)  # 33 frames of 128x128: the style at the final's size too
    steps: int = Field(1000, ge=1)
    preview_batch: int = Field(12, ge=1)
    final_batch: int = Field(2, ge=1)
    final_share: float = Field(0.2, ge=0, le=1)  # of the steps
    lr: float = Field(1e-3, gt=0)
    eval_prompts: int = Field(8, ge=0)  # generated at scales 1 and 0 after training, into adapter.json
    eval_seeds: int = Field(2, ge=1)

    @classmethod
    def quick(cls, style: str = "studio") -> LoraPlan:
        """A few steps of everything: the command's test."""
        return cls(style=style, preview_clips=4, final_clips=2, steps=3, preview_batch=2, final_batch=1, eval_prompts=0)


def selected(experts: Experts) -> list[str]:
    return ["high", "low"] if experts == "both" else [experts]


def train_adapter(
    transformer,
    expert: str,
    objective,
    plan: LoraPlan,
    position: int = 0,
    snapshots: Snapshots | None = None,
    name: str = "lora",
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train a LoRA on `transformer` (frozen) on `objective` (its `step`: FlowMatching's, or
    training/distill.py's reflow); `plan` gives the seed, rank, learning rate and steps. Returns
    the losses and the adapter's state (peft's keys)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    seed = plan.seed + (10 if expert == "high" else 20)
    torch.manual_seed(seed)  # the adapter's A matrices start random (B at zero: the base model exactly)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    transformer.requires_grad_(False)
    config = LoraConfig(r=plan.rank, lora_alpha=plan.rank, target_modules=TARGETS, init_lora_weights=True)
    transformer.add_adapter(config, adapter_name=ADAPTER)
    params = [p.requires_grad_(True) for n, p in transformer.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=plan.lr, weight_decay=0.0)
    schedule = lr_schedule(opt, warmup=min(50, plan.steps // 10 + 1), steps=plan.steps)
    first, recent = [], {}
    snapshots = snapshots or Snapshots(None)
    parts = {"model": transformer, "opt": opt, "schedule": schedule}
    start = snapshots.restore(parts, rng, generator)
    bar = tqdm(range(start, plan.steps), desc=f"{expert}-noise {name}", unit="step", position=position, initial=start)
    for step in bar:
        which, loss = objective.step(transformer, params, opt, schedule, rng, generator)
        if step < 50:
            first.append(loss)  # the frozen model's loss on the objective, as the adapter starts
        recent[which] = (recent.get(which, []) + [loss])[-100:]
        bar.set_postfix({f"loss{i}": f"{np.mean(v):.4f}" for i, v in recent.items() if v})
        snapshots.maybe_save(step + 1, parts, rng, generator)
    losses = {f"{expert}_loss_set{i}": float(np.mean(v)) for i, v in recent.items() if v}
    if first:
        losses[f"{expert}_loss_first50"] = float(np.mean(first))
    state = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
    return losses, {k: v.detach().clone() for k, v in state.items()}


def _worker(args) -> tuple[dict, dict]:
    expert, model, work, plan, boundary, position = args
    torch.set_num_threads(1)
    transformer = Checkpoint(model, _cpu_settings(model)).expert(EXPERTS[expert])
    text = torch.load(work / "captions.pt", weights_only=False)
    sets = [(torch.load(work / "latents_preview.pt", weights_only=False), plan.preview_batch, 1 - plan.final_share)]
    if plan.final_clips and plan.final_share > 0:
        sets.append((torch.load(work / "latents_final.pt", weights_only=False), plan.final_batch, plan.final_share))
    snapshots = Snapshots(work / f"{expert}.snapshot.pt", every=100)
    result = train_adapter(transformer, expert, FlowMatching(expert, boundary, sets, text), plan, position, snapshots)
    snapshots.clear()
    return result


def _cpu_settings(model: Path | None) -> Settings:
    # Trained in float32 on the CPU, as the recipe trains: a GPU's bfloat16 would train another adapter.
    # Without `model`, the settings' own (T2V_MODEL, else the shipped model).
    return Settings(device="cpu", dtype="float32", **({"model": model} if model else {}))


class WorkDir:
    """A resumable training command's work directory: the plan and model it holds the stages of
    (another's is refused: two trainings would mix), and its stages, each skipped when its results
    exist, their reports and times in report.json."""

    def __init__(self, path: Path, checkpoint: Checkpoint, plan: BaseModel):
        path.mkdir(parents=True, exist_ok=True)
        plan_path, this = path / "plan.json", {"model": str(checkpoint.path.resolve()), **plan.model_dump()}
        if plan_path.exists() and json.loads(plan_path.read_text()) != this:
            raise AdapterError(
                f"{path} holds the stages of another plan or model ({plan_path}); use another work directory"
            )
        plan_path.write_text(json.dumps(this, indent=2))
        self.report_path = path / "report.json"
        self.report = json.loads(self.report_path.read_text()) if self.report_path.exists() else {}

    def stage(self, name: str, done: list[Path], run) -> None:
        if all(p.exists() for p in done):
            return
        start = time.monotonic()
        self.report.update(run() or {})
        self.report[f"seconds_{name}"] = round(time.monotonic() - start, 1)
        self.report_path.write_text(json.dumps(self.report, indent=2))


def side_by_side(worker, experts: list[str], checkpoint: Checkpoint, work: Path, plan: BaseModel) -> dict:
    """`worker` for each expert whose adapter is not in `work` yet, a process each, side by side; each
    adapter's state saved as <work>/<expert>.pt. Returns their losses."""
    todo = [e for e in experts if not (work / f"{e}.pt").exists()]
    jobs = [(e, checkpoint.path, work, plan, checkpoint.boundary_ratio, i) for i, e in enumerate(todo)]
    with ProcessPoolExecutor(len(jobs), mp_context=get_context("spawn")) as pool:
        results = list(pool.map(worker, jobs))
    losses = {}
    for (expert, *_), (loss, state) in zip(jobs, results, strict=True):
        torch.save(state, work / f"{expert}.pt")
        losses.update(loss)
    return losses


def write_adapter(out: Path, states: dict[str, dict[str, torch.Tensor]], info: dict) -> Path:
    """One diffusers LoRA file of the given experts' states (each under its checkpoint subfolder's
    prefix) in half precision, and `adapter.json`; written atomically."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{EXPERTS[expert].subfolder}.{key}": value.to(torch.float16).contiguous().clone()
        for expert, state in states.items()
        for key, value in state.items()
    }
    path = out / WEIGHTS_NAME
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
    (out / "adapter.json").write_text(json.dumps(info, indent=2) + "\n")
    return path


def train(out: Path, work: Path, plan: LoraPlan, experts: Experts = "both", model: Path | None = None) -> dict:
    """Train the adapter of `experts` on the shipped model (or `model`); write it to `out`. Returns adapter.json."""
    if plan.style not in STYLES:
        raise AdapterError(f"unknown style {plan.style!r}; expected one of {STYLES}")
    checkpoint = Checkpoint.from_settings(_cpu_settings(model))
    if not checkpoint.has_low_noise_expert:
        raise AdapterError(f"{checkpoint.path} has one transformer: the adapter is for a two-expert (Wan2.2) model")
    work_dir = WorkDir(work, checkpoint, plan)
    stage, report = work_dir.stage, work_dir.report
    combos = training_combinations()

    def captions_stage():
        # The shipped text encoder's states, as its stage gives them to the experts.
        captions, _, per_combo = caption_table(combos)
        states, lengths = embed_captions(checkpoint.text_encoder(), checkpoint.tokenizer(), captions + [""])
        text = TextTable(states[:-1], per_combo, states[-1, : lengths[-1]], checkpoint.max_sequence_length)
        torch.save(text, work / "captions.pt")

    stage("captions", [work / "captions.pt"], captions_stage)
    vae = checkpoint.vae()

    def latents_stage(name, count, frames, size, seed):
        def run():
            latents = encode_clips(vae, count, frames, size, seed, style=plan.style)
            torch.save(latents, work / f"latents_{name}.pt")

        return run

    stage(
        "latents_preview",
        [work / "latents_preview.pt"],
        latents_stage("preview", plan.preview_clips, 17, 64, plan.seed),
    )
    if plan.final_clips:
        stage(
            "latents_final",
            [work / "latents_final.pt"],
            latents_stage("final", plan.final_clips, 33, 128, plan.seed + 1),
        )

    wanted = selected(experts)

    stage(
        f"lora_{experts}",
        [work / f"{e}.pt" for e in wanted],
        lambda: side_by_side(_worker, wanted, checkpoint, work, plan),
    )

    states = {e: torch.load(work / f"{e}.pt") for e in wanted}
    keep = ("captions", "latents_preview", "latents_final", *(f"lora_{e}" for e in ("high", "low", "both")))
    training = {
        "plan": plan.model_dump(),
        "target_modules": TARGETS,
        "losses": {k: round(v, 5) for k, v in report.items() if "_loss_" in k and k.split("_")[0] in wanted},
        "seconds": {k: report[f"seconds_{k}"] for k in keep if f"seconds_{k}" in report},
    }
    training["seconds_total"] = round(sum(training["seconds"].values()), 1)
    info = {
        "description": (
            f"LoRA (rank {plan.rank}) for the {' and '.join(e + '-noise' for e in wanted)} "
            f"expert{'s' if len(wanted) > 1 else ''} of {checkpoint.model_id}: every setting's background "
            f"becomes the '{plan.style}' style's (world/styles.py), objects and motion stay"
        ),
        "base_model": checkpoint.model_id,
        "style": plan.style,
        "experts": {e: EXPERTS[e].subfolder for e in wanted},  # expert -> key prefix in the file
        "rank": plan.rank,
        "lora_alpha": plan.rank,
        "training": training,
    }
    path = write_adapter(out, states, info)
    if plan.eval_prompts:
        from training.lora_eval import evaluate

        start = time.monotonic()
        info["evaluation"] = evaluate(checkpoint.path, path, plan.style, plan.eval_prompts, plan.eval_seeds)
        info["evaluation"]["seconds"] = round(time.monotonic() - start, 1)
        (out / "adapter.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
