"""An expert's weights quantized as it loads: torchao's configs through diffusers' `TorchAoConfig`
(`from_pretrained(..., quantization_config=...)`), so a checkpoint on disk stays as it ships.

- `int8_weight_only`: the linear layers' weights in int8 with a scale per output channel (half of
  bf16's memory); the matmuls run in the activations' dtype.
- `int8_dynamic`: the activations quantized per token as well, for int8 matmuls.
- `fp8`: float8 (e4m3) weights and activations with dynamic scales, on FP8 tensor cores (compute
  capability 8.9 and up: L40S, H100, H200).

Norms, embeddings and the modulation tables keep the checkpoint's dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contract.settings import Quantization

if TYPE_CHECKING:
    import torch

FP8_CAPABILITY = (8, 9)


class QuantizationError(ValueError):
    """The quantization asked for cannot run on this replica's device."""


def quantization_config(kind: Quantization, device: torch.device):
    """diffusers' `TorchAoConfig` for `kind` on `device`; None for `none`."""
    if kind == "none":
        return None
    if kind == "fp8":
        import torch

        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        if capability is None or capability < FP8_CAPABILITY:
            found = f"compute capability {capability[0]}.{capability[1]}" if capability else f"a {device.type} device"
            raise QuantizationError(
                f"quantization fp8 needs a GPU with FP8 tensor cores (compute capability 8.9 or higher: "
                f"L40S, H100, H200); this replica has {found}: use int8_weight_only or none"
            )
    try:
        from torchao import quantization
    except ImportError:
        raise QuantizationError(f"quantization {kind} needs torchao: pip install 't2v-cluster[quantization]'") from None
    from diffusers import TorchAoConfig

    configs = {
        "int8_weight_only": quantization.Int8WeightOnlyConfig,
        "int8_dynamic": quantization.Int8DynamicActivationInt8WeightConfig,
        "fp8": quantization.Float8DynamicActivationFloat8WeightConfig,
    }
    return TorchAoConfig(configs[kind]())
