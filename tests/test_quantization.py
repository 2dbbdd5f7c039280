"""Quantized experts: torchao through diffusers' TorchAoConfig as each expert loads, per expert; fp8
refused by name on a device without FP8 tensor cores; the cache keys that hold an expert's output
change with its quantization; adapters load onto a quantized expert."""

from __future__ import annotations

import pytest
import torch

from cache.keys import ModelIdentity, boundary_key, result_key
from cluster.pipeline import Pipeline
from contract.experts import ExpertKind
from contract.settings import Settings
from stages.checkpoint import Checkpoint
from stages.quantization import QuantizationError
from tests.test_adapters import write_adapter


def _forward(transformer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 2, 8, 8, generator=generator)
    text = torch.randn(1, 8, transformer.config.text_dim, generator=generator)
    with torch.no_grad():
        return transformer(latents, torch.tensor([500]), text).sample


def _is_quantized(linear: torch.nn.Linear) -> bool:
    return type(linear.weight) is not torch.nn.Parameter and type(linear.weight) is not torch.Tensor


def test_an_expert_loads_quantized_and_stays_close_to_its_weights(wan22_dir):
    plain = Checkpoint(wan22_dir, Settings(model=wan22_dir))
    int8 = Checkpoint(wan22_dir, Settings(model=wan22_dir, quantization={"high_noise": "int8_weight_only"}))
    high = int8.expert(ExpertKind.HIGH_NOISE)
    assert _is_quantized(high.blocks[0].attn1.to_q) and _is_quantized(high.blocks[0].ffn.net[2])
    assert not _is_quantized(int8.expert(ExpertKind.LOW_NOISE).blocks[0].attn1.to_q)  # per expert
    reference, quantized = _forward(plain.expert(ExpertKind.HIGH_NOISE)), _forward(high)
    error = float((quantized - reference).norm() / reference.norm())
    assert 0 < error < 0.03, error


def test_fp8_on_a_device_without_fp8_tensor_cores_is_refused_by_name(wan22_dir):
    checkpoint = Checkpoint(wan22_dir, Settings(model=wan22_dir, device="cpu", quantization={"low_noise": "fp8"}))
    with pytest.raises(QuantizationError, match="fp8 needs a GPU with FP8 tensor cores.*cpu device"):
        checkpoint.expert(ExpertKind.LOW_NOISE)
    with pytest.raises(ValueError, match="quantization.high_noise"):
        Settings(quantization={"high_noise": "int3"})


def test_keys_change_with_the_quantization_of_the_experts_they_hold(wan22_dir):
    settings = Settings(model=wan22_dir)
    request = Pipeline.from_settings(settings).validator.body({"prompt": "a red ball", "seed": 1})
    base = ModelIdentity("m", "r", "torch.float32")
    high = ModelIdentity("m", "r", "torch.float32", quantization="int8_weight_only")
    low = ModelIdentity("m", "r", "torch.float32", quantization_2="int8_weight_only")
    # the high-noise phase depends on the high-noise expert alone
    assert boundary_key(high, request) != boundary_key(base, request) == boundary_key(low, request)
    assert len({result_key(m, request) for m in (base, high, low)}) == 3
    identity = Checkpoint(wan22_dir, Settings(model=wan22_dir, quantization={"low_noise": "int8_dynamic"})).identity
    assert (identity.quantization, identity.quantization_2) == ("none", "int8_dynamic")


def test_an_adapter_loads_onto_a_quantized_expert_and_changes_its_phase(wan22_dir, tmp_path):
    write_adapter(tmp_path / "adapters", "high", wan22_dir, [ExpertKind.HIGH_NOISE], 2)
    settings = Settings(
        model=wan22_dir,
        cache_dir=tmp_path / "cache",
        cache={"enabled": False},
        adapters={"uri": str(tmp_path / "adapters")},
        quantization={"high_noise": "int8_weight_only"},
    )
    pipeline = Pipeline.from_settings(settings)
    fields = {"prompt": "a red ball bounces on grass", "seed": 1, "steps": 4}
    base = pipeline.denoise(pipeline.validator.body(fields))
    styled = pipeline.denoise(pipeline.validator.body({**fields, "lora": [{"name": "high"}]}))
    assert not torch.equal(styled.boundary.latents, base.boundary.latents)
    again = pipeline.denoise(pipeline.validator.body(fields))
    assert torch.equal(again.boundary.latents, base.boundary.latents)  # unloaded: the quantized base again
