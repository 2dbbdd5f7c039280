"""Wan LoRA files in the layouts they are published in - lightx2v's pair of files with
`diffusion_model.` keys, ComfyUI's `lora_down` / `lora_up` with alphas, musubi-tuner's `lora_unet_`
names - are checked from their headers, read through diffusers' conversion into the right expert,
and make the same frames as the same weights in diffusers' own layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cluster.pipeline import Pipeline
from contract.errors import RequestInvalid
from contract.experts import ExpertKind
from contract.settings import Settings
from stages.checkpoint import Checkpoint
from stages.lora_layouts import PAIR_FILES, is_published, to_diffusers

RANK = 2
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"]  # every layer the layouts name
# diffusers' module names -> the original Wan repository's
WAN_NAMES = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}


def random_lora(checkpoint: Checkpoint, kind: ExpertKind, seed: int) -> dict[str, torch.Tensor]:
    """{"blocks.0.attn1.to_q": (A, B), ...}: random LoRA matrices for every target layer of `kind`."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in checkpoint.expert(kind).named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("blocks.") and name.endswith(tuple(TARGETS)):
            a = torch.randn(RANK, module.in_features, generator=generator) * 0.3
            out[name] = (a, torch.randn(module.out_features, RANK, generator=generator) * 0.3)
    return out


def wan_name(layer: str) -> str:
    block, rest = layer.split(".", 2)[1], layer.split(".", 2)[2]
    return f"blocks.{block}.{WAN_NAMES[rest]}"


def lightx2v(lora) -> dict[str, torch.Tensor]:
    out = {}
    for layer, (a, b) in lora.items():
        out[f"diffusion_model.{wan_name(layer)}.lora_A.weight"] = a
        out[f"diffusion_model.{wan_name(layer)}.lora_B.weight"] = b
    return out


def comfyui(lora) -> dict[str, torch.Tensor]:
    """lora_down / lora_up with alpha = rank / 2: the up matrix doubled gives the same product."""
    out = {}
    for layer, (a, b) in lora.items():
        key = f"diffusion_model.{wan_name(layer)}"
        out |= {f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": 2 * b, f"{key}.alpha": torch.tensor(RANK / 2)}
    return out


def musubi(lora) -> dict[str, torch.Tensor]:
    out = {}
    for layer, (a, b) in lora.items():
        key = "lora_unet_" + wan_name(layer).replace(".", "_")
        out |= {f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": b, f"{key}.alpha": torch.tensor(float(RANK))}
    return out


def diffusers_layout(lora, kind: ExpertKind) -> dict[str, torch.Tensor]:
    out = {}
    for layer, (a, b) in lora.items():
        out[f"{kind.subfolder}.{layer}.lora_A.weight"] = a
        out[f"{kind.subfolder}.{layer}.lora_B.weight"] = b
    return out


def save(folder: Path, files: dict[str, dict[str, torch.Tensor]], about: dict | None = None) -> None:
    folder.mkdir(parents=True)
    for file, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / file)
    if about is not None:
        (folder / "adapter.json").write_text(json.dumps(about))


@pytest.fixture(scope="module")
def store(wan22_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layouts")
    checkpoint = Checkpoint(wan22_dir, Settings(model=wan22_dir))
    loras = {kind: random_lora(checkpoint, kind, seed) for seed, kind in enumerate(ExpertKind)}
    both = diffusers_layout(loras[ExpertKind.HIGH_NOISE], ExpertKind.HIGH_NOISE)
    save(
        root / "reference",
        {
            "pytorch_lora_weights.safetensors": both
            | diffusers_layout(loras[ExpertKind.LOW_NOISE], ExpertKind.LOW_NOISE)
        },
    )
    for name, layout in (("lightx2v", lightx2v), ("comfyui", comfyui), ("musubi", musubi)):
        save(root / name, {PAIR_FILES[kind]: layout(loras[kind]) for kind in ExpertKind})
    # one published file alone: the high-noise expert's, as diffusers' load_lora_weights reads it
    save(root / "comfyui-high", {"pytorch_lora_weights.safetensors": comfyui(loras[ExpertKind.HIGH_NOISE])})
    save(root / "reference-high", {"pytorch_lora_weights.safetensors": both})
    # one file for both experts, as diffusers' load_into_transformer_2 loads it
    save(
        root / "comfyui-shared",
        {"pytorch_lora_weights.safetensors": comfyui(loras[ExpertKind.HIGH_NOISE])},
        {"load_into_transformer_2": True},
    )
    save(
        root / "garbled",
        {PAIR_FILES[ExpertKind.HIGH_NOISE]: {"diffusion_model.blocks.0.wat.lora_A.weight": torch.zeros(2, 4)}},
    )
    return root


@pytest.fixture(scope="module")
def pipe(wan22_dir, store, tmp_path_factory) -> Pipeline:
    settings = Settings(
        model=wan22_dir,
        cache_dir=tmp_path_factory.mktemp("cache"),
        adapters={"uri": str(store)},
        cache={"enabled": False},
    )
    return Pipeline(Checkpoint.from_settings(settings))


def frames(pipe: Pipeline, adapter: str | None) -> np.ndarray:
    lora = [{"name": adapter}] if adapter else None
    return pipe.generate_frames(pipe.validator.request(prompt="a red ball", seed=4, steps=2, lora=lora, cache=False))


def test_the_store_reads_every_layout_from_its_header(pipe):
    listing = pipe.validator.adapters.listing()
    for name in ("reference", "lightx2v", "comfyui", "musubi", "comfyui-shared"):
        assert listing[name].problem is None, (name, listing[name].problem)
        assert listing[name].experts == ("high_noise", "low_noise") and listing[name].rank == RANK
    assert listing["comfyui-high"].experts == ("high_noise",)
    assert listing["lightx2v"].pair and not listing["comfyui-high"].pair
    garbled = listing["garbled"]
    assert garbled.problem is not None and "do not convert to diffusers' layout" in garbled.problem
    with pytest.raises(RequestInvalid) as refused:
        pipe.validator.request(prompt="a red ball", lora=[{"name": "garbled"}])
    assert refused.value.field == "lora.0.name" and "high_noise_model.safetensors" in refused.value.message


def test_every_published_layout_makes_the_reference_adapter_s_frames(pipe):
    plain, reference = frames(pipe, None), frames(pipe, "reference")
    assert np.abs(reference - plain).max() > 0.05  # the adapter shows
    for name in ("lightx2v", "comfyui", "musubi"):
        assert np.abs(frames(pipe, name) - reference).max() < 1e-4, name
    assert np.abs(frames(pipe, "comfyui-high") - frames(pipe, "reference-high")).max() < 1e-4


def test_the_conversion_folds_alphas_and_leaves_diffusers_keys_alone():
    a, b = torch.ones(RANK, 3), torch.ones(5, RANK)
    lora = {"blocks.0.attn1.to_q": (a, b)}
    assert not is_published(diffusers_layout(lora, ExpertKind.HIGH_NOISE))
    converted = to_diffusers(comfyui(lora))
    product = (
        converted["transformer.blocks.0.attn1.to_q.lora_B.weight"]
        @ converted["transformer.blocks.0.attn1.to_q.lora_A.weight"]
    )
    assert torch.equal(product, b @ a)  # alpha / rank = 1/2 times the doubled up matrix
    assert to_diffusers(diffusers_layout(lora, ExpertKind.LOW_NOISE)).keys() == {
        "transformer_2.blocks.0.attn1.to_q.lora_A.weight",
        "transformer_2.blocks.0.attn1.to_q.lora_B.weight",
    }


def test_a_listing_reads_again_only_the_adapters_that_changed(pipe, store, monkeypatch):
    adapters = pipe.validator.adapters
    adapters._read_listing()
    reads = []
    header = adapters._header
    monkeypatch.setattr(adapters, "_header", lambda name, file: reads.append(name) or header(name, file))
    adapters._read_listing()
    assert reads == []  # nothing changed: no header read
    about = store / "comfyui-high" / "adapter.json"
    about.write_text(json.dumps({"description": "now with a description"}))
    listing = adapters._read_listing()
    assert reads == ["comfyui-high"] and listing["comfyui-high"].description == "now with a description"
    about.unlink()
