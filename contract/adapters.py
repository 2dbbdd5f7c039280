"""LoRA adapters as a request names them, and the multiplexed model id of an expert's adapters.

A request asks for `lora: [{"name", "scale"}]`. The validator (stages/validation.py)
resolves each name against the adapter store and fills in what the stages and the caches
need: the adapter's `revision` (a changed adapter is another adapter) and the `experts` it
holds weights for (an adapter for the low-noise expert alone leaves the high-noise phase,
and so a template's shared boundary latent, as it was).

An adapter may say how it must be sampled (`AdapterSampling`, from its adapter.json): a
distilled few-step adapter runs 4 steps without guidance. A request that names it gets those
settings for every field it leaves unset.

Ray Serve model multiplexing routes a request to an expert replica that already holds its
adapters: the multiplexed model id of one expert's part of a request is its adapters'
names and revisions (`adapter_set_id`). Scales are not part of it: changing a scale needs
no load.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from contract.experts import ExpertKind

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # no "@" or "+": they separate the parts of a set id


# adapter.json key -> the request field it sets
SAMPLING_FIELDS = {
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "guidance_2": "guidance_scale_2",
    "flow_shift": "flow_shift",
}


class AdapterSampling(BaseModel):
    """How an adapter must be sampled: what a request naming it gets where it sets nothing itself."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, ge=1, description="Denoising steps (a distilled adapter: e.g. 4)")
    guidance: FiniteFloat | None = Field(None, ge=0, description="CFG scale of the high-noise expert; 1: none")
    guidance_2: FiniteFloat | None = Field(None, ge=0, description="CFG scale of the low-noise expert")
    flow_shift: FiniteFloat | None = Field(None, gt=0, description="The scheduler's flow shift")

    def fields(self) -> dict[str, int | float]:
        """The request fields these settings fill: {field: value}, unset ones left out."""
        return {SAMPLING_FIELDS[k]: v for k, v in self.model_dump(exclude_none=True).items()}


class AdapterRef(BaseModel):
    """One adapter of a request: its name in the adapter store and the scale of its weights."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ADAPTER_NAME, description="An adapter from GET /v1/adapters")
    scale: FiniteFloat = Field(1.0, description="Multiplies the adapter's weights; 0 gives the base model")
    # Filled in from the adapter store when the request is validated.
    revision: str | None = Field(None, description="Set by the server: the adapter's version")
    experts: list[str] | None = Field(None, description="Set by the server: the experts it changes")
    sampling: AdapterSampling | None = Field(None, description="Set by the server: how the adapter is sampled")

    def changes(self, kind: ExpertKind) -> bool:
        return self.experts is not None and kind.stage in self.experts


def adapters_for(adapters: list[AdapterRef] | None, kind: ExpertKind) -> list[AdapterRef]:
    """The adapters of a request that change `kind`'s expert, in a fixed (name) order."""
    return sorted((a for a in adapters or [] if a.changes(kind)), key=lambda a: a.name)


def adapter_set_id(adapters: list[AdapterRef]) -> str:
    """The multiplexed model id of adapters loaded together: "name@revision+..."; "" for none."""
    return "+".join(f"{a.name}@{a.revision}" for a in sorted(adapters, key=lambda a: a.name))


def parse_adapter_set_id(model_id: str) -> list[tuple[str, str]]:
    """(name, revision) pairs of a multiplexed model id."""
    pairs = []
    for part in filter(None, model_id.split("+")):
        name, _, revision = part.partition("@")
        pairs.append((name, revision))
    return pairs
