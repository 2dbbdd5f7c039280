"""The Ray Serve application: one deployment per stage, bound from one settings object.

    serve run cluster.app:build_app                    # embedded default model
    serve run cluster.app:build_app model=/ckpt/Wan2.2-T2V-A14B-Diffusers

Each deployment wraps a plain stage class from `deployments/` and only adds what
serving needs: job progress and cancellation, the shared output store and latent cache.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from cache.store import LatentCache
from cluster.config import Settings
from cluster.jobs import JobStore, video_key
from cluster.request import GenerationRequest
from cluster.storage import OutputStore
from deployments.checkpoint import HIGH_NOISE, LOW_NOISE, Checkpoint
from deployments.decoder import Decoder
from deployments.denoising import DenoisingState
from deployments.expert import Expert
from deployments.ingress import Ingress
from deployments.text_encoder import PromptEmbeddings, TextEncoder

logger = logging.getLogger("ray.serve")


class JobReporter:
    """A stage's view of its job: start/stop spans, per-step progress, cancellation."""

    REPORT_SECONDS = 0.25  # progress at most this often: each call costs the compute threads

    def __init__(self, jobs: DeploymentHandle, job_id: str, expert: str = ""):
        self.jobs, self.job_id, self.expert = jobs, job_id, expert
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._last_step = None
        self._unreported = 0
        self._reported_at = time.monotonic()
        self._spans: list[tuple[str, float, float]] = []
        self._cache: dict[str, bool | None] = {}

    @contextmanager
    def stage(self, name: str):
        # Raises JobCancelled when the job was cancelled while queued for this stage.
        self.jobs.stage_started.remote(self.job_id, name).result()
        start = time.time()
        yield
        # One call closes the stage: its span and sub-spans, the steps not reported yet and the
        # cache levels it used. Waited for, so the record is complete before the ingress goes on.
        self.jobs.stage_done.remote(
            self.job_id, name, start, time.time(), self.replica, self._unreported, self.expert, self._cache, self._spans
        ).result()
        self._unreported, self._spans, self._cache = 0, [], {}

    def span(self, name: str, start: float, end: float) -> None:
        """A part of the current stage timed on its own (the decoder's mp4 and score)."""
        self._spans.append((name, start, end))

    def cache(self, level: str, hit: bool | None) -> None:
        """A cache level the current stage used (None: it did not apply)."""
        self._cache[level] = hit

    def step(self, _index: int) -> None:
        # Progress goes out without waiting; the previous report's answer (long back by now)
        # raises JobCancelled, so a cancellation stops the phase within two reports.
        self._unreported += 1
        if time.monotonic() - self._reported_at < self.REPORT_SECONDS:
            return
        steps, self._unreported, self._reported_at = self._unreported, 0, time.monotonic()
        previous, self._last_step = self._last_step, self.jobs.step_done.remote(self.job_id, self.expert, steps)
        if previous is not None:
            previous.result()


@serve.deployment(name="JobStore")
class JobStoreDeployment(JobStore):
    """The cluster's job records. Exactly one replica: it holds them in memory (and writes
    them through to the output store, from which a restarted replica reloads them)."""

    def __init__(self, settings: Settings):
        serving = settings.serving
        super().__init__(OutputStore(settings.output_uri), serving.stage_timeout_seconds, serving.runner_lost_seconds)
        threading.Thread(target=self._watch, name="job-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            try:
                for job_id in self.check():
                    logger.warning("job %s failed by the watchdog: %s", job_id, self.get(job_id).error.message)
            except Exception:  # the watchdog must outlive any one bad record
                logger.exception("job watchdog")


@serve.deployment(name="TextEncoder")
class TextEncoderDeployment:
    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        self.encoder = TextEncoder(Checkpoint.from_settings(settings), LatentCache.from_settings(settings))
        self.templates = settings.templates()
        self.jobs = jobs

    def encode(self, job_id: str, request: GenerationRequest, base_prompt: bool = False) -> PromptEmbeddings:
        """The request's prompt, or (for a template's high-noise phase) its base prompt."""
        reporter = JobReporter(self.jobs, job_id)
        with reporter.stage("encode_base" if base_prompt else "encode"):
            text = request.base_prompt if base_prompt else request.prompt
            embeddings = self.encoder(text, request.negative_prompt, request.classifier_free_guidance, request.cache)
            if not base_prompt:
                reporter.cache("embeddings", embeddings.cache_hit if self.encoder.cache and request.cache else None)
        return embeddings


    def closest_template(self, prompt: str) -> tuple[str | None, float]:
        return self.encoder.closest_template(prompt, self.templates)


@serve.deployment
class ExpertDeployment:
    """HighNoiseExpert or LowNoiseExpert: one expert per replica (per GPU), one call per phase."""

    def __init__(self, settings: Settings, expert: str, jobs: DeploymentHandle):
        self.expert = Expert(Checkpoint.from_settings(settings), expert)
        self.cache = LatentCache.from_settings(settings) if expert == HIGH_NOISE else None
        self.stage = "high_noise" if expert == HIGH_NOISE else "low_noise"
        self.jobs = jobs

    def denoise(
        self, job_id: str, request: GenerationRequest, embeddings: PromptEmbeddings,
        state: DenoisingState | None = None, resample_seed: int | None = None,
    ) -> DenoisingState:
        reporter = JobReporter(self.jobs, job_id, self.stage)
        with reporter.stage(self.stage):
            if self.expert.name != HIGH_NOISE:
                return self.expert.phase(request, embeddings, state, reporter.step, resample_seed)
            state, hit = self.expert.shared_phase(request, embeddings, self.cache, on_step=reporter.step)
            reporter.cache("boundary", hit)
        return state


@serve.deployment(name="Decoder")
class DecoderDeployment:
    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        self.decoder = Decoder(Checkpoint.from_settings(settings))
        self.store = OutputStore(settings.output_uri)
        self.jobs = jobs

    def decode(self, job_id: str, request: GenerationRequest, state: DenoisingState, attempt: int = 0) -> dict:
        """VAE decode, mp4 and physics score; the mp4 goes to the output store (a physics
        retry's to a key of its own). Returns where, and the score."""
        reporter = JobReporter(self.jobs, job_id)
        with reporter.stage("decode"):
            start = time.time()
            video = self.decoder.video(request, state.latents)
            key = video_key(job_id, attempt)
            self.store.write(key, video.mp4)
            decoded = start + video.timings["decode"]
            encoded = decoded + video.timings["mp4"]
            reporter.span("mp4", decoded, encoded)
            reporter.span("score", encoded, encoded + video.timings["score"])
        return {"key": key, "physics": video.physics}


class AppArgs(BaseModel):
    """Arguments of `serve run cluster.app:build_app key=value ...`."""

    model: str | None = None  # diffusers checkpoint dir; default: the embedded tiny model
    config: str | None = None  # YAML file feeding Settings


def build_app(args: AppArgs) -> Application:
    """The application builder `serve run` / `serve deploy` call (exactly one argument)."""
    args = AppArgs.model_validate(args)  # Serve passes an AppArgs; Python callers may pass a dict
    settings = Settings.from_yaml(args.config) if args.config else Settings()
    if args.model:
        settings = settings.model_copy(update={"model": Path(args.model)})
    return bind_app(settings)


def bind_app(settings: Settings) -> Application:
    """Bind every stage into one application, placed and scaled from `Settings.deployments`."""
    checkpoint = Checkpoint.from_settings(settings)  # reads configs only; builds the default model if needed
    options = {name: d.serve_options() for name, d in settings.deployments.items()}
    if settings.batching.enabled:  # a replica batches only the requests it is given at once
        for name in ("HighNoiseExpert", "LowNoiseExpert"):
            ongoing = max(options[name]["max_ongoing_requests"], settings.batching.max_batch_size)
            options[name]["max_ongoing_requests"] = ongoing

    jobs = JobStoreDeployment.options(
        **{**options["JobStore"], "autoscaling_config": None, "num_replicas": 1}
    ).bind(settings)
    text_encoder = TextEncoderDeployment.options(**options["TextEncoder"]).bind(settings, jobs)
    high_noise = ExpertDeployment.options(name="HighNoiseExpert", **options["HighNoiseExpert"]).bind(
        settings, HIGH_NOISE, jobs
    )
    low_noise = None
    if checkpoint.has_low_noise_expert:
        low_noise = ExpertDeployment.options(name="LowNoiseExpert", **options["LowNoiseExpert"]).bind(
            settings, LOW_NOISE, jobs
        )
    decoder = DecoderDeployment.options(**options["Decoder"]).bind(settings, jobs)
    return Ingress.options(**options["Ingress"]).bind(settings, jobs, text_encoder, high_noise, low_noise, decoder)
