"""`t2v model train-distill`: the teacher's pairs are the served pipeline's own previews, the student
is a LoRA pair whose adapter.json makes a request sample 4 unguided steps, and a rerun resumes."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from cluster.pipeline import Pipeline
from contract.settings import Settings
from stages.checkpoint import Checkpoint
from stages.denoising import prepare_latents
from training.distill import SAMPLING, DistillPlan, teacher_pairs
from training.lora import WEIGHTS_NAME


def test_the_teachers_pairs_are_its_previews_from_their_noise(wan22_dir, tmp_path):
    settings = Settings(model=wan22_dir, cache_dir=tmp_path / "cache", device="cpu", dtype="float32")
    plan = DistillPlan.quick()
    pairs = teacher_pairs(Checkpoint(wan22_dir, settings), plan)
    assert len(pairs.captions) == plan.pairs and pairs.x0.shape == pairs.noise.shape
    pipeline = Pipeline(Checkpoint(wan22_dir, settings))
    request = pipeline.validator.request(
        prompt=pairs.captions[1], seed=plan.seed + 1, preset="preview", num_inference_steps=plan.teacher_steps
    )
    assert request.classifier_free_guidance  # the teacher is guided; its student will not be
    shape = Checkpoint(wan22_dir, settings).latent_shape(request.num_frames, request.height, request.width)
    assert torch.equal(pairs.noise[1], prepare_latents(shape, request.seed)[0])
    assert torch.allclose(pairs.x0[1], pipeline.denoise(request).state.latents[0], atol=1e-5)


def test_train_distill_writes_a_four_step_adapter_that_requests_sample_as_trained(wan22_dir, tmp_path):
    out, work = tmp_path / "fast", tmp_path / "work"
    command = [sys.executable, "-m", "cluster.cli", "model", "train-distill", "--quick", "--out", str(out)]
    command += ["--work", str(work), "--model", str(wan22_dir)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "teacher pairs" in first.stderr and "high-noise distill" in first.stderr
    info = json.loads((out / "adapter.json").read_text())
    assert {k: info[k] for k in SAMPLING} == SAMPLING and info["training"]["method"].startswith("reflow")
    assert (out / WEIGHTS_NAME).exists()

    settings = Settings(model=wan22_dir, cache_dir=tmp_path / "cache", adapters={"uri": str(tmp_path)})
    pipeline = Pipeline(Checkpoint(wan22_dir, settings))
    listed = pipeline.validator.adapters.listing()["fast"].public()
    assert listed["compatible"] and listed["experts"] == ["high_noise", "low_noise"]
    request = pipeline.validator.request(prompt="a red ball bouncing", lora=[{"name": "fast"}], seed=1)
    assert (request.num_inference_steps, request.classifier_free_guidance) == (4, False)
    assert pipeline(request).mp4

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # every stage done: none runs
    assert again.returncode == 0 and "teacher pairs" not in again.stderr and "distill" not in again.stderr
