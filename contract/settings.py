"""The one settings object: everything tunable lives here.

Environment variables (`T2V_*`, nested with `__`, e.g. `T2V_LIMITS__MAX_STEPS=60`)
and YAML files feed it; nothing else in the code base hard-codes sizes or limits.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.experts import ExpertKind
from contract.templates import TemplateRegistry, load_registry


class Preset(BaseModel):
    """A named bundle of generation settings (tiered generation: cheap preview, then final)."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    fps: int = 16


class Limits(BaseModel):
    """Bounds every request is validated against, so one request cannot exhaust memory."""

    min_side: int = 16
    max_height: int = 256
    max_width: int = 256
    max_frames: int = 65
    max_steps: int = 60
    min_fps: int = 1
    max_fps: int = 60
    max_guidance: float = 20.0
    max_prompt_chars: int = 2000
    # UMT5 tokens (the encoder sees at most max_sequence_length; longer prompts would be cut)
    max_prompt_tokens: int = 512
    default_physics_retries: int = 2  # when a request sets min_physics_score but no max_retries
    max_physics_retries: int = 4


class ParallelSettings(BaseModel):
    """An expert replica as a group of ranks (stages/parallel.py): one video's steps split over
    them for latency, at the cost of videos per hour per GPU."""

    model_config = ConfigDict(extra="forbid")  # a kind of parallelism not built is an error, not ignored

    # Sequence-parallel (Ulysses) degree: each rank attends over 1/ulysses of the video's
    # tokens. Must divide the model's attention heads (40 for Wan2.2 A14B: 2, 4, 5, 8, ...).
    ulysses: int = Field(1, ge=1)
    # Classifier-free guidance parallel: 2 runs a guided step's conditional and unconditional
    # forwards at once, on two groups of `ulysses` ranks (no gain for unguided requests).
    cfg: int = Field(1, ge=1, le=2)
    # A rank that waits longer than this on the others (a peer dead or hung) fails, and the
    # replica with it: Serve replaces the whole group.
    collective_timeout_seconds: float = Field(300, gt=0)

    @property
    def degree(self) -> int:
        """Ranks (GPUs) per replica."""
        return self.ulysses * self.cfg


# What the replica of a parallel expert holds for itself: it only passes tensors to its ranks.
PARALLEL_COORDINATOR_CPUS = 0.05


class DeploymentSettings(BaseModel):
    """Placement and scaling of one Serve deployment (written out as-is by `serve build`)."""

    num_cpus: float = 0.25
    num_gpus: float = 0
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2
    max_ongoing_requests: int = 4
    max_queued_requests: int = -1  # -1: unbounded; the ingress bounds work by active jobs
    # Torch CPU threads per replica. Ray would give a fractional-CPU replica one; two make a
    # lone request faster (an expert runs a guided step's two forwards side by side on them).
    # PASSIVE: waiting threads sleep instead of spinning, so replicas sharing cores under
    # load degrade to one thread's speed, not far below (BENCHMARKS.md).
    threads: int = 1
    access_log: bool = True  # Serve's per-call access log line (off for the job store's heartbeats)
    graceful_shutdown_timeout_s: float | None = None  # how long Serve waits for a stopping replica
    initial_replicas: int | None = None  # None: min_replicas
    downscale_delay_s: float | None = None  # None: Serve's (600 s): idle this long before a replica goes
    upscale_delay_s: float | None = None  # None: Serve's (30 s): loaded this long before a replica is added
    look_back_period_s: float | None = None  # None: Serve's (30 s): the window its load is averaged over
    # A replica as a group of ranks: an expert's (stages/parallel.py), or the decoder's, whose
    # `ulysses` ranks each decode a share of the VAE's tiles (`decoding.tiled`).
    parallel: ParallelSettings = ParallelSettings()

    @property
    def replica_resources(self) -> dict[str, float]:
        """What one replica (or Ray Data actor) of this deployment holds itself: `num_cpus` and
        `num_gpus`, or, for a group of ranks, a coordinator's share (the ranks hold the rest)."""
        if self.parallel.degree > 1:
            return {"num_cpus": PARALLEL_COORDINATOR_CPUS, "num_gpus": 0}
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}

    def serve_options(self) -> dict:
        env = {"OMP_NUM_THREADS": str(self.threads), "OMP_WAIT_POLICY": "PASSIVE"}
        logging = {}
        if not self.access_log:
            from ray.serve.schema import LoggingConfig

            # The whole block, as `serve build` writes it, so serve.yaml and the bound app agree.
            logging = {"logging_config": LoggingConfig(enable_access_log=False).model_dump()}
        replica = self.replica_resources
        group = {}
        if self.parallel.degree > 1:
            # Its ranks (stages/parallel.py) hold the GPUs, a bundle each, on one node (NCCL between them).
            rank = {"CPU": self.num_cpus, **({"GPU": self.num_gpus} if self.num_gpus else {})}
            group = {
                "placement_group_bundles": [{"CPU": PARALLEL_COORDINATOR_CPUS}] + [rank] * self.parallel.degree,
                "placement_group_strategy": "STRICT_PACK",
            }
        return {
            "ray_actor_options": {**replica, "runtime_env": {"env_vars": env}},
            **group,
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "initial_replicas": self.min_replicas if self.initial_replicas is None else self.initial_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                **{
                    name: getattr(self, name)
                    for name in ("downscale_delay_s", "upscale_delay_s", "look_back_period_s")
                    if getattr(self, name) is not None
                },
            },
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            **logging,
            **(
                {"graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s}
                if self.graceful_shutdown_timeout_s is not None
                else {}
            ),
        }


class InteractiveSettings(BaseModel):
    """A second pool of expert replicas for requests with `priority: interactive` (a director
    waiting on one shot): wide replicas (`experts.parallel`) that keep one video fast, beside the
    default pool that keeps videos per hour up. Each expert gets a deployment of its own,
    `<expert>Interactive` (`ExpertsInteractive` where the experts are co-located), placed and
    scaled by `experts`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    experts: DeploymentSettings = Field(default_factory=lambda: DeploymentSettings(max_ongoing_requests=1))
    # None: as the default pool's `experts_placement`. co_located: one replica of g GPUs runs both
    # phases of a video, so a fast video takes g GPUs, not 2g.
    placement: Literal["disaggregated", "co_located"] | None = None
    # Batch jobs an ingress replica lends the pool at once (0: none), so its GPUs make batch videos
    # while no director waits. The pool's replicas then schedule steps (the step batcher): an
    # interactive video's steps go first, a lent job yields within one step. Give the pool's
    # replicas `max_ongoing_requests` above their share of these, or interactive requests queue.
    backfill: int = Field(0, ge=0)


def _default_deployments() -> dict[str, DeploymentSettings]:
    # Fractions of 2 CPUs for the embedded default model; on GPUs, give each expert num_gpus=1.
    return {
        "Ingress": DeploymentSettings(
            num_cpus=0.1,
            max_replicas=2,
            max_ongoing_requests=256,
            target_ongoing_requests=64,
            graceful_shutdown_timeout_s=130,
        ),
        # Every ingress heartbeats its jobs here every 2 s: no access-log line per call.
        "JobStore": DeploymentSettings(
            num_cpus=0.05, max_ongoing_requests=1000, target_ongoing_requests=500, access_log=False
        ),
        "TextEncoder": DeploymentSettings(num_cpus=0.2, max_replicas=2),
        **{expert.deployment: DeploymentSettings(num_cpus=0.5, max_replicas=2, threads=2) for expert in ExpertKind},
        "Decoder": DeploymentSettings(num_cpus=0.5, max_replicas=2, threads=2),
    }


class CacheSettings(BaseModel):
    """The latent cache (cache/): text embeddings, boundary latents, finished results."""

    enabled: bool = True
    directory: Path | None = None  # default: <cache_dir>/latents, shared by a node's replicas
    embeddings_bytes: int = 256 * 2**20
    boundary_bytes: int = 4 * 2**30
    result_bytes: int = 4 * 2**30
    memory_embeddings: int = 512  # per-replica LRU in front of the shared store
    lock_seconds: float = 30  # held locks are refreshed; one whose holder died expires after this
    # Signs entries (HMAC-SHA256): set it (T2V_CACHE__SECRET) when the directory is shared, so
    # only holders of the secret can write entries the replicas accept.
    secret: SecretStr | None = None
    # Approximate match (off by default): a free-form prompt whose embedding is this close
    # (cosine of mean-pooled UMT5 states) to a template's base prompt reuses that
    # template's high-noise phase, as NIRVANA reuses the noise of similar prompts.
    approximate_match: bool = False
    approximate_threshold: float = 0.9
    # How many of the high-noise steps a template's requests share (computed once on the base
    # prompt); the rest of the high-noise phase runs on each request's own prompt. None: all of
    # them, the default: bench/quality.py measures speed against slot adherence for each value,
    # and the whole phase keeps the slots within 5 points (BENCHMARKS.md). Fewer steps keep the
    # slots' words in charge of more of the layout, for a model where they would not.
    template_shared_steps: int | None = Field(None, ge=0)


class BatchingSettings(BaseModel):
    """Continuous batching in the expert replicas (stages/batching.py): requests of one
    shape share each step's forward. Off by default: on the CPU here a batched forward costs
    the same per request (BENCHMARKS.md), so it would only add the wait; on GPUs, turn it on."""

    enabled: bool = False
    max_batch_size: int = Field(4, ge=1)  # requests per forward (x2 samples with guidance)
    max_wait_ms: float = Field(20, ge=0)  # an idle expert waits this long for company


class StepCacheSettings(BaseModel):
    """diffusers' step caches on both experts: reuse transformer work across nearby steps,
    trading fidelity for speed (bench/stepcache.py measures both). `options` go to the
    diffusers config (FirstBlockCacheConfig: threshold; TaylorSeerCacheConfig:
    cache_interval, disable_cache_before_step, max_order, ...)."""

    kind: Literal["none", "first_block", "taylorseer"] = "none"
    options: dict[str, Any] = {}
    # Below this many steps (a distilled adapter's 4) consecutive steps share too little to
    # reuse: such a request is refused by name rather than run with its few steps skipped.
    min_steps: int = Field(8, ge=1)


class DecodingSettings(BaseModel):
    """The VAE decode (stages/decoder.py, stages/vae_tiles.py). Tiled: diffusers' Wan VAE tiling,
    overlapping tiles decoded one by one and blended, which bounds a decode's memory; a Decoder
    replica of several ranks (`deployments.Decoder.parallel.ulysses`) decodes a share of the tiles
    on each. Sizes in pixels of the video (diffusers' defaults: 256 and 192)."""

    model_config = ConfigDict(extra="forbid")

    tiled: bool = False
    tile_px: int = Field(256, ge=8)
    stride_px: int = Field(192, ge=8)

    @model_validator(mode="after")
    def _tiles_overlap(self) -> DecodingSettings:
        if self.stride_px > self.tile_px:
            raise ValueError(f"stride_px ({self.stride_px}) must be at most tile_px ({self.tile_px}): tiles must meet")
        return self


# Weight quantization of an expert as it loads (stages/quantization.py): torchao through diffusers'
# TorchAoConfig. int8 runs anywhere torchao does; fp8 needs a GPU with FP8 tensor cores (Ada, Hopper).
Quantization = Literal["none", "int8_weight_only", "int8_dynamic", "fp8"]


class QuantizationSettings(BaseModel):
    """Each expert's weights, quantized when it loads; `none` keeps the checkpoint's dtype.
    bench/quality.py measures int8 against the unquantized experts on this CPU (BENCHMARKS.md)."""

    high_noise: Quantization = "none"
    low_noise: Quantization = "none"

    def of(self, kind: ExpertKind) -> Quantization:
        return getattr(self, kind.stage)

    @property
    def both(self) -> Quantization:
        """What one GPU holding both experts holds them in: unquantized unless both are alike."""
        return self.high_noise if self.high_noise == self.low_noise else "none"


# The GPUs the cost model knows (sim/cost_model.py has a row for each, and a test checks
# the two lists agree); named here so a wrong name fails when the settings are read.
SimGpu = Literal["h100", "h200", "a100", "l40s"]


class SimSettings(BaseModel):
    """The simulated accelerator: the real control plane with a calibrated cost model
    (sim/cost_model.py) in place of model compute; its figures are always simulated."""

    gpu: SimGpu = "h100"  # the GPU every simulated replica stands for
    # Wall seconds per simulated second: at 0.001 a 1000 s video takes 1 s, so the control plane
    # runs at test speed while the stages keep the real model's proportions.
    time_scale: float = Field(0.001, gt=0)
    # Fraction of peak bf16 FLOPs the denoiser reaches. None: the value fitted to Wan2.2's
    # published H100 runs (docs/scaling.md); set it to model a faster or slower stack.
    efficiency: float | None = Field(None, gt=0, le=1)
    # The simulated model's schedule: Wan2.2 A14B's shift 12 puts 26 of 40 steps on the high-noise
    # expert (the embedded model's own shift 5: 17). None keeps the checkpoint's.
    flow_shift: float | None = Field(12.0, gt=0)


class AdapterSettings(BaseModel):
    """LoRA adapters (stages/adapter_store.py): where they live and how many a replica holds."""

    # A local directory or any pyarrow.fs URI holding one folder per adapter (a diffusers-format
    # `pytorch_lora_weights.safetensors`). None: the test adapters shipped with the default model.
    uri: str | None = None
    # Per expert replica, least recently used unloaded first; also Serve's multiplexed models per replica.
    max_loaded: int = Field(4, ge=1)
    max_per_request: int = Field(4, ge=1)
    max_scale: float = Field(2.0, gt=0)  # |scale| at most this: far beyond 1 a LoRA only breaks the video
    listing_seconds: float = Field(10, ge=0)  # the ingress re-reads the store's listing this often


class SafetySettings(BaseModel):
    """The prompt filter (stages/safety.py): categories of blocked terms, per language."""

    enabled: bool = True
    blocklist_file: Path | None = None  # None: the block list shipped in stages/safety.yaml


class LabelSettings(BaseModel):
    """How every video says it is AI-generated (stages/content_credentials.py): container
    metadata always; a signed C2PA manifest (content credentials: `c2pa.created`, source type
    trainedAlgorithmicMedia, the model and its revision); optionally a visible mark."""

    c2pa: bool = True
    # The signing identity, PEM files: the certificate then its chain up to (not including) the
    # root, and its private key. Unset: a development identity generated into
    # <cache_dir>/c2pa (signatures verify, but no trust list knows it).
    signing_cert: Path | None = None
    signing_key: Path | None = None
    signing_alg: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = "es256"
    timestamp_url: str | None = None  # an RFC 3161 time-stamp authority; None: no timestamp
    visible: bool = False  # an "AI" mark in the frames' bottom-right corner

    @model_validator(mode="after")
    def _cert_with_key(self) -> LabelSettings:
        if (self.signing_cert is None) != (self.signing_key is None):
            raise ValueError("labels.signing_cert and labels.signing_key go together: set both or neither")
        return self


MIN_API_KEY_CHARS = 16


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


class ServingSettings(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)  # an error about a key never prints it

    host: str = "127.0.0.1"
    port: int = 8000
    # Jobs queued or in progress across the cluster; beyond it POST gets 503 + Retry-After.
    max_active_jobs: int = 32
    retry_after_seconds: int = 5
    # Where job records and mp4s live: a local path or any pyarrow.fs URI (s3://, gs://, ...),
    # shared by all replicas. Default: <cache_dir>/outputs.
    output_uri: str | None = None
    # The job store answers from memory and writes records behind: a new or ended job at once, a
    # stage's progress after this long, so that a job's stages make few writes (a store restarted
    # meanwhile misses at most that progress: the stages report again, or the watchdog acts).
    record_write_delay_seconds: float = Field(0.25, ge=0)
    # An expert's word on its job's steps at most this often (a progress bar polled about once a
    # second needs no more): each word costs the expert's replica, Ray and the job store, and a
    # fleet of many GPUs sends them for every job in flight. A cancelled job's expert stops
    # within about two of these.
    progress_seconds: float = Field(1.0, gt=0)
    ray_temp_dir: str = "/tmp/t2v-ray"  # short: Ray's socket paths must stay under 107 bytes
    # Ray's dashboard process writes the Prometheus service-discovery file of the metrics
    # agents (<ray_temp_dir>/prom_metrics_service_discovery.json): no dashboard, no metrics.
    metrics: bool = True
    # Bearer tokens clients must send (`Authorization: Bearer <key>`); each key sees only
    # the jobs it created. None set: the server binds 127.0.0.1 only.
    api_keys: list[str] = []
    # Serving on a non-loopback address without API keys must be asked for by name: the
    # ingress refuses to start otherwise (anyone on the network could use the cluster).
    allow_unauthenticated: bool = False
    max_body_bytes: int = 64 * 1024  # a request body beyond this gets 413 before it is read
    # Faults: a stage running longer than this fails its job (a hung replica cannot hold a
    # job forever); a job whose ingress replica stopped heartbeating fails after
    # runner_lost_seconds; a job whose stage replica died is re-run up to job_retries times.
    stage_timeout_seconds: float = 600
    heartbeat_seconds: float = 2
    runner_lost_seconds: float = 15
    job_retries: int = 1
    # An ingress replica that Serve stops (scale-down, redeploy) finishes the jobs it runs first,
    # for at most this long (its deployment's graceful_shutdown_timeout_s is set to allow it).
    drain_seconds: float = 120

    @field_validator("api_keys")
    @classmethod
    def _keys_hard_to_guess(cls, keys: list[str]) -> list[str]:
        # An empty key would let `Authorization: Bearer ` in; a short one can be guessed. The
        # error names the key's position, never the key.
        for index, key in enumerate(keys):
            if len(key) < MIN_API_KEY_CHARS or any(c.isspace() for c in key):
                raise ValueError(
                    f"api_keys[{index}]: an API key must be at least {MIN_API_KEY_CHARS} characters, with no "
                    "spaces (make one: python -c 'import secrets; print(secrets.token_urlsafe(24))')"
                )
        return keys

    @property
    def bind_host(self) -> str:
        """`host`, but loopback only while no API key protects the server."""
        return self.host if self.api_keys else "127.0.0.1"

    def check_open_access(self, host: str) -> None:
        """Raises when `host` (where Serve's proxies listen) is reachable from other machines and
        nothing guards it: no API key, and no explicit `allow_unauthenticated`."""
        if not (is_loopback(host) or self.api_keys or self.allow_unauthenticated):
            raise PermissionError(
                f"refusing to serve on {host} without API keys: set serving.api_keys (T2V_SERVING__API_KEYS), "
                "or serving.allow_unauthenticated=true to serve it open on purpose"
            )


class Settings(BaseSettings):
    # Errors name the setting and the reason, never the value given: keys and credentials live here.
    model_config = SettingsConfigDict(
        env_prefix="T2V_", env_nested_delimiter="__", extra="ignore", hide_input_in_errors=True
    )

    # Model: a diffusers-format Wan2.x T2V directory; None means the embedded default,
    # built on first use into `cache_dir`.
    model: Path | None = None
    model_id: str | None = Field(None, description="Name reported to clients; defaults to the directory name")
    cache_dir: Path = Path.home() / ".cache" / "t2v-cluster"
    # "sim": the simulated accelerator (sim/gpu.py, settings in `sim`)
    device: Literal["auto", "cpu", "cuda", "sim"] = "auto"
    # bf16 on CUDA, fp32 on CPU unless set.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    vae_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Text tokens the encoder's output is padded to (the experts' cross-attention sees that many).
    # None: the checkpoint's own, its tokenizer's `model_max_length` (Wan2.2: 512).
    max_sequence_length: int | None = Field(None, ge=1)
    # On a CPU with >= 2 torch threads, a guided step's two forwards run side by side, one
    # intra-op thread each: faster than one after another, and bit-identical (stages/guidance.py).
    parallel_guidance: bool = True

    # Generation defaults (Wan2.2 A14B official: 4.0 / 3.0 guidance).
    default_preset: str = "preview"
    guidance_scale: float = 4.0
    guidance_scale_2: float = 3.0
    negative_prompt: str = ""
    presets: dict[str, Preset] = {
        "preview": Preset(height=64, width=64, num_frames=17, num_inference_steps=10),
        "final": Preset(height=128, width=128, num_frames=33, num_inference_steps=20),
    }
    # The final of a previewed shot (`from`): the preview's latent, upsampled to the final's size, is
    # re-noised to this noise level (SDEdit) and the low-noise expert denoises it from there. Lower
    # keeps more of the preview; at most the MoE boundary's level: the preview's layout and motion
    # (its high-noise phase) always stay. bench/quality.py measures what it keeps and saves.
    finalize_strength: float = Field(0.6, gt=0, le=1)
    # Physics repair: a re-sampled video replaces the first only if it moves at least this share
    # as much (the scorer's `dynamics`); else a still video, with nothing to break, would win.
    repair_min_dynamics: float = Field(0.8, ge=0, le=1)
    limits: Limits = Limits()
    templates_file: Path | None = None  # None: the templates shipped in contract/templates.yaml
    serving: ServingSettings = ServingSettings()
    cache: CacheSettings = CacheSettings()
    safety: SafetySettings = SafetySettings()
    adapters: AdapterSettings = AdapterSettings()
    labels: LabelSettings = LabelSettings()
    batching: BatchingSettings = BatchingSettings()
    step_cache: StepCacheSettings = StepCacheSettings()
    quantization: QuantizationSettings = QuantizationSettings()
    decoding: DecodingSettings = DecodingSettings()
    sim: SimSettings = SimSettings()
    deployments: dict[str, DeploymentSettings] = Field(default_factory=_default_deployments)
    # disaggregated: each expert its own deployment, its replicas on GPUs of their own (requests
    # pipeline across the two). co_located: one `Experts` deployment whose every replica holds both
    # experts and runs a request's two phases in turn, placed and scaled as
    # `deployments.HighNoiseExpert` says (a GPU too small for both swaps them: bench/fleet/placements.py).
    experts_placement: Literal["disaggregated", "co_located"] = "disaggregated"
    interactive: InteractiveSettings = InteractiveSettings()

    @model_validator(mode="after")
    def _step_cache_on_one_rank(self) -> Settings:
        # A step cache decides per rank whether to skip a forward; ranks that disagree would wait on
        # each other's collectives forever.
        parallel = [n for n, d in self.deployments.items() if d.parallel.degree > 1 and n != "Decoder"]
        if self.interactive.enabled and self.interactive.experts.parallel.degree > 1:
            parallel.append("interactive.experts")
        if parallel and self.step_cache.kind != "none":
            raise ValueError(f"step_cache ({self.step_cache.kind}) does not run on parallel experts ({parallel})")
        return self

    @model_validator(mode="after")
    def _decoder_ranks_share_tiles(self) -> Settings:
        # A decoder's ranks split the VAE's tiles between them: there is nothing else to split.
        parallel = self.deployments["Decoder"].parallel
        if parallel.degree > 1 and (parallel.cfg != 1 or not self.decoding.tiled):
            raise ValueError(
                f"deployments.Decoder.parallel: a decoder of {parallel.degree} ranks shares the VAE's tiles "
                "(decoding.tiled: true) over parallel.ulysses ranks; cfg must be 1"
            )
        return self

    @model_validator(mode="after")
    def _ingress_can_drain(self) -> Settings:
        grace = self.deployments["Ingress"].graceful_shutdown_timeout_s
        if grace is not None and grace < self.serving.drain_seconds + 5:
            raise ValueError(
                f"deployments.Ingress.graceful_shutdown_timeout_s ({grace:g}) must leave the ingress "
                f"serving.drain_seconds ({self.serving.drain_seconds:g}) + 5 to finish its jobs"
            )
        return self

    @field_validator("deployments", mode="before")
    @classmethod
    def _merge_deployments(cls, given: dict) -> dict:
        """A YAML or env override names only what it changes; the rest keeps its defaults."""
        merged = {name: d.model_dump() for name, d in _default_deployments().items()}
        canonical = {name.lower(): name for name in merged}  # env names arrive lower-cased
        for name, options in (given or {}).items():
            if name.lower() not in canonical:
                raise ValueError(f"unknown deployment {name!r}; known: {sorted(merged)}")
            merged[canonical[name.lower()]].update(options.model_dump() if isinstance(options, BaseModel) else options)
        return merged

    def with_parallel_experts(self, parallel: ParallelSettings) -> Settings:
        """These settings with every expert replica a group of `parallel.degree` ranks."""
        experts = {kind.deployment for kind in ExpertKind}
        deployments = {
            name: d.model_copy(update={"parallel": parallel}) if name in experts else d
            for name, d in self.deployments.items()
        }
        settings = self.model_copy(update={"deployments": deployments})
        return settings._step_cache_on_one_rank()

    def interactive_pool(self) -> Settings:
        """What a replica of the interactive pool reads: these settings with each expert's
        deployment settings those of `interactive.experts` (its placement, threads and ranks)."""
        experts = {kind.deployment for kind in ExpertKind}
        deployments = {name: self.interactive.experts if name in experts else d for name, d in self.deployments.items()}
        placement = self.interactive.placement or self.experts_placement
        update = {"deployments": deployments, "experts_placement": placement}
        if self.interactive.backfill:  # lent batch jobs yield to interactive ones step by step
            update["batching"] = self.batching.model_copy(update={"enabled": True})
        return self.model_copy(update=update)

    def templates(self) -> TemplateRegistry:
        """The template registry (loaded once per file)."""
        return load_registry(str(self.templates_file) if self.templates_file else None)

    @property
    def output_uri(self) -> str:
        return self.serving.output_uri or str(self.cache_dir / "outputs")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> Settings:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls(**{**data, **overrides})


@lru_cache
def get_settings() -> Settings:
    return Settings()
