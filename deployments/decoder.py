"""The `Decoder` Serve deployment: VAE decode, mp4 and physics score (stages/decoder.py) per replica;
the mp4 goes to the shared output store, only its key and score go back. The final latent goes
there too: a final of the same shot (`from`) starts from it."""

from __future__ import annotations

import time

from ray import serve
from ray.serve.handle import DeploymentHandle

from contract.jobs import latent_key, video_key
from contract.messages import Cancelled, Video
from contract.request import GenerationRequest
from contract.settings import Settings
from contract.storage import OutputStore
from deployments.reporting import JobReporter
from stages.checkpoint import Checkpoint
from stages.decoder import Decoder
from stages.denoising import DenoisingState, latent_bytes


@serve.deployment(name="Decoder")
class DecoderDeployment:
    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        self.decoder = Decoder(Checkpoint.from_settings(settings))
        self.store = OutputStore(settings.output_uri)
        self.jobs = jobs

    def decode(
        self, job_id: str, request: GenerationRequest, state: DenoisingState | Cancelled, attempt: int = 0
    ) -> Video | Cancelled:
        """A repair attempt's mp4 goes to a key of its own until the best one is kept."""
        reporter = JobReporter(self.jobs, job_id)

        def work() -> Video:
            start = time.time()
            seed = request.resample_seed(attempt) if attempt else request.seed
            video = self.decoder.video(request, state.latents, seed)
            key = video_key(job_id, attempt)
            self.store.write(key, video.mp4)
            self.store.write(latent_key(job_id, attempt), latent_bytes(state.latents))
            decoded = start + video.timings["decode"]
            encoded = decoded + video.timings["mp4"]
            reporter.part("mp4", decoded, encoded)
            reporter.part("score", encoded, encoded + video.timings["score"])
            return Video(attempt=attempt, seed=seed, physics=video.physics, key=key)

        return reporter.run("decode", work, state)
