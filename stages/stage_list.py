"""The stages of a job and their policies, declared once for every executor (in process, Ray
Serve, Ray Data):

    encode -> high_noise -> low_noise -> decode (VAE, mp4, physics score)

- template mode: `encode` also embeds a template's base prompt, and `high_noise` shares its
  first steps with the template's other requests through the latent cache;
- preview -> final: the final of a previewed shot skips `high_noise` (the preview's layout
  and motion stand) and `low_noise` starts from the preview's latent;
- result cache: an identical earlier request of the same owner answers at once (`cached`),
  and a completed job is remembered (`remember`);
- repair: while the best score is below the request's `min_physics_score`, the stages from
  `REPAIR_FROM` on run again on a new seed (`wants_repair`); the job keeps `best_attempt`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cache.keys import ModelIdentity, result_key
from contract.experts import ExpertKind
from contract.messages import PhysicsAttempt, PhysicsResult, StageSpan, Video
from contract.request import GenerationRequest
from stages.job_state import JobState
from stages.stage import Stage, StageEvents

if TYPE_CHECKING:  # the stages' models: the ingress runs this list with neither torch nor diffusers
    import torch

    from cache.store import LatentCache
    from stages.decoder import Decoder
    from stages.expert import Expert
    from stages.text_encoder import TextEncoder


class EncodePrompt(Stage):
    """The prompt and negative prompt (classifier-free guidance) to embeddings; in template mode
    the template's base prompt too, which the shared high-noise steps see instead."""

    name = "encode"

    def __init__(self, encoder: TextEncoder):
        self.encoder, self.model_id = encoder, encoder.checkpoint.model_id

    def run(self, state: JobState, events: StageEvents) -> JobState:
        request = state.request

        def embed(text: str):
            return self.encoder(text, request.negative_prompt, request.classifier_free_guidance, request.cache)

        state.embeddings = embed(request.prompt)
        state.cache["embeddings"] = state.embeddings.cache_hit if self.encoder.cache and request.cache else None
        if request.template_mode and not state.final_of_shot:
            state.base_embeddings = embed(request.base_prompt)
        return state


class HighNoisePhase(Stage):
    """Layout and motion: initial noise, then the steps t >= boundary (every step on a Wan2.1-style
    checkpoint); a template's first steps computed once and shared through the cache."""

    name = ExpertKind.HIGH_NOISE.stage

    def __init__(self, expert: Expert, cache: LatentCache | None):
        self.expert, self.cache, self.model_id = expert, cache, expert.checkpoint.model_id

    def run(self, state: JobState, events: StageEvents) -> JobState:
        boundary, state.cache["boundary"] = self.expert.shared_phase(
            state.request, state.embeddings, state.base_embeddings, self.cache, events.step
        )
        state.boundary, state.base_embeddings = boundary, None
        if not self.expert.checkpoint.has_low_noise_expert:  # it ran every step
            state.final = boundary
        return state


class LowNoisePhase(Stage):
    """Detail: the steps below the boundary, from the handed-over latent and scheduler state; a
    repair attempt re-draws its noise; the final of a shot starts from the preview's latent."""

    name = ExpertKind.LOW_NOISE.stage

    def __init__(self, expert: Expert, previews: Callable[[str], torch.Tensor] | None = None):
        """`previews`: a preview's final latent by its video id (where it is not in the state)."""
        self.expert, self.previews, self.model_id = expert, previews, expert.checkpoint.model_id

    def run(self, state: JobState, events: StageEvents) -> JobState:
        source = None
        if state.final_of_shot:
            if state.source is None and self.previews is None:
                raise ValueError("the final of a shot needs its preview's latent")
            source = state.source if state.source is not None else self.previews(state.request.from_video)
        resample_seed = state.seed if state.attempt else None
        state.final = self.expert.phase(
            state.request, state.embeddings, state.boundary, events.step, resample_seed, source
        )
        return state


class DecodeVideo(Stage):
    """VAE decode, the mp4 (marked as AI-generated, with the attempt's seed) and its physics score.
    `write`, where the video goes to a store, answers its key; else the mp4 stays in the state."""

    name = "decode"

    def __init__(
        self, decoder: Decoder, write: Callable[[JobState, bytes], str] | None = None, keep_frames: bool = False
    ):
        self.decoder, self.write, self.keep_frames = decoder, write, keep_frames
        self.model_id = decoder.model_id

    def run(self, state: JobState, events: StageEvents) -> JobState:
        start = time.time()
        decoded = self.decoder.video(state.request, state.final.latents, state.seed)
        vae_done = start + decoded.timings["decode"]
        mp4_done = vae_done + decoded.timings["mp4"]
        state.trace += [
            StageSpan(stage="mp4", start=vae_done, end=mp4_done),
            StageSpan(stage="score", start=mp4_done, end=mp4_done + decoded.timings["score"]),
        ]
        state.timings.update(mp4=decoded.timings["mp4"], score=decoded.timings["score"])  # decode: the base's
        if self.write is not None:
            video = Video(
                attempt=state.attempt, seed=state.seed, physics=decoded.physics, key=self.write(state, decoded.mp4)
            )
        else:
            video = Video(attempt=state.attempt, seed=state.seed, physics=decoded.physics, mp4=decoded.mp4)
        state.video = video
        if self.keep_frames:
            state.frames = decoded.frames
        return state


@dataclass(frozen=True)
class StageSpec:
    """A stage in the list: its name, the deployment (and `Settings.deployments` entry) that serves it."""

    name: str
    deployment: str

    def applies(self, state: JobState, two_experts: bool) -> bool:
        if self.name == HighNoisePhase.name:
            return not state.final_of_shot
        if self.name == LowNoisePhase.name:
            return two_experts
        return True


STAGE_LIST = (
    StageSpec(EncodePrompt.name, "TextEncoder"),
    StageSpec(HighNoisePhase.name, ExpertKind.HIGH_NOISE.deployment),
    StageSpec(LowNoisePhase.name, ExpertKind.LOW_NOISE.deployment),
    StageSpec(DecodeVideo.name, "Decoder"),
)
REPAIR_FROM = LowNoisePhase.name  # a repair runs the stages from here on again, from the boundary


def stages_for(state: JobState, two_experts: bool) -> list[StageSpec]:
    """The stages this job goes through, in order."""
    return [spec for spec in STAGE_LIST if spec.applies(state, two_experts)]


def repair_stages(two_experts: bool) -> list[StageSpec]:
    """The stages a repair attempt runs again (none without a low-noise expert to re-sample)."""
    if not two_experts:
        return []
    names = [spec.name for spec in STAGE_LIST]
    return list(STAGE_LIST[names.index(REPAIR_FROM) :])


# -- the policies -----------------------------------------------------------------------------


def best_attempt(attempts: list[PhysicsResult], min_dynamics: float) -> int:
    """Which attempt a job keeps: the best score among those that move at least `min_dynamics` as
    much as the first (the first of equals: attempt 0 wins ties). A still video has nothing to
    break, so it cannot win on that."""
    first = attempts[0].dynamics

    def moves_enough(physics: PhysicsResult) -> bool:
        return first is None or physics.dynamics is None or physics.dynamics >= min_dynamics * first

    eligible = [i for i, p in enumerate(attempts) if i == 0 or moves_enough(p)]
    return max(eligible, key=lambda i: attempts[i].score)


def wants_repair(request: GenerationRequest, attempts: list[PhysicsResult], min_dynamics: float) -> bool:
    """Another attempt is due: the video the job would keep scores below the request's minimum
    and it has attempts left."""
    if request.min_physics_score is None or len(attempts) > request.max_retries:
        return False
    return attempts[best_attempt(attempts, min_dynamics)].score < request.min_physics_score


def kept_video(videos: list[Video], min_dynamics: float) -> Video:
    """The attempt a job keeps, its physics listing every attempt."""
    best = videos[best_attempt([v.physics for v in videos], min_dynamics)]
    record = [
        PhysicsAttempt(attempt=v.attempt, seed=v.seed, score=v.physics.score, dynamics=v.physics.dynamics)
        for v in videos
    ]
    return best.model_copy(update={"physics": best.physics.model_copy(update={"attempts": record})})


@dataclass
class CachedResult:
    physics: PhysicsResult
    mp4: bytes | None = None  # in hand (in process, Ray Data) ...
    video: str | None = None  # ... or the output store's key of the video it was (the Serve app)
    latent: str | None = None  # and of its final latent, which a final of the shot starts from (Serve)


class ResultCache:
    """Finished videos by request and owner (API key): an identical request gets the video as is."""

    def __init__(self, cache: LatentCache | None, model: ModelIdentity):
        self.cache, self.model = cache, model

    def used(self, request: GenerationRequest) -> bool:
        return self.cache is not None and request.cache

    def cached(self, request: GenerationRequest, owner: str | None = None) -> CachedResult | None:
        if not self.used(request):
            return None
        hit = self.cache.get("result", result_key(self.model, request, owner))
        if hit is None:
            return None
        physics = PhysicsResult.model_validate(hit["physics"])
        return CachedResult(physics, hit.get("mp4"), hit.get("video"), hit.get("latent"))

    @staticmethod
    def in_hand(hit: CachedResult | None, store) -> CachedResult | None:
        """`hit` with its mp4 in hand, read from `store` (an `OutputStore`) when the entry refers to a
        stored video (the Serve app's, on the same node's cache); None when that video is gone."""
        if hit is None or hit.mp4 is not None:
            return hit
        mp4 = store.read(hit.video)
        return None if mp4 is None else CachedResult(hit.physics, mp4, hit.video, hit.latent)

    def remember(
        self, request: GenerationRequest, physics: PhysicsResult, video: dict[str, Any], owner: str | None = None
    ) -> None:
        """`video`: {"mp4": bytes} or {"video": the output store's key}."""
        if self.used(request):
            self.cache.put("result", result_key(self.model, request, owner), {**video, "physics": physics.model_dump()})
