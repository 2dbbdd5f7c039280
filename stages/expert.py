"""Expert stage: one Wan transformer running a contiguous range of denoising steps with CFG.

Wan2.2 A14B has two (`contract.experts.ExpertKind`): the high-noise expert (layout and
motion) and the low-noise expert (detail). Each is called once per phase, not per step.
Served by `HighNoiseExpert` / `LowNoiseExpert` in expert_deployment.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext

import torch

from cache.keys import boundary_key
from cache.store import LatentCache
from contract.adapters import AdapterRef, adapters_for
from contract.experts import ExpertKind
from contract.request import GenerationRequest
from sim.gpu import STAND_IN_LATENT, SimulatedGpu, SimulatedTransformer, standing_for
from stages.adapter_store import AdapterStore, ExpertAdapters
from stages.batching import StepBatcher, StepGate
from stages.checkpoint import Checkpoint
from stages.denoising import DenoisingState, Scheduler, prepare_latents
from stages.guidance import pair_for
from stages.parallel import ActorRanks, ParallelTransformer, ProcessRanks, check_degree, ray_actor_id
from stages.text_encoder import PromptEmbeddings

StepCallback = Callable[[int], None]  # called with the index of each finished step


def enable_step_cache(transformer, settings) -> bool:
    """Apply the configured diffusers step cache (`settings.step_cache`); True if one is on."""
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if settings.kind == "none":
        return False
    if settings.kind == "first_block":
        transformer.enable_cache(FirstBlockCacheConfig(**settings.options))
    else:
        # diffusers' default patterns ("^blocks.*attn", full match) miss Wan's attn1 / attn2 / ffn.
        options = {"cache_identifiers": [r"^blocks\.\d+\.(attn1|attn2|ffn)$"], **settings.options}
        transformer.enable_cache(TaylorSeerCacheConfig(**options))
    return True


class Expert:
    def __init__(
        self,
        checkpoint: Checkpoint,
        kind: ExpertKind,
        batching: bool | None = None,
        gpu: SimulatedGpu | None = None,
        gate: StepGate | None = None,
    ):
        """`batching`: share each step's forward with concurrent callers (a Serve replica's
        requests); default from `settings.batching.enabled`. `gpu`: on the simulated accelerator,
        the GPU this expert shares with the other (co-located experts); default: its own. `gate`:
        the step batchers' gate shared with that other expert (interactive steps go first on both)."""
        self.kind = kind
        self.checkpoint = checkpoint
        self.simulated = checkpoint.simulated
        if self.simulated:
            parallel = checkpoint.settings.deployments[kind.deployment].parallel
            quantization = checkpoint.settings.quantization.of(kind)
            gpu = gpu or SimulatedGpu(checkpoint.settings.sim, kind.stage, parallel, quantization)
            gpu.load("expert")
            self.transformer = SimulatedTransformer(gpu, kind.stage)
        else:
            self.transformer = self._transformer(checkpoint, kind)
        self.scheduler = Scheduler.from_checkpoint(checkpoint)
        settings = checkpoint.settings
        parallel = isinstance(self.transformer, ParallelTransformer)
        self.adapters = ExpertAdapters(
            self.transformer,
            kind,
            AdapterStore.from_settings(settings, checkpoint),
            settings.adapters.max_loaded,
            self.simulated,
        )
        self.device = checkpoint.device
        self.dtype = checkpoint.dtype
        # A step cache keeps per-module state across the steps of one phase: phases take
        # turns (lock) and start clean, and steps of different requests cannot share forwards.
        self.step_cache = not self.simulated and enable_step_cache(self.transformer, checkpoint.settings.step_cache)
        self._phase_lock = threading.Lock()
        # The step cache's contexts are one state per transformer: its two forwards take turns.
        # A simulated GPU runs them one after the other, as a real one does.
        # A group of ranks runs one forward at a time: nothing to run side by side.
        side_by_side = checkpoint.settings.parallel_guidance and not self.simulated and not parallel
        self.pair = None if self.step_cache else pair_for(self.device, side_by_side)
        # CFG-parallel ranks take a guided step's two halves in one call, one half per group of ranks.
        self.stack_guidance = settings.deployments[kind.deployment].parallel.cfg == 2
        config = checkpoint.settings.batching
        self.batcher = None
        if (config.enabled if batching is None else batching) and not self.step_cache:
            self.batcher = StepBatcher(
                self.transformer,
                self.scheduler,
                self.device,
                self.dtype,
                config.max_batch_size,
                config.max_wait_ms / 1000,
                self.pair,
                self.adapters,
                gate,
            )

    @staticmethod
    def _transformer(checkpoint: Checkpoint, kind: ExpertKind):
        """This expert's transformer: loaded here, or run by a group of ranks (stages/parallel.py)."""
        deployment = checkpoint.settings.deployments[kind.deployment]
        if deployment.parallel.degree == 1:
            return checkpoint.expert(kind)
        config = checkpoint.component_config(kind.subfolder)
        check_degree(config, deployment.parallel.ulysses)
        # In a Serve replica (a Ray actor): rank actors in its placement group; else processes.
        in_actor = ray_actor_id() is not None
        group = ActorRanks if in_actor else ProcessRanks
        ranks = group(checkpoint.settings, kind, threads=deployment.threads)
        return ParallelTransformer(ranks, deployment.parallel, config, checkpoint.dtype)

    @property
    def ranks_broken(self) -> str | None:
        """Why this expert's group of ranks cannot run any more, or None (also with no ranks)."""
        return self.transformer.broken if isinstance(self.transformer, ParallelTransformer) else None

    def close(self) -> None:
        """Stop this expert's ranks, if it has any."""
        if isinstance(self.transformer, ParallelTransformer):
            self.transformer.close()

    def phase(
        self,
        request: GenerationRequest,
        embeddings: PromptEmbeddings,
        state: DenoisingState | None = None,
        on_step: StepCallback | None = None,
        resample_seed: int | None = None,
        source: torch.Tensor | None = None,
    ) -> DenoisingState:
        """Run this expert's side of the boundary (with the request's adapters for this expert);
        the high-noise expert starts from noise. `resample_seed` re-draws the low-noise phase's
        noise (a physics retry). `source`: the final latent of the preview whose shot a `from`
        request finishes; the low-noise expert starts from it, re-noised, instead of from `state`."""
        plan, scheduler_state = self.scheduler.start(
            request.num_inference_steps, self.checkpoint.boundary_ratio, request.flow_shift
        )
        adapters = adapters_for(request.lora, self.kind)
        interactive = request.priority == "interactive"
        if self.kind is ExpertKind.HIGH_NOISE:
            if state is None:
                state = self._noise(request, scheduler_state)
            return self(
                state, embeddings, request.guidance_scale, plan.high_noise_steps, on_step, adapters, interactive
            )
        if state is None and source is not None:
            state = self.refine_start(request, source)
        if state is None:
            raise ValueError(f"{self.kind.stage}: the low-noise phase needs the high-noise phase's state")
        if resample_seed is not None:
            state = self.scheduler.resample(state, resample_seed)
        steps = range(max(state.step, plan.boundary_step), plan.num_steps)
        return self(state, embeddings, request.guidance_scale_2, steps, on_step, adapters, interactive)

    def refine_start(self, request: GenerationRequest, source: torch.Tensor) -> DenoisingState:
        """The preview's latent at this request's size, re-noised to `finalize_strength` (SDEdit)."""
        settings = self.checkpoint.settings
        if self.simulated:
            shape, size = STAND_IN_LATENT, (request.num_frames, request.height, request.width)
        else:
            shape, size = self.checkpoint.latent_shape(request.num_frames, request.height, request.width), None
        state = self.scheduler.refine(
            source,
            shape,
            request.seed,
            request.num_inference_steps,
            self.checkpoint.boundary_ratio,
            settings.finalize_strength,
            request.flow_shift,
        )
        return DenoisingState(state.latents, state.scheduler, state.step, size)

    def shared_phase(
        self,
        request: GenerationRequest,
        embeddings: PromptEmbeddings,
        base: PromptEmbeddings | None,
        cache: LatentCache | None,
        on_step: StepCallback | None = None,
    ) -> tuple[DenoisingState, bool | None]:
        """The high-noise phase of a template request: its first `template_shared_steps`
        steps (all by default) computed once on the base prompt `base` (by one replica, while
        the others wait) and then read from the cache; the rest on the request's own prompt.
        Returns (state, hit); hit is None when the request does not share its phase."""
        if cache is None or base is None or not request.template_mode:
            return self.phase(request, embeddings, on_step=on_step), None
        steps = self.scheduler.plan(
            request.num_inference_steps, self.checkpoint.boundary_ratio, request.flow_shift
        ).high_noise_steps
        shared = self.checkpoint.settings.cache.template_shared_steps
        shared = len(steps) if shared is None else min(shared, len(steps))
        key = boundary_key(self.checkpoint.identity, request, None if shared == len(steps) else shared)
        adapters = adapters_for(request.lora, self.kind)
        interactive = request.priority == "interactive"

        def compute() -> dict:
            _, scheduler_state = self.scheduler.start(
                request.num_inference_steps, self.checkpoint.boundary_ratio, request.flow_shift
            )
            start = self._noise(request, scheduler_state)
            return self(
                start, base, request.guidance_scale, range(0, shared), on_step, adapters, interactive
            ).as_plain()

        plain, hit = cache.get_or_compute("boundary", key, compute)
        state = DenoisingState.from_plain(plain)
        if hit and on_step is not None:
            for i in range(state.step):  # the steps count as done: progress stays true
                on_step(i)
        if shared < len(steps):
            state = self(
                state, embeddings, request.guidance_scale, range(shared, steps.stop), on_step, adapters, interactive
            )
        return state, hit

    def _noise(self, request: GenerationRequest, scheduler_state) -> DenoisingState:
        """The starting latent: the request's noise, or on the simulated accelerator a stand-in."""
        if self.simulated:
            size = (request.num_frames, request.height, request.width)
            return DenoisingState(prepare_latents(STAND_IN_LATENT, request.seed), scheduler_state, 0, size)
        shape = self.checkpoint.latent_shape(request.num_frames, request.height, request.width)
        return DenoisingState(prepare_latents(shape, request.seed), scheduler_state, step=0)

    @torch.no_grad()
    def __call__(
        self,
        state: DenoisingState,
        embeddings: PromptEmbeddings,
        guidance_scale: float,
        steps: range,
        on_step: StepCallback | None = None,
        adapters: list[AdapterRef] | None = None,
        interactive: bool = False,
    ) -> DenoisingState:
        """`steps` of this expert from `state`, with `adapters` (this expert's LoRAs) active.
        `interactive`: with a step batcher, these steps go before every batch request's."""
        if steps.start != state.step:
            raise ValueError(f"{self.kind.stage}: asked to start at step {steps.start}, state is at {state.step}")
        adapters = adapters or []
        if self.batcher is not None:
            return self.batcher.run(state, embeddings, guidance_scale, steps, on_step, adapters, interactive)
        with self.adapters.active(adapters):
            if not self.step_cache:
                with standing_for(state.stands_for):
                    return self._loop(state, embeddings, guidance_scale, steps, on_step)
            with self._phase_lock:
                self.transformer._reset_stateful_cache()  # as DiffusionPipeline does between calls
                return self._loop(state, embeddings, guidance_scale, steps, on_step)

    @torch.no_grad()
    def _loop(
        self,
        state: DenoisingState,
        embeddings: PromptEmbeddings,
        guidance_scale: float,
        steps: range,
        on_step: StepCallback | None,
    ) -> DenoisingState:
        scheduler = self.scheduler.restore(state.scheduler)
        latents = state.latents.to(self.device)
        prompt = embeddings.prompt.to(self.device, self.dtype)
        negative = None if embeddings.negative is None else embeddings.negative.to(self.device, self.dtype)

        for i in steps:
            t = scheduler.timesteps[i]
            latent_input = latents.to(self.dtype)
            timestep = t.expand(latents.shape[0])
            context = {
                "step_index": i,
                "sigma": float(scheduler.sigmas[i]),
                "num_inference_steps": len(scheduler.timesteps),
            }

            def forward(text: torch.Tensor, branch: str, latent_input=latent_input, timestep=timestep, context=context):
                # Named cache contexts let diffusers' step caches (FirstBlockCache, ...) tell the
                # conditional pass from the unconditional one; without a cache there is none to set.
                with self.transformer.cache_context(branch, **context) if self.step_cache else nullcontext():
                    return self.transformer(
                        hidden_states=latent_input, timestep=timestep, encoder_hidden_states=text, return_dict=False
                    )[0]

            if negative is None:
                noise_pred = forward(prompt, "cond")
            elif self.stack_guidance:
                both = self.transformer(
                    hidden_states=torch.cat([latent_input, latent_input]),
                    timestep=torch.cat([timestep, timestep]),
                    encoder_hidden_states=torch.cat([prompt, negative]),
                    return_dict=False,
                )[0]
                noise_pred, noise_uncond = both.chunk(2)
                noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
            else:
                cond, uncond = (lambda: forward(prompt, "cond")), (lambda: forward(negative, "uncond"))
                noise_pred, noise_uncond = self.pair(cond, uncond) if self.pair is not None else (cond(), uncond())
                noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(i)

        return DenoisingState(latents.cpu(), Scheduler.capture(scheduler), steps.stop, state.stands_for)
