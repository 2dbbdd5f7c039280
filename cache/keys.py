"""Cache keys: each holds everything that changes the cached result, and nothing else."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cache.store import cache_key
from contract.adapters import adapters_for
from contract.experts import ExpertKind
from contract.request import GenerationRequest


@dataclass(frozen=True)
class ModelIdentity:
    """What of a model and its runtime a cached value depends on (`Checkpoint.identity`)."""

    model: str
    revision: str  # changes whenever the weights or configs do
    dtype: str  # of the text encoder and the experts
    device: str = "cpu"  # the device type: kernels differ in their last bits
    vae_dtype: str = "torch.float32"
    step_cache: str = "none"  # the experts' step cache, kind and options: it changes the latents
    boundary_ratio: float | None = None
    max_sequence_length: int = 512
    template_shared_steps: int | None = None  # a template's high-noise steps from its base prompt
    quantization: str = "none"  # of the high-noise expert's weights (settings `quantization`)
    quantization_2: str = "none"  # of the low-noise expert's

    @property
    def weights(self) -> dict[str, str]:
        """What every level's key holds: which weights, at which precision, on which device."""
        return {"model": self.model, "revision": self.revision, "dtype": self.dtype, "device": self.device}


# What the high-noise phase of a request depends on (its base prompt, not the full one).
BOUNDARY_FIELDS = {
    "base_prompt",
    "negative_prompt",
    "seed",
    "height",
    "width",
    "num_frames",
    "num_inference_steps",
    "guidance_scale",
    "flow_shift",
}


def embedding_key(model: ModelIdentity, text: str) -> str:
    return cache_key(level="embeddings", **model.weights, max_sequence_length=model.max_sequence_length, text=text)


def boundary_key(model: ModelIdentity, request: GenerationRequest, steps: int | None = None) -> str:
    """The shared high-noise steps' inputs: the base prompt (not the full one), shape, noise,
    the high-noise expert's adapters (name, version, scale), and how many steps are shared
    (None: the whole phase)."""
    phase = request.model_dump(include=BOUNDARY_FIELDS)
    if phase["flow_shift"] is None:
        del phase["flow_shift"]  # the model's own shift: the keys made before the field stay valid
    adapters = adapters_for(request.lora, ExpertKind.HIGH_NOISE)
    if adapters:  # no key changes for requests without adapters: their cached latents stay valid
        phase["lora"] = [a.model_dump(include={"name", "revision", "scale"}) for a in adapters]
    experts = {"boundary_ratio": model.boundary_ratio, "step_cache": model.step_cache}
    if model.quantization != "none":  # unquantized experts keep the keys made before the setting
        experts["quantization"] = model.quantization
    shared = {} if steps is None else {"shared_steps": steps}
    return cache_key(level="boundary", **model.weights, **experts, **phase, **shared)


def result_key(model: ModelIdentity, request: GenerationRequest, owner: str | None = None) -> str:
    """Everything that shapes the mp4 (the preset only through the values it filled in), and
    whose it is: one API key's results never answer another's requests."""
    # The same video on any pool; where a setting came from does not change it.
    fields = request.model_dump(exclude={"preset", "template", "slots", "priority", "sampling_from"})
    if fields["flow_shift"] is None:
        del fields["flow_shift"]  # the model's own shift: the keys made before the field stay valid
    identity = {k: v for k, v in asdict(model).items() if not (k.startswith("quantization") and v == "none")}
    return cache_key(level="result", **identity, **fields, owner=owner)
