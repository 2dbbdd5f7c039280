"""Cache keys: each holds everything that changes the cached result, and nothing else."""

from __future__ import annotations

from cache.store import cache_key
from cluster.request import GenerationRequest
from deployments.checkpoint import Checkpoint


def _model(checkpoint: Checkpoint) -> dict:
    return {"model": checkpoint.model_id, "revision": checkpoint.revision, "dtype": str(checkpoint.dtype)}


def embedding_key(checkpoint: Checkpoint, text: str) -> str:
    return cache_key(level="embeddings", **_model(checkpoint),
                     max_sequence_length=checkpoint.settings.max_sequence_length, text=text)


def boundary_key(checkpoint: Checkpoint, request: GenerationRequest) -> str:
    """The high-noise phase's inputs: the base prompt (not the full one), shape and noise."""
    return cache_key(
        level="boundary", **_model(checkpoint), boundary_ratio=checkpoint.boundary_ratio,
        base_prompt=request.base_prompt, negative_prompt=request.negative_prompt, seed=request.seed,
        height=request.height, width=request.width, num_frames=request.num_frames,
        steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
    )


def result_key(checkpoint: Checkpoint, request: GenerationRequest) -> str:
    """Everything that shapes the mp4 (the preset only through the values it filled in)."""
    fields = request.model_dump(exclude={"preset", "template", "slots"})
    return cache_key(level="result", **_model(checkpoint), **fields)
