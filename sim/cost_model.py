"""The cost model of simulated GPUs: how many seconds Wan2.2-T2V-A14B's stages would take.

The simulated accelerator (`device: sim`) charges these seconds in place of model compute.
Work is counted from the architecture (FLOPs of a forward, bytes of weights) and turned into
seconds with a GPU's peak and a few constants fitted to published runs of the real model
(`python -m bench.calibration` fits and prints them; docs/scaling.md has the formulas and
sources). Every figure from here is a model of a simulated GPU, never a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from contract.experts import ExpertKind
from contract.settings import Quantization, SimGpu, SimSettings


@dataclass(frozen=True)
class Gpu:
    """One GPU of the table: datasheet peaks, and the effective host link of its usual server."""

    name: str
    peak_tflops: float  # dense bf16 tensor-core throughput (no sparsity)
    memory_gb: float
    hbm_tbps: float  # memory bandwidth: how fast a forward can stream the weights
    host_gbps: float  # effective host-to-device copies from pinned memory (loading, swapping experts)
    interconnect_gbps: float  # GPU-to-GPU, both directions (NVLink, or PCIe where there is none)
    fp8: bool = True  # FP8 tensor cores (Ada, Hopper and later)


GPUS: dict[SimGpu, Gpu] = {
    "h100": Gpu("h100", peak_tflops=989, memory_gb=80, hbm_tbps=3.35, host_gbps=50, interconnect_gbps=900),
    "h200": Gpu("h200", peak_tflops=989, memory_gb=141, hbm_tbps=4.8, host_gbps=50, interconnect_gbps=900),
    "a100": Gpu("a100", peak_tflops=312, memory_gb=80, hbm_tbps=2.04, host_gbps=25, interconnect_gbps=600, fp8=False),
    # PCIe 4.0 only: no NVLink, so sequence parallelism talks over the same ~32 GB/s each way.
    "l40s": Gpu("l40s", peak_tflops=362, memory_gb=48, hbm_tbps=0.864, host_gbps=25, interconnect_gbps=64),
}
REFERENCE_GPU = "h100"  # where the published runs were measured, so where the constants were fitted


@dataclass(frozen=True)
class WanA14B:
    """Wan2.2-T2V-A14B's architecture (diffusers' `WanTransformer3DModel` config of both experts,
    `UMT5EncoderModel` of umt5-xxl, `AutoencoderKLWan`)."""

    layers: int = 40
    hidden: int = 5120  # 40 heads x 128
    heads: int = 40
    ffn: int = 13824
    patch: tuple[int, int, int] = (1, 2, 2)  # (frames, height, width) of the latent per token
    vae_stride: tuple[int, int, int] = (4, 8, 8)  # the VAE's compression of (frames, height, width)
    latent_channels: int = 16
    text_tokens: int = 512  # prompts are padded to max_sequence_length: cross-attention always sees 512
    text_dim: int = 4096
    freq_dim: int = 256
    bytes_per_param: int = 2  # bf16
    # UMT5-XXL encoder: 24 layers, d_model 4096, gated FFN 10240, vocabulary 256384.
    encoder_layers: int = 24
    encoder_hidden: int = 4096
    encoder_ffn: int = 10240
    encoder_vocab: int = 256384
    # VAE decoder FLOPs per output pixel per frame: torch's FLOP counter on diffusers'
    # AutoencoderKLWan (Wan2.1's VAE, which the A14B models use), constant from 64x64 up.
    vae_decode_flops_per_pixel_frame: float = 8.55e6
    vae_params: float = 127e6

    def expert_params(self) -> int:
        """Parameters of one expert; 14.29e9 as diffusers counts the real config."""
        d, f = self.hidden, self.ffn
        attention = 4 * (d * d + d)  # q, k, v, out projections with biases
        block = 2 * attention + 2 * d * f + f + d + 4 * d + 2 * d + 6 * d  # + qk norms, cross norm, modulation
        text_embedder = self.text_dim * d + d + d * d + d
        time_embedder = self.freq_dim * d + d + d * d + d + d * 6 * d + 6 * d
        patch_in = self.latent_channels * self.patch[0] * self.patch[1] * self.patch[2]
        patch_io = (patch_in * d + d) + (d * patch_in + patch_in) + 2 * d
        return self.layers * block + text_embedder + time_embedder + patch_io

    def encoder_params(self) -> int:
        """UMT5-XXL encoder parameters without the embedding table (~4.6e9; ~5.7e9 with it)."""
        d = self.encoder_hidden
        return self.encoder_layers * (4 * d * d + 3 * d * self.encoder_ffn + 2 * d)

    def expert_gb(self) -> float:
        return self.expert_params() * self.bytes_per_param / 1e9

    def encoder_gb(self) -> float:
        return (self.encoder_params() + self.encoder_vocab * self.encoder_hidden) * self.bytes_per_param / 1e9


WAN_A14B = WanA14B()


def latent_shape(height: int, width: int, frames: int, model: WanA14B = WAN_A14B) -> tuple[int, int, int, int]:
    """(channels, frames, height, width) of the latent of one video, as WanPipeline makes it."""
    stride_t, stride_h, stride_w = model.vae_stride
    if height <= 0 or width <= 0 or height % (stride_h * model.patch[1]) or width % (stride_w * model.patch[2]):
        raise ValueError(f"height and width must be positive multiples of 16, got {height}x{width}")
    if frames <= 0 or frames % stride_t != 1:
        raise ValueError(f"frames must be 4k+1 (the VAE keeps the first frame apart), got {frames}")
    return (model.latent_channels, (frames - 1) // stride_t + 1, height // stride_h, width // stride_w)


def tokens(height: int, width: int, frames: int, model: WanA14B = WAN_A14B) -> int:
    """Tokens one expert forward sees: 75600 at 1280x720, 81 frames."""
    _, t, h, w = latent_shape(height, width, frames, model)
    return (t // model.patch[0]) * (h // model.patch[1]) * (w // model.patch[2])


def expert_forward_flops(n_tokens: int, model: WanA14B = WAN_A14B) -> float:
    """FLOPs of one expert forward for one sample (`expert_flops_by_kind`, summed)."""
    return sum(expert_flops_by_kind(n_tokens, model))


def expert_flops_by_kind(n_tokens: int, model: WanA14B = WAN_A14B) -> tuple[float, float]:
    """(linear, attention) FLOPs of one expert forward for one sample: the linear layers at 2 FLOPs
    per weight per token (self-attention q/k/v/out, cross-attention q/out on the video tokens and
    k/v on the 512 text tokens, the FFN), and attention's scores and weighted sums (4 x tokens x
    keys x hidden). Attention grows with tokens squared: at 720p it is ~72 % of the total.
    Embeddings, norms and the output head are left out (< 0.1 %)."""
    d, text = model.hidden, model.text_tokens
    linear = 2 * n_tokens * (6 * d * d + 2 * d * model.ffn) + 2 * text * 2 * d * d
    attention = 4 * n_tokens * n_tokens * d + 4 * n_tokens * text * d
    return model.layers * linear, model.layers * attention


def text_encoder_flops(prompts: int, model: WanA14B = WAN_A14B) -> float:
    """FLOPs of encoding `prompts` prompts of 512 tokens with UMT5-XXL."""
    n, d = model.text_tokens, model.encoder_hidden
    per_prompt = 2 * n * model.encoder_params() + model.encoder_layers * 4 * n * n * d
    return prompts * per_prompt


def vae_decode_flops(height: int, width: int, frames: int, model: WanA14B = WAN_A14B) -> float:
    latent_shape(height, width, frames, model)
    return model.vae_decode_flops_per_pixel_frame * height * width * frames


@dataclass(frozen=True)
class Calibration:
    """The fitted constants (bench/calibration.py fits them to the published runs)."""

    efficiency: float  # fraction of peak bf16 FLOPs the denoiser and text encoder reach
    parallel_overhead: float  # sequence parallelism's communication, relative to compute, on NVLinked H100s
    decode_efficiency: float  # fraction of peak bf16 FLOPs the VAE decoder reaches


# Wan2.2's reference code (FSDP + Ulysses, fp32 VAE) on H100s: its three published runs fix all three.
# SGLang on the same GPUs reaches more of the peak; one published run fixes only its efficiency.
FITTED: dict[str, Calibration] = {
    "wan2.2": Calibration(efficiency=0.5172, parallel_overhead=0.07452, decode_efficiency=0.03387),
    "sglang": Calibration(efficiency=0.7350, parallel_overhead=0.07452, decode_efficiency=0.03387),
}
DEFAULT_CALIBRATION = "wan2.2"  # the conservative one: replicas run diffusers, not SGLang's tuned kernels

# CFG parallelism: a guided step's conditional and unconditional forwards on two GPUs (or groups)
# at once, with one all-gather of the noise prediction a step and the weights on both. TensorRT-LLM
# VisualGen, Wan2.2-T2V-A14B 1280x720x81, 40 steps on B200: the denoising loop took 342.04 s on
# one GPU and 179.96 s with cfg_size=2 (NVIDIA's tech blog "Scaling Video Generation Across NVL72
# rack with TensorRT-LLM", section "CFG Parallelism"): 1.90x on 2 GPUs. Its communication is one
# latent a step, so the same efficiency is taken for every GPU of the table.
CFG_PARALLEL_EFFICIENCY = 342.04 / (2 * 179.96)

# Quantized experts (stages/quantization.py: torchao's configs on the linear layers; attention, norms
# and embeddings stay bf16). One published run per kind: diffusers-torchao's README, CogVideoX-5B,
# 50 steps, one H100, torch.compile with fused QKV: bf16 87.455 s, int8 weight-only 87.026 s, int8
# dynamic 78.945 s, fp8 (dynamic activations) 75.255 s; the weights 21.98 GB in bf16, ~11.4 GB in
# each of the others. Its linear layers are 51 % of a forward's FLOPs at 720x480x49 (42 layers,
# hidden 3072, FFN 12288, 17,550 video + 226 text tokens in joint attention, `COGVIDEOX_LINEAR_SHARE`),
# so the linear layers run `QUANTIZED_LINEAR_SPEEDUP` times faster: share / (t_q / t - (1 - share)).
# The whole run's time is taken as denoising (its decode and text encoding are left in): the
# conservative reading, as those did not get faster.
COGVIDEOX_LINEAR_SHARE = 0.5090
_COGVIDEOX_SECONDS = {"none": 87.455, "int8_weight_only": 87.026, "int8_dynamic": 78.945, "fp8": 75.255}
QUANTIZED_LINEAR_SPEEDUP: dict[Quantization, float] = {
    kind: COGVIDEOX_LINEAR_SHARE / (seconds / _COGVIDEOX_SECONDS["none"] - (1 - COGVIDEOX_LINEAR_SHARE))
    for kind, seconds in _COGVIDEOX_SECONDS.items()
}

# Estimates, not fitted (each far below the fitted terms at the sizes the published runs used):
FORWARD_LAUNCH_S = 0.005  # kernel launches of one forward: 40 blocks x ~30 kernels x ~4 us
ENCODE_LATENCY_S = 0.05  # tokenising and launching the text encoder, beyond its FLOPs
WORKSPACE_GB = 10.0  # activations at 720p (~2 GB for the FFN's 13824-wide hidden) + CUDA context + slack
SWAPS_PER_VIDEO = 2  # one GPU running both experts loads high-noise, then low-noise, for every video


class CostModel:
    """Seconds of Wan2.2-T2V-A14B's stages on one simulated GPU (or `gpus` of them in parallel).

    `gpu`: a name of the table; `efficiency` overrides the fitted fraction of peak the denoiser
    and text encoder reach; `calibration`: a name of FITTED, or constants (the fit tries its own);
    `quantization`: of the experts' weights (one byte a weight, and faster linear layers, as
    `QUANTIZED_LINEAR_SPEEDUP`).
    """

    def __init__(
        self,
        gpu: str = REFERENCE_GPU,
        efficiency: float | None = None,
        calibration: str | Calibration = DEFAULT_CALIBRATION,
        model: WanA14B = WAN_A14B,
        quantization: Quantization = "none",
    ):
        if gpu not in GPUS:
            raise ValueError(f"unknown GPU {gpu!r} for the cost model; known: {', '.join(sorted(GPUS))}")
        if isinstance(calibration, str):
            if calibration not in FITTED:
                raise ValueError(f"unknown calibration {calibration!r}; known: {', '.join(sorted(FITTED))}")
            calibration = FITTED[calibration]
        if efficiency is not None:
            if not 0 < efficiency <= 1:
                raise ValueError(f"efficiency is a fraction of the GPU's peak, in (0, 1]; got {efficiency}")
            calibration = replace(calibration, efficiency=efficiency)
        if quantization not in QUANTIZED_LINEAR_SPEEDUP:
            raise ValueError(f"unknown quantization {quantization!r}; known: {', '.join(QUANTIZED_LINEAR_SPEEDUP)}")
        if quantization == "fp8" and not GPUS[gpu].fp8:
            raise ValueError(f"quantization fp8 needs FP8 tensor cores, which the {gpu} does not have")
        self.gpu, self.calibration, self.model = GPUS[gpu], calibration, model
        self.quantization = quantization

    @classmethod
    def from_settings(cls, sim: SimSettings, quantization: Quantization = "none") -> CostModel:
        return cls(sim.gpu, sim.efficiency, quantization=quantization)

    def __repr__(self) -> str:
        return f"CostModel({self.gpu.name!r}, {self.calibration}, quantization={self.quantization!r})"

    def expert_gb(self) -> float:
        """One expert's weights on the GPU: bf16, or one byte a weight quantized."""
        return self.model.expert_gb() / (1 if self.quantization == "none" else self.model.bytes_per_param)

    @property
    def _flops_per_second(self) -> float:
        return self.gpu.peak_tflops * 1e12 * self.calibration.efficiency

    # -- denoising -----------------------------------------------------------------------------

    def forward_fixed_seconds(self) -> float:
        """What a forward costs whatever its size: streaming the expert's weights from HBM, and
        launching its kernels. Requests batched into one forward share it."""
        return self.expert_gb() / (self.gpu.hbm_tbps * 1e3) + FORWARD_LAUNCH_S

    def forward_compute_seconds(self, height: int, width: int, frames: int) -> float:
        """What one request adds to a forward: its FLOPs at the fitted fraction of peak, the linear
        layers' faster when the weights are quantized."""
        linear, attention = expert_flops_by_kind(tokens(height, width, frames, self.model), self.model)
        return (linear / QUANTIZED_LINEAR_SPEEDUP[self.quantization] + attention) / self._flops_per_second

    def batch_saturation(self, height: int, width: int, frames: int) -> float:
        """How much each extra request in a batch adds, as a share of a lone request's forward:
        compute / (compute + fixed). ~1 from 480p up (one video already fills the GPU: batching
        saves nothing); well below 1 for tiny latents, whose forward is mostly fixed cost."""
        compute = self.forward_compute_seconds(height, width, frames)
        return compute / (compute + self.forward_fixed_seconds())

    def forward_seconds(self, height: int, width: int, frames: int, batch: int = 1) -> float:
        """One forward of `batch` samples of one shape (a guided request is two samples):
        time(b) = time(1) x (1 + (b - 1) x saturation), never more than b lone forwards, never less than one."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        lone = self.forward_fixed_seconds() + self.forward_compute_seconds(height, width, frames)
        return lone * (1 + (batch - 1) * self.batch_saturation(height, width, frames))

    def step_seconds(
        self, expert: ExpertKind, height: int, width: int, frames: int, batch: int = 1, guidance: bool = True
    ) -> float:
        """One denoising step of `batch` requests of one shape on one GPU. Both experts share one
        architecture, so `expert` does not change the cost. Guidance runs a conditional and an
        unconditional forward (diffusers' WanPipeline runs them one after the other): twice the cost.
        time(b) = time(1) x (1 + (b - 1) x saturation): never more than b lone requests, never
        less than one."""
        if not isinstance(expert, ExpertKind):
            raise TypeError(f"expert must be an ExpertKind, got {expert!r}")
        return (2 if guidance else 1) * self.forward_seconds(height, width, frames, batch)

    # -- the other stages --------------------------------------------------------------------

    def encode_seconds(self, guidance: bool = True) -> float:
        """UMT5-XXL encoding of a request's prompt, and of its negative prompt under guidance."""
        prompts = 2 if guidance else 1
        return text_encoder_flops(prompts, self.model) / self._flops_per_second + ENCODE_LATENCY_S

    def decode_seconds(self, height: int, width: int, frames: int) -> float:
        """VAE decoding of one video. The fitted efficiency is low (a few % of peak): Wan's reference
        decodes in fp32, a few frames at a time through causal 3D convolutions."""
        flops = vae_decode_flops(height, width, frames, self.model)
        return flops / (self.gpu.peak_tflops * 1e12 * self.calibration.decode_efficiency)

    def load_seconds(self, component: str = "expert") -> float:
        """Loading a new replica's weights from host memory onto its GPU (`expert`, `text_encoder`,
        `decoder`). Reading the checkpoint from disk and converting fp32 files to bf16 come before
        this and are not modelled."""
        sizes = {
            "expert": self.expert_gb(),
            "text_encoder": self.model.encoder_gb(),
            "decoder": self.model.vae_params * 4 / 1e9,  # fp32, as the reference decodes
        }
        if component not in sizes:
            raise ValueError(f"unknown component {component!r}; known: {', '.join(sizes)}")
        return sizes[component] / self.gpu.host_gbps

    def needs_swap(self, gpus: int = 1) -> bool:
        """Whether `gpus` GPUs (weights sharded over them, as FSDP does) cannot hold both experts
        and a forward's workspace at once: then the experts take turns on the GPU. An L40S-48GB
        cannot hold two 28.6 GB experts; an H100-80GB holds both."""
        return 2 * self.expert_gb() / gpus + WORKSPACE_GB > self.gpu.memory_gb

    def fits_one_expert(self) -> bool:
        """Whether one expert replica per GPU (the cluster's layout) fits without swapping."""
        return self.expert_gb() + WORKSPACE_GB <= self.gpu.memory_gb

    def swap_seconds(self) -> float:
        """Bringing one expert onto the GPU from pinned host memory. The outgoing expert is dropped,
        not copied back: the host keeps its copy."""
        return self.expert_gb() / self.gpu.host_gbps

    # -- one video -----------------------------------------------------------------------------

    def parallel_efficiency(self, gpus: int) -> float:
        """Sequence parallelism (Ulysses, as Wan2.2 runs 4 and 8 GPUs) over `gpus` GPUs: each GPU
        sends all but 1/n of its share of the activations through all-to-alls (and FSDP gathers
        all but 1/n of each layer's weights), so communication per unit of compute grows as
        (n - 1) / n. Its weight is fitted on NVLinked H100s and scaled by the ratio of compute to
        interconnect for other GPUs: a GPU without NVLink pays much more."""
        if gpus < 1 or self.model.heads % gpus:
            raise ValueError(f"gpus must divide the {self.model.heads} attention heads (Ulysses), got {gpus}")
        reference = GPUS[REFERENCE_GPU]
        relative = (self.gpu.peak_tflops / reference.peak_tflops) * (
            reference.interconnect_gbps / self.gpu.interconnect_gbps
        )
        overhead = self.calibration.parallel_overhead * relative
        return 1 / (1 + overhead * (gpus - 1) / gpus)

    def parallel_speedup(self, ulysses: int = 1, cfg: int = 1, guidance: bool = True) -> float:
        """How many times faster a denoising step runs on `ulysses` x `cfg` GPUs than on one:
        sequence parallel over `ulysses`, and a guided step's two forwards on `cfg` = 2 groups
        at once (an unguided step has one forward: the second group has nothing to do)."""
        if cfg not in (1, 2):
            raise ValueError(f"cfg must be 1 or 2 (a step has two forwards to share), got {cfg}")
        speedup = ulysses * self.parallel_efficiency(ulysses)
        return speedup * (2 * CFG_PARALLEL_EFFICIENCY if cfg == 2 and guidance else 1.0)

    def video_seconds(
        self,
        height: int,
        width: int,
        frames: int,
        steps: int,
        gpus: int = 1,
        guidance: bool = True,
        offload: bool | None = None,
        cfg: int = 1,
        decode_share: float = 1.0,
    ) -> float:
        """One video end to end on `gpus` x `cfg` GPUs working on it together: text encoding,
        `steps` denoising steps split over `gpus` sequence-parallel GPUs (and the guided halves
        over `cfg` groups of them), VAE decoding (on one GPU, as the reference does), and the
        expert swaps where memory needs them (`offload=True` forces them, as Wan2.2's single-GPU
        run does with --offload_model). `decode_share`: the decode's time as a share of one GPU's
        untiled decode (a decoder whose ranks share the VAE's tiles: stages/vae_tiles.py)."""
        denoise = steps * self.step_seconds(ExpertKind.HIGH_NOISE, height, width, frames, guidance=guidance)
        denoise /= self.parallel_speedup(gpus, cfg, guidance)
        swap = self.needs_swap(gpus) if offload is None else offload
        return (
            self.encode_seconds(guidance)
            + denoise
            + self.decode_seconds(height, width, frames) * decode_share
            + (SWAPS_PER_VIDEO * self.swap_seconds() if swap else 0.0)
        )
