"""The Ray Serve application: one deployment per stage, bound from one settings object.

    serve run cluster.app:build_app                    # embedded default model
    serve run cluster.app:build_app model=/ckpt/Wan2.2-T2V-A14B-Diffusers

Each stage's deployment sits next to the plain stage class it wraps, in `deployments/`
(README, "Where each stage runs").
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from ray.serve import Application

from contract.experts import CO_LOCATED_DEPLOYMENT, INTERACTIVE, ExpertKind
from contract.settings import Settings
from deployments.co_located_experts import CoLocatedExperts
from deployments.decoder import DecoderDeployment
from deployments.high_noise_expert import HighNoiseExpert
from deployments.ingress import Ingress
from deployments.interactive_router import ROUTER_PATH
from deployments.job_store import JobStoreDeployment
from deployments.low_noise_expert import LowNoiseExpert
from deployments.text_encoder import TextEncoderDeployment
from stages.checkpoint import Checkpoint


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
    """Bind every stage into one application, placed and scaled from `Settings.deployments`
    (and, with `interactive.enabled`, a second pool of experts for interactive requests)."""
    checkpoint = Checkpoint.from_settings(settings)  # reads configs only; builds the default model if needed
    options = _options(settings)
    jobs = JobStoreDeployment.options(**{**options["JobStore"], "autoscaling_config": None, "num_replicas": 1}).bind(
        settings
    )
    text_encoder = TextEncoderDeployment.options(**options["TextEncoder"]).bind(settings, jobs)
    high_noise, low_noise = _experts(settings, checkpoint, jobs)
    interactive = (None, None)
    if settings.interactive.enabled:
        interactive = _experts(settings.interactive_pool(), checkpoint, jobs, INTERACTIVE)
    decoder = DecoderDeployment.options(**options["Decoder"]).bind(settings, jobs)
    return Ingress.options(**options["Ingress"]).bind(
        settings, jobs, text_encoder, high_noise, low_noise, decoder, *interactive
    )


def _options(settings: Settings) -> dict[str, dict]:
    """Each deployment's Serve options."""
    options = {name: d.serve_options() for name, d in settings.deployments.items()}
    if settings.batching.enabled:  # a replica batches only the requests it is given at once
        for expert in ExpertKind:
            ongoing = max(options[expert.deployment]["max_ongoing_requests"], settings.batching.max_batch_size)
            options[expert.deployment]["max_ongoing_requests"] = ongoing
    return options


def _experts(settings: Settings, checkpoint: Checkpoint, jobs, pool: str = "") -> tuple:
    """One pool's expert deployments, (high-noise, low-noise or None): the default pool, or
    (`pool` INTERACTIVE) the interactive one, its names suffixed and its settings its own."""
    options = _options(settings)
    if pool == INTERACTIVE:  # no two interactive videos on one replica while another has room
        for expert in ExpertKind:
            options[expert.deployment]["request_router_config"] = {"request_router_class": ROUTER_PATH}
    high = options[ExpertKind.HIGH_NOISE.deployment]
    if settings.experts_placement == "co_located" and checkpoint.has_low_noise_expert:
        both = CoLocatedExperts.options(name=CO_LOCATED_DEPLOYMENT + pool, **high).bind(settings, jobs)
        return both, None  # both experts, one handle
    high_noise = HighNoiseExpert.options(name=ExpertKind.HIGH_NOISE.deployment + pool, **high).bind(settings, jobs)
    if not checkpoint.has_low_noise_expert:
        return high_noise, None
    low = options[ExpertKind.LOW_NOISE.deployment]
    low_noise = LowNoiseExpert.options(name=ExpertKind.LOW_NOISE.deployment + pool, **low).bind(settings, jobs)
    return high_noise, low_noise
