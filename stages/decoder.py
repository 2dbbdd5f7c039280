"""Decoder stage: Wan VAE decode of the final latent -> video frames.

Tiled (`decoding.tiled`), the VAE decodes overlapping tiles and blends them (diffusers' tiling);
a decoder of several ranks (`deployments.Decoder.parallel.ulysses`) decodes a share of the tiles
on each (stages/vae_tiles.py, stages/parallel.py) and blends them here."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.video_processor import VideoProcessor

from contract.messages import PhysicsResult
from contract.request import GenerationRequest
from contract.settings import Settings
from monitoring.physics import score_video
from sim.cost_model import latent_shape
from sim.gpu import SimulatedGpu, stand_in_frames
from stages.checkpoint import Checkpoint
from stages.content_credentials import ContentCredentials, visible_mark
from stages.parallel import DECODER, ActorRanks, ProcessRanks, ray_actor_id
from stages.vae_tiles import TileGrid, assemble, tiled
from stages.video import encode_mp4, provenance


@dataclass
class DecodedVideo:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    mp4: bytes
    timings: dict[str, float]  # seconds: decode, mp4, score
    physics: PhysicsResult


class Decoder:
    def __init__(self, checkpoint: Checkpoint):
        self.model_id, self.revision = checkpoint.model_id, checkpoint.revision
        self.credentials = ContentCredentials.from_settings(checkpoint.settings)
        self.visible_mark = checkpoint.settings.labels.visible
        settings = checkpoint.settings
        deployment = settings.deployments[DECODER]
        self.ranks = None
        # Simulated: no VAE; the decode takes the cost model's time and makes a stand-in video.
        self.gpu = SimulatedGpu(settings.sim, "decode", deployment.parallel) if checkpoint.simulated else None
        if self.gpu is not None:
            self.gpu.load("decoder")
            self.settings = settings
            return
        self.device = checkpoint.device
        if deployment.parallel.degree > 1:
            # The ranks hold the VAE; here only its tiling arithmetic and blending (no weights).
            group = ActorRanks if ray_actor_id() is not None else ProcessRanks
            self.ranks = group(settings, DECODER, threads=deployment.threads)
            self.vae = tiled(checkpoint.vae_without_weights(), settings.decoding)
        else:
            self.vae = checkpoint.vae()
            if settings.decoding.tiled:
                tiled(self.vae, settings.decoding)
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        self.latents_mean = torch.tensor(config.latents_mean).view(shape)
        self.latents_std = torch.tensor(config.latents_std).view(shape)
        self.video_processor = VideoProcessor(vae_scale_factor=config.scale_factor_spatial)
        # The Wan VAE keeps its causal-conv feature cache on the module during a decode, so
        # two decodes at once (a replica serving requests from threads) corrupt each other.
        self._vae_lock = threading.Lock()

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        """Float frames in [0, 1] of shape (T, H, W, 3), as `WanPipeline(output_type="np")`."""
        if self.gpu is not None:
            raise RuntimeError("the simulated decoder has no VAE: it makes stand-in videos (Decoder.video) only")
        latents = latents.to(self.device, self.vae.dtype)
        mean = self.latents_mean.to(latents.device, latents.dtype)
        inv_std = 1.0 / self.latents_std.to(latents.device, latents.dtype)
        latents = latents / inv_std + mean
        if self.ranks is not None:
            tiles = {
                origin: tile for share in self.ranks.call("decode", latents.cpu()) for origin, tile in share.items()
            }
            video = assemble(self.vae, latents, tiles)
        else:
            with self._vae_lock:
                video = self.vae.decode(latents, return_dict=False)[0]
        return self.video_processor.postprocess_video(video, output_type="np")[0]

    @property
    def ranks_broken(self) -> str | None:
        """Why this decoder's ranks cannot decode any more, or None (also with no ranks)."""
        return self.ranks.broken if self.ranks is not None else None

    def close(self) -> None:
        if self.ranks is not None:
            self.ranks.close()

    def video(self, request: GenerationRequest, latents: torch.Tensor, seed: int | None = None) -> DecodedVideo:
        """Decoded uint8 frames, the mp4 made of them labelled as AI-generated (container tags
        with `seed`, a repair attempt's or the request's; a signed C2PA manifest; the visible
        mark when asked for), and their physics score (of the frames, not the mark)."""
        start = time.perf_counter()
        if self.gpu is not None:
            share = simulated_decode_share(self.settings, request.height, request.width, request.num_frames)
            self.gpu.charge(self.gpu.cost.decode_seconds(request.height, request.width, request.num_frames) * share)
            frames = stand_in_frames(request.num_frames)
        else:
            frames = to_uint8(self(latents))
        decoded = time.perf_counter()
        tags = provenance(self.model_id, request.seed if seed is None else seed, request.prompt)
        mp4 = encode_mp4(visible_mark(frames) if self.visible_mark else frames, request.fps, tags)
        if self.credentials is not None:
            mp4 = self.credentials.sign(mp4, self.model_id, self.revision, int(tags["seed"]), tags["prompt_sha256"])
        encoded = time.perf_counter()
        # Scored here, not in a deployment of its own: it takes a fraction of the decode
        # (bench/physics.py) and the frames are already in this process.
        physics = PhysicsResult.of(score_video(frames, request.fps))
        timings = {"decode": decoded - start, "mp4": encoded - decoded, "score": time.perf_counter() - encoded}
        return DecodedVideo(frames, mp4, timings, physics)


def simulated_decode_share(settings: Settings, height: int, width: int, frames: int) -> float:
    """The work of the busiest of the simulated decoder's ranks, as a share of one untiled decode
    of the video the simulation stands for (the cost model's VAE, 8x spatially)."""
    if not settings.decoding.tiled:
        return 1.0
    _, _, latent_h, latent_w = latent_shape(height, width, frames)
    grid = TileGrid.of(latent_h, latent_w, height // latent_h, settings.decoding)
    return grid.busiest_share(settings.deployments[DECODER].parallel.degree)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
