"""Wan LoRA files as people publish them, read in diffusers' layout.

Besides diffusers' own layout (`transformer.` / `transformer_2.` keys, `lora_A` / `lora_B`), Wan
LoRAs come in the original repository's names - `diffusion_model.blocks.0.self_attn.q.lora_A.weight`
(lightx2v's distilled pairs), with `lora_down` / `lora_up` names and `.alpha` scales (ComfyUI) - or
as kohya / musubi-tuner writes them, `lora_unet_blocks_0_self_attn_q.lora_down.weight`. diffusers'
Wan LoRA loader converts all of them (`WanLoraLoaderMixin.lora_state_dict`, alphas folded into the
weights); `to_diffusers` runs that conversion on a file's tensors, `header_shapes` on its header
alone (shapes as meta tensors, only the scalar alphas read), so that the adapter store checks an
adapter against the model before reading its weights.

A lightx2v pair ships as two files, `high_noise_model.safetensors` and `low_noise_model.safetensors`:
in an adapter folder under those names, each goes into its own expert.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from contract.experts import ExpertKind

if TYPE_CHECKING:
    import torch

PUBLISHED_PREFIXES = ("diffusion_model.", "lora_unet_")
PAIR_FILES = {
    ExpertKind.HIGH_NOISE: "high_noise_model.safetensors",
    ExpertKind.LOW_NOISE: "low_noise_model.safetensors",
}
_DTYPES = ("F64", "F32", "F16", "BF16")  # safetensors names; torch's are looked up when read


def is_published(keys) -> bool:
    """Whether the keys are in a published (non-diffusers) Wan layout."""
    return any(k.startswith(PUBLISHED_PREFIXES) for k in keys)


def to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` in diffusers' layout (`transformer.` keys); one already in it, as it is. ValueError
    when it is in a published layout diffusers cannot convert."""
    if not is_published(state):
        return state
    from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin

    try:
        return WanLoraLoaderMixin.lora_state_dict(dict(state))
    except (KeyError, ValueError, IndexError, RuntimeError) as error:
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ValueError(f"its Wan LoRA keys do not convert to diffusers' layout ({detail})") from None


def header_shapes(header: dict[str, dict], read: Callable[[int, int], bytes]) -> dict[str, list[int]]:
    """Key -> shape in diffusers' layout, from a safetensors header; `read(start, end)` gives bytes of
    the file's data section (only the published layouts' scalar `.alpha` tensors are read)."""
    if not is_published(header):
        return {key: tensor["shape"] for key, tensor in header.items()}
    import torch  # here, not at the top: the ingress lists adapters without loading torch

    dtypes = dict(zip(_DTYPES, (torch.float64, torch.float32, torch.float16, torch.bfloat16), strict=True))
    state = {}
    for key, tensor in header.items():
        if key.endswith(".alpha"):
            if tensor.get("dtype") not in _DTYPES:
                raise ValueError(f"{key!r} is of dtype {tensor.get('dtype')!r}")
            start, end = tensor["data_offsets"]
            value = torch.frombuffer(bytearray(read(start, end)), dtype=dtypes[tensor["dtype"]])
            state[key] = value.reshape(tensor["shape"]).float()
        else:
            state[key] = torch.empty(tensor["shape"], device="meta")
    return {key: list(value.shape) for key, value in to_diffusers(state).items()}


def retarget(keys: dict[str, list[int]], kind: ExpertKind) -> dict[str, list[int]]:
    """A pair file's keys (`transformer.` after conversion) under its own expert's prefix."""
    prefix, own = f"{kind.subfolder}.", [f"{k.subfolder}." for k in ExpertKind]
    return {prefix + next((key[len(p) :] for p in own if key.startswith(p)), key): s for key, s in keys.items()}
