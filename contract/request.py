"""The generation request: what a client may ask for, and the request that will run.

`RequestFields` describes every field once. `VideoCreateBody` is what arrives (OpenAI's
videos API shape: `size` "WxH", `seconds`, aliases such as `steps`); `GenerationRequest`
is what runs: unset fields filled from the preset (`preview` / `final`) and the settings,
every value checked against `Settings.limits`, an invalid one failing with an error that
names the field and the allowed range. Checks that need a model (the content filter, the
tokenizer's token count) are handed in as `prompt_check` by the layer that has them.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from contract.adapters import AdapterRef
from contract.errors import FieldError, RequestInvalid
from contract.settings import Limits, Settings, get_settings

MAX_SEED = 2**63 - 1
PromptCheck = Callable[[str, str], None]  # (text, field): raises FieldError(field, ...) for text that may not run
# The request's adapters -> the same, resolved against the adapter store; raises FieldError naming the bad one
AdapterCheck = Callable[[list[AdapterRef]], list[AdapterRef]]


def _settings(info: ValidationInfo) -> Settings:
    return (info.context or {}).get("settings") or get_settings()


def _in_range(name: str, value, low, high):
    if value is not None and not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def parse_size(size: str, field: str = "size") -> tuple[int, int]:
    """ "WxH" -> (width, height)."""
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise FieldError(field, f"{field} must be WxH, e.g. 128x128, got {size!r}") from None
    return width, height


def _check_text(text: str, info: ValidationInfo, field: str = "prompt") -> None:
    """The checks every text a request will use gets: its length, and the caller's `prompt_check`
    (content filter, token count)."""
    limit = _settings(info).limits.max_prompt_chars
    if len(text) > limit:
        raise FieldError(field, f"{field} must be at most {limit} characters, got {len(text)}")
    if (check := (info.context or {}).get("prompt_check")) is not None:
        check(text, field)


def _check_prompt(prompt: str, info: ValidationInfo) -> None:
    if not prompt.strip():
        raise FieldError("prompt", "prompt must not be blank")
    _check_text(prompt, info)


class RequestFields(BaseModel):
    """The generation fields a client sets, described once for HTTP, the CLI and batch rows."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    prompt: str | None = Field(None, min_length=1, description="What the video shows, in any language")
    negative_prompt: str | None = Field(None, description="What to steer away from; default from settings")
    preset: str | None = Field(None, description="Named settings bundle: 'preview' or 'final'")
    template: str | None = Field(None, description="A template from GET /v1/templates, instead of a prompt")
    slots: dict[str, str] | None = Field(None, description="The template's slot values")
    num_frames: int | None = Field(None, description="Frame count, 4k+1 (e.g. 17, 33, 81)")
    fps: int | None = Field(None, description="Frames per second of the mp4")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed; random when unset")
    num_inference_steps: int | None = Field(
        None, validation_alias=AliasChoices("steps", "num_inference_steps"), description="Denoising steps"
    )
    guidance_scale: FiniteFloat | None = Field(
        None,
        validation_alias=AliasChoices("guidance", "guidance_scale"),
        description="CFG scale of the high-noise expert",
    )
    guidance_scale_2: FiniteFloat | None = Field(
        None,
        validation_alias=AliasChoices("guidance_2", "guidance_scale_2"),
        description="CFG scale of the low-noise expert",
    )
    flow_shift: FiniteFloat | None = Field(
        None, gt=0, le=100, description="The scheduler's flow shift; default: the model's scheduler config"
    )
    cache: bool = Field(True, description="Use the latent cache (and, for templates, the shared high-noise phase)")
    min_physics_score: FiniteFloat | None = Field(
        None, ge=0, le=1, description="Below this physics score the low-noise phase is re-sampled (new seed)"
    )
    max_retries: int | None = Field(None, ge=0, description="Re-samples at most; default from settings")
    from_video: str | None = Field(
        None,
        validation_alias=AliasChoices("from", "from_video"),
        description="A finished video's id: make the final of that shot (its prompt, seed, frames and motion kept)",
    )
    lora: list[AdapterRef] | None = Field(
        None, description="LoRA adapters from GET /v1/adapters, each with its scale: [{name, scale}]"
    )
    priority: Literal["batch", "interactive"] = Field(
        "batch",
        description="interactive: run on the app's wide, low-latency expert pool where it has one "
        "(settings `interactive`); batch: the default pool, built for videos per hour",
    )


class VideoCreateBody(RequestFields):
    """`POST /v1/videos`: the OpenAI fields plus this cluster's generation settings.

    The official `openai` SDK posts `multipart/form-data` with `seconds` as a string ("4")
    and `size` as "WxH"; other clients post JSON. Both land here."""

    model: str | None = Field(None, description="Model id from GET /v1/models; default: the served model")
    size: str | None = Field(None, description="WxH in pixels, e.g. 128x128", examples=["128x128"])
    seconds: FiniteFloat | None = Field(None, gt=0, description="Duration; frames = seconds * fps rounded to 4k+1")

    @classmethod
    def parse(cls, data: Any) -> VideoCreateBody:
        """A JSON object or a form (its values are strings) as a body; RequestInvalid names the field."""
        if not isinstance(data, dict):
            raise RequestInvalid.of("body", "request body must be a JSON object or a form")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise RequestInvalid.from_validation(e) from None

    def to_request(
        self,
        settings: Settings,
        model_id: str,
        prompt_check: PromptCheck | None = None,
        adapter_check: AdapterCheck | None = None,
    ) -> GenerationRequest:
        if self.model not in (None, model_id):
            raise RequestInvalid.of(
                "model", f"unknown model {self.model!r}; this server serves {model_id!r}", "model_not_found"
            )
        fields = self.model_dump(exclude={"model", "size", "seconds"}, exclude_none=True)
        try:
            if self.size is not None:
                fields["width"], fields["height"] = parse_size(self.size)
        except FieldError as e:
            raise RequestInvalid.of(e.field, e.message) from None
        if self.seconds is not None:
            if self.num_frames is not None:
                raise RequestInvalid.of("seconds", "give seconds or num_frames, not both")
            preset = settings.presets.get(self.preset or settings.default_preset)
            fps = self.fps or (preset.fps if preset else 16)
            if not math.isfinite(self.seconds * fps):
                raise RequestInvalid.of("seconds", f"seconds * fps must be a finite number, got {self.seconds} * {fps}")
            fields["num_frames"] = 4 * round(self.seconds * fps / 4) + 1
        try:
            return GenerationRequest.build(settings, prompt_check, adapter_check, **fields)
        except ValidationError as e:
            raise RequestInvalid.from_validation(e) from None


class GenerationRequest(RequestFields):
    """A request as it will run: every field resolved and within the settings' limits."""

    base_prompt: str | None = Field(None, description="Set from the template: what the high-noise phase sees")
    height: int | None = Field(None, description="Pixels, a multiple of 16")
    width: int | None = Field(None, description="Pixels, a multiple of 16")
    sampling_from: dict[str, str] | None = Field(
        None, description="Set by the server: the fields an adapter's sampling settings filled, and which adapter's"
    )
    # pydantic runs "after" validators again on an instance placed in another model (a message):
    # a resolved request is not resolved twice.
    _resolved: bool = PrivateAttr(False)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            _check_prompt(v, info)
        return v

    @field_validator("negative_prompt")
    @classmethod
    def _negative_prompt(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v:
            _check_text(v, info, "negative_prompt")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            _settings(info).templates().get(v)  # raises, naming the known ones
        return v

    @field_validator("slots")
    @classmethod
    def _slots(cls, v: dict[str, str] | None, info: ValidationInfo) -> dict[str, str] | None:
        name = info.data.get("template")
        if v is not None and name is None:
            raise ValueError("slots need a template")
        if name is not None:
            _settings(info).templates().get(name).fill(v)  # raises, naming the slot
        for slot, value in (v or {}).items():
            _check_text(value, info, f"slots.{slot}")
        return v

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str | None, info: ValidationInfo) -> str | None:
        presets = _settings(info).presets
        if v is not None and v not in presets:
            raise ValueError(f"preset must be one of {sorted(presets)}, got {v!r}")
        return v

    @field_validator("height", "width")
    @classmethod
    def _side(cls, v: int | None, info: ValidationInfo) -> int | None:
        limits: Limits = _settings(info).limits
        high = limits.max_height if info.field_name == "height" else limits.max_width
        _in_range(info.field_name, v, limits.min_side, high)
        if v is not None and v % 16:
            raise ValueError(f"{info.field_name} must be a multiple of 16, got {v}")
        return v

    @field_validator("num_frames")
    @classmethod
    def _frames(cls, v: int | None, info: ValidationInfo) -> int | None:
        _in_range("num_frames", v, 1, _settings(info).limits.max_frames)
        if v is not None and v % 4 != 1:
            raise ValueError(f"num_frames must be 4k+1 (e.g. 17, 33, 81), got {v}")
        return v

    @field_validator("fps")
    @classmethod
    def _fps(cls, v: int | None, info: ValidationInfo) -> int | None:
        limits = _settings(info).limits
        return _in_range("fps", v, limits.min_fps, limits.max_fps)

    @field_validator("num_inference_steps")
    @classmethod
    def _steps(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _in_range("num_inference_steps", v, 1, _settings(info).limits.max_steps)

    @field_validator("guidance_scale", "guidance_scale_2")
    @classmethod
    def _guidance(cls, v: float | None, info: ValidationInfo) -> float | None:
        return _in_range(info.field_name, v, 0.0, _settings(info).limits.max_guidance)

    @field_validator("lora")
    @classmethod
    def _lora(cls, v: list[AdapterRef] | None, info: ValidationInfo) -> list[AdapterRef] | None:
        if not v:
            return None
        settings = _settings(info).adapters
        if len(v) > settings.max_per_request:
            raise ValueError(f"at most {settings.max_per_request} adapters per request, got {len(v)}")
        names = [a.name for a in v]
        if len(set(names)) < len(names):
            raise ValueError(f"each adapter at most once, got {names}")
        for i, adapter in enumerate(v):
            if abs(adapter.scale) > settings.max_scale:
                raise FieldError(
                    f"lora.{i}.scale",
                    f"scale of adapter {adapter.name!r} must be between {-settings.max_scale:g} and "
                    f"{settings.max_scale:g}, got {adapter.scale:g}",
                )
        if (check := (info.context or {}).get("adapter_check")) is not None:
            v = check(v)  # the store's word: each exists and fits this model; revision and experts filled in
        return sorted(v, key=lambda a: a.name)

    @model_validator(mode="after")
    def _fill_defaults(self, info: ValidationInfo) -> GenerationRequest:
        """Resolve every unset field, so the request says exactly what will run."""
        if self._resolved or (info.context or {}).get("resolved"):
            self._resolved = True
            return self
        settings = _settings(info)
        if self.template is not None:
            if self.prompt is not None:
                raise FieldError("prompt", "give a prompt or a template, not both")
            template = settings.templates().get(self.template)
            self.prompt = template.fill(self.slots)
            _check_prompt(self.prompt, info)
            self.base_prompt = template.base_prompt
            if self.seed is None:
                self.seed = template.seed  # variants of one template share the high-noise phase
        elif self.prompt is None:
            raise FieldError("prompt", "a prompt (or a template) is required")
        else:
            self.base_prompt = None
        self._adapter_sampling(settings)
        self.preset = self.preset or settings.default_preset
        preset = settings.presets[self.preset]
        for name in ("height", "width", "num_frames", "fps", "num_inference_steps"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(preset, name))
        if self.guidance_scale is None:
            self.guidance_scale = settings.guidance_scale
        if self.guidance_scale_2 is None:
            self.guidance_scale_2 = settings.guidance_scale_2
        if self.negative_prompt is None:
            self.negative_prompt = settings.negative_prompt
        if self.from_video is not None and self.min_physics_score is not None:
            raise FieldError(
                "min_physics_score", "the final of a shot keeps its preview's motion: it is not re-sampled"
            )
        if self.max_retries is None:
            self.max_retries = settings.limits.default_physics_retries if self.min_physics_score is not None else 0
        elif self.max_retries > settings.limits.max_physics_retries:
            raise FieldError("max_retries", f"max_retries must be at most {settings.limits.max_physics_retries}")
        if self.seed is None:
            self.seed = secrets.randbelow(2**31)
        self._resolved = True
        return self

    def _adapter_sampling(self, settings: Settings) -> None:
        """Fill the fields the request left unset from its adapters' sampling settings; two adapters
        that would fill one field with different values are refused, naming both."""
        chosen: dict[str, tuple[str, int | float]] = {}
        for adapter in self.lora or []:
            for field, value in (adapter.sampling.fields() if adapter.sampling else {}).items():
                if getattr(self, field) is not None:
                    continue  # the request's own value wins
                if field in chosen and chosen[field][1] != value:
                    other, theirs = chosen[field]
                    raise FieldError(
                        "lora",
                        f"adapters {other!r} and {adapter.name!r} sample differently: {field} {theirs:g} against "
                        f"{value:g}; set {field} in the request",
                    )
                chosen[field] = (adapter.name, value)
        limits = settings.limits
        highest = {"num_inference_steps": limits.max_steps, "guidance_scale": limits.max_guidance}
        highest["guidance_scale_2"] = limits.max_guidance
        for field, (name, value) in chosen.items():
            if value > highest.get(field, math.inf):
                raise FieldError("lora", f"adapter {name!r} sets {field} {value:g}; at most {highest[field]:g} here")
            setattr(self, field, value)
        self.sampling_from = {field: name for field, (name, _) in chosen.items()} or None

    def matched_to(self, template) -> GenerationRequest:
        """This free-form request sharing `template`'s high-noise phase (approximate match)."""
        return self.model_copy(update={"base_prompt": template.base_prompt, "seed": template.seed})

    def resample_seed(self, attempt: int) -> int:
        """The seed of re-sample `attempt` (1, 2, ...): derived, so a rerun repeats it."""
        return (self.seed + 1_000_003 * attempt) % MAX_SEED

    @property
    def template_mode(self) -> bool:
        """The high-noise phase runs on the template's base prompt, shared through the cache."""
        return self.base_prompt is not None and self.cache

    @property
    def classifier_free_guidance(self) -> bool:
        """As in WanPipeline: guidance (and the negative prompt) is on when scale > 1."""
        return self.guidance_scale > 1.0

    @classmethod
    def load(cls, data: dict[str, Any] | str, settings: Settings | None = None) -> GenerationRequest:
        """A request resolved before (a job record's, a batch row's between stages), read back as is."""
        context = {"settings": settings or get_settings(), "resolved": True}
        if isinstance(data, str):
            return cls.model_validate_json(data, context=context)
        return cls.model_validate(data, context=context)

    @classmethod
    def build(
        cls,
        settings: Settings | None = None,
        prompt_check: PromptCheck | None = None,
        adapter_check: AdapterCheck | None = None,
        **fields,
    ) -> GenerationRequest:
        """Validate `fields` against `settings` (default: the process settings); `prompt_check`
        runs on every prompt that will run (a template's filled-in one included)."""
        context = {"settings": settings or get_settings(), "prompt_check": prompt_check, "adapter_check": adapter_check}
        return cls.model_validate(fields, context=context)
