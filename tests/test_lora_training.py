"""Style adapters: the world's studio style is measurable from frames, `t2v model train-lora` writes a
diffusers LoRA file that loads into each expert by its prefix (and resumes when stopped), and the
shipped studio adapter turns generated backgrounds into the studio backdrop at scale 1 and changes
nothing at scale 0."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from contract.experts import ExpertKind
from contract.settings import Settings
from stages.checkpoint import Checkpoint
from stages.default_model import TRAINED_MODEL_DIR
from training.lora import WEIGHTS_NAME
from world.reading import read_clip
from world.render import render
from world.scene import sample_scene
from world.styles import style_strength
from world.vocabulary import COLORS, SETTINGS

ADAPTERS = TRAINED_MODEL_DIR.parent / "test-adapters"


def _scene(rng, **attrs):
    base = {"color": "red", "object": "ball", "motion": "bounces", "setting": "grass", "camera": "static"}
    return sample_scene(base | attrs, rng)


@pytest.mark.parametrize("size, frames", [(64, 17), (128, 33)])
def test_style_strength_tells_studio_clips_from_the_plain_world(size, frames):
    rng = np.random.default_rng(size)
    for setting in SETTINGS:
        for camera in ("static", "pans left"):
            scene = _scene(rng, setting=setting, camera=camera, motion="is thrown")
            plain, studio = render(scene, frames, size), render(scene, frames, size, style="studio")
            assert style_strength(plain.frames) < 0.02, setting
            assert style_strength(studio.frames) > 0.9, setting
            # Only the background changed: the same object, in the same places.
            assert np.array_equal(plain.masks, studio.masks) and np.array_equal(plain.centers, studio.centers)


def test_the_studio_keeps_every_object_readable():
    rng = np.random.default_rng(7)
    for color in COLORS:
        scene = _scene(rng, color=color, setting=SETTINGS[rng.integers(len(SETTINGS))], motion="rolls right")
        reading = read_clip(render(scene, 33, 128, style="studio").frames)
        assert (reading.color, reading.object, reading.motion) == (color, "ball", "rolls right")


def test_an_unknown_style_is_refused():
    with pytest.raises(ValueError, match="unknown style"):
        render(_scene(np.random.default_rng(0)), 5, 64, style="neon")


def _train_lora(out, work, *extra):
    command = [sys.executable, "-m", "cluster.cli", "model", "train-lora", "--quick", "--out", str(out)]
    command += ["--work", str(work), "--model", str(TRAINED_MODEL_DIR), *extra]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _forward(transformer, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents, text = torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 12, 64, generator=g)
    with torch.no_grad():
        return transformer(latents, torch.tensor([900.0]), text, return_dict=False)[0]


def test_train_lora_writes_one_file_for_both_experts(tmp_path):
    out, work = tmp_path / "studio", tmp_path / "work"
    first = _train_lora(out, work)
    assert "high-noise lora" in first.stderr and "low-noise lora" in first.stderr  # both trained
    info = json.loads((out / "adapter.json").read_text())
    assert info["base_model"] == "t2v-world-wan2.2-a14b" and info["style"] == "studio"
    assert info["experts"] == {"high": "transformer", "low": "transformer_2"}
    assert {"high_loss_set0", "low_loss_set0"} <= set(info["training"]["losses"])
    assert info["training"]["plan"]["steps"] == 3 and info["training"]["seconds_total"] > 0

    state = load_file(out / WEIGHTS_NAME)
    assert {k.split(".")[0] for k in state} == {"transformer", "transformer_2"}
    checkpoint = Checkpoint(TRAINED_MODEL_DIR, Settings(model=TRAINED_MODEL_DIR, device="cpu"))
    for kind in ExpertKind:
        transformer = checkpoint.expert(kind)
        base = _forward(transformer)
        transformer.load_lora_adapter(state, prefix=kind.subfolder, adapter_name="x")
        loaded = [n for n, _ in transformer.named_parameters() if ".lora_A.x." in n]
        assert len(loaded) == len([k for k in state if k.startswith(kind.subfolder + ".") and ".lora_A." in k])
        assert not torch.equal(_forward(transformer), base)  # three steps moved it
        transformer.set_adapters(["x"], weights=[0.0])
        assert torch.equal(_forward(transformer), base)

    # The same training, the high-noise expert's part only: nothing retrains.
    second = _train_lora(tmp_path / "studio-high", work, "--experts", "high")
    assert "lora:" not in second.stderr and "encode" not in second.stderr
    high = load_file(tmp_path / "studio-high" / WEIGHTS_NAME)
    assert high and all(k.startswith("transformer.") for k in high)
    assert all(torch.equal(v, state[k]) for k, v in high.items())


def test_a_work_directory_of_another_plan_is_refused(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "plan.json").write_text(json.dumps({"style": "studio", "steps": 12345}))
    command = [sys.executable, "-m", "cluster.cli", "model", "train-lora", "--quick", "--out", str(tmp_path / "o")]
    run = subprocess.run([*command, "--work", str(work)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "another plan" in run.stderr


def test_the_shipped_studio_adapter_paints_the_backdrop_and_scale_zero_is_the_base_model():
    from training.lora_eval import generate, load_adapter, load_pipeline, set_scale, to_uint8

    path = ADAPTERS / "studio" / WEIGHTS_NAME
    info = json.loads((ADAPTERS / "studio" / "adapter.json").read_text())
    assert info["base_model"] == "t2v-world-wan2.2-a14b" and path.stat().st_size < 1_000_000
    pipe = load_pipeline(TRAINED_MODEL_DIR)
    cases = [("a red ball bounces on the grass", 0), ("a yellow box rolls left on the sand", 1)]
    base = [generate(pipe, prompt, seed) for prompt, seed in cases]
    experts = load_adapter(pipe, path)
    assert len(experts) == 2
    styled = [generate(pipe, prompt, seed) for prompt, seed in cases]
    set_scale(experts, 0.0)
    off = [generate(pipe, prompt, seed) for prompt, seed in cases]

    assert all(np.array_equal(a, b) for a, b in zip(base, off, strict=True))  # scale 0: the base model exactly
    before = np.mean([style_strength(to_uint8(f)) for f in base])
    after = np.mean([style_strength(to_uint8(f)) for f in styled])
    assert before < 0.1 and after > 0.6, (before, after)
    assert read_clip(to_uint8(styled[0])).color == "red"  # the object stays what the prompt asked for


def test_the_shipped_high_noise_adapter_is_the_studio_adapters_high_noise_part():
    high = load_file(ADAPTERS / "studio-high" / WEIGHTS_NAME)
    both = load_file(ADAPTERS / "studio" / WEIGHTS_NAME)
    assert high and all(k.startswith("transformer.") for k in high)
    assert all(torch.equal(v, both[k]) for k, v in high.items())
    info = json.loads((ADAPTERS / "studio-high" / "adapter.json").read_text())
    assert info["experts"] == {"high": "transformer"}


def test_a_stopped_adapter_training_resumes_from_its_snapshot_on_the_same_path(tmp_path, monkeypatch):
    from training import flow_matching, lora
    from training.flow_matching import FlowMatching, TextTable
    from training.latents import LatentSet
    from training.snapshots import Snapshots

    checkpoint = Checkpoint(TRAINED_MODEL_DIR, Settings(model=TRAINED_MODEL_DIR, device="cpu"))
    g = torch.Generator().manual_seed(0)
    data = LatentSet(torch.randn(4, 16, 2, 4, 4, generator=g), torch.arange(4))
    text = TextTable(torch.randn(8, 6, 64, generator=g), [[0, 1], [2, 3], [4, 5], [6, 7]], torch.randn(2, 64), 16)
    plan = lora.LoraPlan.quick().model_copy(update={"steps": 4})

    def run(snapshots=None):
        expert = checkpoint.expert(ExpertKind.HIGH_NOISE)
        objective = FlowMatching("high", 0.875, [(data, 2, 1.0)], text)
        return lora.train_adapter(expert, "high", objective, plan, snapshots=snapshots)[1]

    straight = run()
    batches, calls = flow_matching.text_batch, []

    def stops_at_the_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the machine going away mid-stage
        return batches(*args)

    monkeypatch.setattr(flow_matching, "text_batch", stops_at_the_third)
    snapshots = Snapshots(tmp_path / "high.snapshot.pt", every=1)
    with pytest.raises(KeyboardInterrupt):
        run(snapshots)
    monkeypatch.setattr(flow_matching, "text_batch", batches)
    resumed = run(snapshots)  # steps 3 and 4 only
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
