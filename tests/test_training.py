"""The default model's training recipe runs end to end from the CLI, writes a checkpoint the stages load, and resumes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from contract.experts import ExpertKind
from contract.settings import Settings
from stages.checkpoint import Checkpoint


def test_the_recipe_runs_from_the_cli_and_resumes(tmp_path):
    out, work = tmp_path / "model", tmp_path / "work"
    command = [sys.executable, "-m", "cluster.cli", "model", "train", "--quick", "--out", str(out), "--work", str(work)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "vae" in first.stderr and "high-noise expert" in first.stderr  # progress bars
    report = json.loads((out / "training.json").read_text())
    for key in ("text_loss", "vae_loss", "decoder_loss", "decoder_read_back_object", "high_loss_set0", "low_loss_set0"):
        assert key in report
    assert report["seconds_total"] >= report["seconds_experts"] > 0
    # the high-noise expert's videos, read back as it trains: in the log and a file
    progress = [json.loads(line) for line in (work / "progress.jsonl").read_text().splitlines()]
    assert progress[-1]["expert"] == "high" and progress[-1]["step"] == 3
    assert 0 <= progress[-1]["motion"] <= 1 and progress[-1]["videos"] == 12
    assert "expert=high step=3 videos=12 motion=" in first.stdout + first.stderr
    index = json.loads((out / "model_index.json").read_text())
    assert index["_name_or_path"] == "t2v-world-wan2.2-a14b" and index["boundary_ratio"] == 0.875
    vae = json.loads((out / "vae" / "config.json").read_text())
    assert len(vae["latents_mean"]) == len(vae["latents_std"]) == 16  # measured on the world's latents
    assert vae["decoder_base_dim"] == vae["base_dim"] // 2  # the light decoder
    assert json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"] == 64
    # The same loader as a real checkpoint's.
    checkpoint = Checkpoint(out, Settings(model=out))
    assert checkpoint.has_low_noise_expert and checkpoint.boundary_ratio == 0.875
    low_noise = checkpoint.expert(ExpertKind.LOW_NOISE)  # shipped in half precision, loaded as configured
    assert next(low_noise.parameters()).dtype == torch.float32
    # A second run finds every stage done and only writes the layout again.
    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert not [word for word in ("vae:", "decoder:", "expert:") if word in second.stderr]
    assert json.loads((out / "training.json").read_text())["seconds_total"] == report["seconds_total"]

    # Another run may start from this model's text encoder and VAE, and train the rest anew.
    from training.recipe import reuse_encoders

    reuse_encoders(out, tmp_path / "again")
    kept = torch.load(tmp_path / "again" / "text_encoder.pt")
    assert torch.equal(kept["shared.weight"], checkpoint.text_encoder().shared.weight.float())
    assert torch.load(tmp_path / "again" / "vae.pt")["mean"] == vae["latents_mean"]


def test_the_quality_benchmark_reads_every_run(wan22_dir, tmp_path, monkeypatch, capsys):
    """bench/quality.py end to end on a tiny run: every preset, language and speed feature gets a row
    of fractions read from the frames, and the last line is the JSON."""
    from bench import quality
    from tests.conftest import served_adapters

    monkeypatch.setenv("T2V_MODEL", str(wan22_dir))
    monkeypatch.setenv("T2V_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("T2V_ADAPTERS__URI", str(served_adapters(wan22_dir, tmp_path / "adapters")))
    result = quality.main(
        ["--prompts", "2", "--final-prompts", "1", "--features", "1", "--adapter-prompts", "1", "--shot-prompts", "1"]
        + ["--distilled", "few-step"]
    )
    rows = result["results"]
    expected = {"preview en", "preview zh", "final en", "final zh", "template, uncached", "batching x4"}
    expected |= {f"template, shares {k or 'all'} steps" for k in quality.SHARED_STEPS}
    expected |= {f"step cache {name}" for name in quality.STEP_CACHES}
    expected |= {f"experts {name}" for name in quality.QUANTIZED}
    # the static-camera and the panning prompts apart (cameras in turn: the first is static)
    expected |= {f"preview {language}, {kind}" for language in ("en", "zh") for kind in quality.CAMERA_ROWS}
    assert expected <= set(rows) and "final en, panning" not in rows
    assert rows["preview zh"]["videos"] == 2 and rows["final en"]["videos"] == 1 and rows["batching x4"]["videos"] == 1
    assert rows["preview en, static camera"]["videos"] == rows["preview en, panning"]["videos"] == 1
    for row in rows.values():
        assert all(0.0 <= row[k] <= 1.0 for k in (*quality.KEYS, "physics", "static_when_moving"))
    assert set(result["targets"]) == {
        *quality.TARGETS,
        "final_within_5_points",
        "physics_mean",
        "physics_mean_met",
        "template_within_5_points",
    }
    # the ad studio's rows: the shipped adapter at each scale (scale 0 is the base model, frame for frame),
    # and preview -> final against a plain final of the same seed
    assert set(result["adapters"]) == {"no adapter", "studio x0", "studio x0.5", "studio x1"}
    assert result["adapters"]["studio x0"]["same_as_base"] == 1.0
    assert result["adapters"]["studio x1"]["same_as_base"] == 0.0
    shots = result["shots"]
    assert shots["final of the preview"]["steps"] < shots["plain final, same seed"]["steps"]
    assert 0 < shots["saved"]["steps"] < 1
    # a few-step adapter against its teacher, each language, and its preview made final two ways
    for language in ("en", "zh"):
        distilled = result["distilled"][language]
        assert distilled["student"]["videos"] == distilled["teacher"]["videos"] == 2
        assert set(distilled["met"]) == set(quality.DISTILLED_TARGETS) and distilled["seconds_ratio"] > 0
    finals = result["distilled_shots"]
    assert finals["final with 'few-step'"]["steps"] < finals["final, full low-noise expert"]["steps"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"] == result["model"]


def test_a_stopped_stage_resumes_from_its_snapshot_on_the_same_path(tmp_path, monkeypatch):
    from diffusers import AutoencoderKLWan

    from training import vae as vae_stage
    from training.snapshots import Snapshots

    def fresh() -> AutoencoderKLWan:
        torch.manual_seed(0)
        return AutoencoderKLWan(base_dim=16, z_dim=4, dim_mult=[1, 1, 1, 1], temperal_downsample=[False, True, True])

    options = {"steps": 3, "seed": 1, "batch": 1, "frames": 5, "crop": 32}
    straight = fresh()
    vae_stage.train_vae(straight, **options)

    batches = vae_stage.crop_batch
    calls = []

    def stops_at_the_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the machine going away mid-stage
        return batches(*args)

    monkeypatch.setattr(vae_stage, "crop_batch", stops_at_the_third)
    snapshots = Snapshots(tmp_path / "vae.snapshot.pt", every=1)
    with pytest.raises(KeyboardInterrupt):
        vae_stage.train_vae(fresh(), **options, snapshots=snapshots)
    monkeypatch.setattr(vae_stage, "crop_batch", batches)
    resumed = fresh()
    vae_stage.train_vae(resumed, **options, snapshots=snapshots)  # steps 3 only
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_the_experts_loss_weighs_the_object_s_latent_cells(tmp_path):
    """Wan's VAE turns the first frame and then every 4 frames, 8x8 pixels each, into a latent cell (the
    default model's, 4x4):
    the object's cells are those its pixels touch; with `object_weight` k each of them counts 1 + k times."""
    import numpy as np

    from training.flow_matching import FlowMatching, TextTable
    from training.latents import LatentSet, object_cells

    masks = np.zeros((17, 64, 64), bool)
    masks[0, 10, 20] = True  # first frame: latent frame 0
    masks[6, 40, 8] = True  # frames 5-8: latent frame 2
    cells = object_cells(masks)
    assert cells.shape == (1, 5, 8, 8) and cells.sum() == 2
    assert cells[0, 0, 1, 2] and cells[0, 2, 5, 1]
    finer = object_cells(masks, spatial=4)  # the default model's VAE: 4x4 pixels a cell
    assert finer.shape == (1, 5, 16, 16) and finer[0, 0, 2, 5] and finer[0, 2, 10, 2]

    torch.manual_seed(0)
    objects = torch.zeros(1, 1, 2, 4, 4, dtype=torch.bool)
    objects[..., 0, 0, 0] = True  # one of 32 cells
    data = LatentSet(torch.zeros(1, 16, 2, 4, 4), torch.tensor([0]), objects)
    text = TextTable(torch.zeros(1, 4, 8), [[0]], torch.zeros(1, 8), 4)

    class Errs:  # a model whose velocity is off by 1 on the object's cell only
        def __call__(self, xt, t, states, return_dict):
            noise = xt / sigma_of(t)
            return ((noise + objects.float()),)

    def sigma_of(t):
        return (t / 1000).view(-1, 1, 1, 1, 1)

    def loss(weight):
        objective = FlowMatching("high", 0.875, [(data, 1, 1.0)], text, object_weight=weight)
        rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
        return objective.loss(Errs(), rng, generator)[1].item()

    assert loss(0.0) == pytest.approx(1 / 32)  # the plain mean over every cell
    assert loss(4.0) == pytest.approx(5 / (32 + 4))  # the object's cell counts 5 times


def test_the_progress_prompts_ask_every_motion_held_out_in_both_languages():
    from training.progress import progress_prompts
    from world.scene import is_held_out
    from world.vocabulary import MOTIONS

    cases = progress_prompts(per_motion=2)
    assert len(cases) == 2 * 2 * len(MOTIONS) and len({seed for *_, seed in cases}) == len(cases)
    for language in (0, 1):
        part = cases[language * 12 : (language + 1) * 12]
        assert sorted(a["motion"] for a, *_ in part) == sorted(MOTIONS * 2)
    assert all(a["camera"] == "static" and is_held_out(a) for a, *_ in cases)
    assert any("\u4e00" <= ch <= "\u9fff" for _, prompt, _ in cases[12:] for ch in prompt)


def test_the_vae_loss_weighs_a_small_object_as_much_as_the_background():
    from training.vae import balanced_l1

    video = torch.zeros(1, 3, 1, 16, 16)
    mask = torch.zeros(1, 1, 1, 16, 16)
    mask[..., 7:9, 7:9] = 1  # 4 of 256 pixels
    object_wrong = video + mask  # off by 1 on the object only
    background_wrong = video + (1 - mask)
    assert balanced_l1(object_wrong, video, mask) == pytest.approx(1.0)
    assert balanced_l1(background_wrong, video, mask) == pytest.approx(1.0)
    assert balanced_l1(video, video, torch.zeros_like(mask)) == 0  # a window without the object


def test_the_vae_starts_as_a_working_autoencoder():
    """Before its first step the default VAE already gives each clip back as its blocks' colours."""
    import numpy as np

    from stages.default_model import build_default_pipeline
    from training.clips import random_clip, to_frames, to_tensor
    from training.vae import init_for_training, psnr

    vae = build_default_pipeline().vae
    clip = random_clip(np.random.default_rng(3), 17, 64)
    with torch.no_grad():
        before = to_frames(vae.decode(vae.encode(to_tensor(clip.frames)[None]).latent_dist.mean).sample[0])
        init_for_training(vae)
        latent = vae.encode(to_tensor(clip.frames)[None]).latent_dist.mean
        after = to_frames(vae.decode(latent).sample[0])
    # Every latent channel carries something, so every one can learn (zero on both sides never would).
    assert (latent.std(dim=(0, 2, 3, 4)) > 1e-3).all()
    assert psnr(after, clip.frames) > 20 > psnr(before, clip.frames)
    background = ~clip.masks.astype(bool)
    assert np.abs(after[background].mean(0) - clip.frames[background].mean(0)).max() < 8  # its colours, not grey


def test_the_frames_picture_has_a_row_per_seed(wan22_dir, tmp_path, monkeypatch, capsys):
    import cv2

    from bench import frames

    monkeypatch.setenv("T2V_CACHE_DIR", str(tmp_path))
    out = tmp_path / "strip.png"
    argv = ["a red ball", "--out", str(out), "--preset", "preview", "--seeds", "1", "2", "--model", str(wan22_dir)]
    result = frames.main(argv)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["videos"] == result["videos"]
    picture = cv2.imread(str(out))
    count, tile, gap = 6, 2 * 64, 2
    assert picture.shape == (2 * tile + gap, count * tile + (count - 1) * gap, 3)
    assert [v["seed"] for v in result["videos"]] == [1, 2]
    assert {"color", "object", "motion", "setting"} <= set(result["videos"][0]["read"])
