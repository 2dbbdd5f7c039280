"""A diffusers-format Wan2.x text-to-video checkpoint, loaded one component at a time.

A stage loads only what it needs: the text-encoder stage never holds an expert, and each
expert stage holds exactly one of `transformer` (high-noise) / `transformer_2` (low-noise).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from cache.keys import ModelIdentity
from contract.experts import ExpertKind
from contract.settings import Settings
from stages.default_model import default_model_dir

if TYPE_CHECKING:
    import torch

WAN_MAX_SEQUENCE_LENGTH = 512  # diffusers' WanPipeline pads every prompt to this many tokens

# torch, diffusers and transformers are imported when a component, the device or the dtype is first
# asked for, not with this module: the ingress reads the configs and starts in seconds without them.


@cache
def _quiet_loading() -> None:
    """Per-file loading bars would drown the CLI's own progress bar and the replica logs."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


class CheckpointError(ValueError):
    """The directory is not a loadable Wan2.x T2V checkpoint."""


class Checkpoint:
    def __init__(self, path: str | Path, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.path = Path(path)
        index_file = self.path / "model_index.json"
        if not index_file.is_file():
            raise CheckpointError(f"{self.path} has no model_index.json: not a diffusers checkpoint")
        self.index = json.loads(index_file.read_text())
        for name in ("tokenizer", "text_encoder", ExpertKind.HIGH_NOISE.subfolder, "vae", "scheduler"):
            if self._component_class(name) is None:
                raise CheckpointError(f"{self.path}: model_index.json names no '{name}' component")

        self.simulated = self.settings.device == "sim"

    @cached_property
    def device(self) -> torch.device:
        import torch

        # The simulated accelerator's stand-in tensors live on the CPU
        cuda = torch.cuda.is_available() and self.settings.device not in ("cpu", "sim")
        return torch.device("cuda" if cuda else "cpu")

    @cached_property
    def dtype(self) -> torch.dtype:
        import torch

        auto = "bfloat16" if self.device.type == "cuda" else "float32"
        return getattr(torch, auto if self.settings.dtype == "auto" else self.settings.dtype)

    @cached_property
    def vae_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.settings.vae_dtype)

    @classmethod
    def from_settings(cls, settings: Settings) -> Checkpoint:
        return cls(settings.model or default_model_dir(settings.cache_dir), settings)

    # -- facts about the checkpoint ------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.settings.model_id or self.index.get("_name_or_path") or self.path.name

    @cached_property
    def revision(self) -> str:
        """Hash of the configs and the weight files' sizes and mtimes: changes whenever the model
        does (hashing tens of GB of weights on every start would take minutes)."""
        digest = hashlib.sha256()
        for f in sorted(self.path.rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                digest.update(str(f.relative_to(self.path)).encode())
                stat = f.stat()
                digest.update(f.read_bytes() if f.suffix == ".json" else f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    @property
    def identity(self) -> ModelIdentity:
        """What cached values of this model depend on."""
        step_cache, quantization = self.settings.step_cache, self.settings.quantization
        return ModelIdentity(
            model=self.model_id,
            revision=self.revision,
            dtype=str(self.dtype),
            device="sim" if self.simulated else self.device.type,
            vae_dtype=str(self.vae_dtype),
            step_cache="none" if step_cache.kind == "none" else step_cache.model_dump_json(exclude={"min_steps"}),
            quantization=quantization.high_noise,
            quantization_2=quantization.low_noise,
            boundary_ratio=self.boundary_ratio,
            max_sequence_length=self.max_sequence_length,
            template_shared_steps=self.settings.cache.template_shared_steps,
        )

    @cached_property
    def max_sequence_length(self) -> int:
        """Text tokens the prompt embeddings are padded to: the setting, else the tokenizer's
        `model_max_length` (a model trained on short captions says so there), else diffusers'
        WanPipeline default of 512. A tokenizer without a limit stores a huge sentinel instead."""
        if self.settings.max_sequence_length is not None:
            return self.settings.max_sequence_length
        config = self.path / "tokenizer" / "tokenizer_config.json"
        limit = json.loads(config.read_text()).get("model_max_length") if config.is_file() else None
        return limit if isinstance(limit, int) and 0 < limit <= WAN_MAX_SEQUENCE_LENGTH else WAN_MAX_SEQUENCE_LENGTH

    @property
    def boundary_ratio(self) -> float | None:
        """Wan2.2: steps with t >= ratio * num_train_timesteps go to the high-noise expert."""
        return self.index.get("boundary_ratio") if self.has_low_noise_expert else None

    @property
    def has_low_noise_expert(self) -> bool:
        """False for Wan2.1-style checkpoints: one transformer runs every step."""
        low = ExpertKind.LOW_NOISE.subfolder
        return self._component_class(low) is not None and (self.path / low).is_dir()

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        """(1, C, (F-1)//4+1, H//8, W//8) for Wan's VAE, read from the component configs."""
        vae = self.component_config("vae")
        t, s = vae.get("scale_factor_temporal", 4), vae.get("scale_factor_spatial", 8)
        channels = self.component_config(ExpertKind.HIGH_NOISE.subfolder)["in_channels"]
        return (1, channels, (num_frames - 1) // t + 1, height // s, width // s)

    # -- components ------------------------------------------------------------------------

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path / "tokenizer")

    def text_encoder(self) -> torch.nn.Module:
        return self._load("text_encoder", self.dtype)

    def expert(self, kind: ExpertKind) -> torch.nn.Module:
        if not isinstance(kind, ExpertKind):
            raise ValueError(f"expert must be one of {[k.name for k in ExpertKind]}, not {kind!r}")
        if kind is ExpertKind.LOW_NOISE and not self.has_low_noise_expert:
            raise CheckpointError(f"{self.path} is a single-transformer (Wan2.1-style) checkpoint")
        from stages.quantization import quantization_config

        quantization = quantization_config(self.settings.quantization.of(kind), self.device)
        return self._load(kind.subfolder, self.dtype, quantization_config=quantization)

    def vae(self) -> torch.nn.Module:
        from stages.cpu_convolution import use_onednn_conv3d
        from stages.cpu_rms_norm import use_rsqrt_rms_norm

        return use_rsqrt_rms_norm(use_onednn_conv3d(self._load("vae", self.vae_dtype)))

    def vae_without_weights(self) -> torch.nn.Module:
        """The VAE's class and config on the meta device: its arithmetic (tiling, blending), no weights."""
        import torch

        with torch.device("meta"):
            return self._class_of("vae").from_config(self.component_config("vae"))

    def scheduler_config(self) -> dict:
        config = dict(self._class_of("scheduler").load_config(self.path, subfolder="scheduler"))
        if self.simulated and self.settings.sim.flow_shift is not None:
            config["flow_shift"] = self.settings.sim.flow_shift  # the schedule of the model simulated
        return config

    def scheduler_class(self) -> type:
        return self._class_of("scheduler")

    # -- helpers ---------------------------------------------------------------------------

    def _component_class(self, name: str) -> tuple[str, str] | None:
        entry = self.index.get(name)
        if not entry or entry[0] is None or entry[1] is None:
            return None
        return entry[0], entry[1]

    def component_config(self, name: str) -> dict:
        """A component's config.json (e.g. "transformer"), without loading its weights."""
        return json.loads((self.path / name / "config.json").read_text())

    def _class_of(self, name: str) -> type:
        _quiet_loading()
        library, class_name = self._component_class(name)
        return getattr(importlib.import_module(library), class_name)

    def _load(self, name: str, dtype: torch.dtype, **options) -> torch.nn.Module:
        model = self._class_of(name).from_pretrained(self.path / name, torch_dtype=dtype, **options)
        return model.to(self.device).eval().requires_grad_(False)
