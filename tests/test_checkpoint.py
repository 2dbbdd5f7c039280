"""Loading a diffusers-format checkpoint one component at a time."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import WanTransformer3DModel

from contract.experts import ExpertKind
from contract.settings import Settings
from stages.checkpoint import Checkpoint, CheckpointError
from stages.decoder import Decoder
from stages.default_model import write_default_model
from stages.expert import Expert
from stages.text_encoder import TextEncoder


def _modules(obj) -> list[torch.nn.Module]:
    return [v for v in vars(obj).values() if isinstance(v, torch.nn.Module)]


def test_real_layout_on_disk(wan22_dir):
    index = json.loads((wan22_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["boundary_ratio"] == 0.875
    assert index["transformer"] == index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    for sub in ("tokenizer", "text_encoder", "transformer", "transformer_2", "vae", "scheduler"):
        assert (wan22_dir / sub).is_dir(), sub
    scheduler = json.loads((wan22_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "flow_prediction" and scheduler["use_flow_sigmas"]


def test_each_stage_holds_only_its_component(wan22_dir):
    checkpoint = Checkpoint(wan22_dir, Settings(model=wan22_dir))
    encoder = TextEncoder(checkpoint)
    assert not any(isinstance(m, WanTransformer3DModel) for m in _modules(encoder))

    high, low = Expert(checkpoint, ExpertKind.HIGH_NOISE), Expert(checkpoint, ExpertKind.LOW_NOISE)
    assert [type(m) for m in _modules(high)] == [WanTransformer3DModel]
    assert [type(m) for m in _modules(low)] == [WanTransformer3DModel]
    # Two different experts, not one loaded twice.
    assert not torch.equal(next(high.transformer.parameters()), next(low.transformer.parameters()))
    assert not any(isinstance(m, WanTransformer3DModel) for m in _modules(Decoder(checkpoint)))


def test_dtype_and_device_from_config(wan22_dir):
    cpu = Checkpoint(wan22_dir, Settings(model=wan22_dir))
    assert cpu.device.type == "cpu" and cpu.dtype == torch.float32  # "auto" on a CPU
    bf16 = Checkpoint(wan22_dir, Settings(model=wan22_dir, dtype="bfloat16"))
    expert = bf16.expert(ExpertKind.HIGH_NOISE)
    assert expert.proj_out.weight.dtype == torch.bfloat16  # (diffusers keeps norms in fp32)
    assert next(bf16.vae().parameters()).dtype == torch.float32  # the VAE keeps its own dtype


def test_single_transformer_checkpoint(wan21_dir):
    checkpoint = Checkpoint(wan21_dir, Settings(model=wan21_dir))
    assert not checkpoint.has_low_noise_expert
    assert checkpoint.boundary_ratio is None
    with pytest.raises(CheckpointError, match="single-transformer"):
        checkpoint.expert(ExpertKind.LOW_NOISE)


def test_not_a_checkpoint(tmp_path, wan22_dir):
    with pytest.raises(CheckpointError, match="no model_index.json"):
        Checkpoint(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(wan22_dir, broken)
    index = json.loads((broken / "model_index.json").read_text())
    del index["vae"]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="'vae'"):
        Checkpoint(broken)


def test_default_model_is_reproducible(tmp_path, wan22_dir):
    again = write_default_model(tmp_path / "again")
    for f in sorted(wan22_dir.rglob("*")):
        if f.is_file():
            assert (again / f.relative_to(wan22_dir)).read_bytes() == f.read_bytes(), f


def test_revision_changes_with_the_model(tmp_path, wan22_dir):
    copy = tmp_path / "copy"
    shutil.copytree(wan22_dir, copy)
    before = Checkpoint(copy).revision
    config = copy / "transformer" / "config.json"
    values = json.loads(config.read_text())
    values["num_layers"] -= 1
    config.write_text(json.dumps(values))
    assert Checkpoint(copy).revision != before
