"""The `Decoder` Serve deployment: the decode stage (stages/stage_list.py, on stages/decoder.py:
VAE decode, mp4, physics score) per replica. The mp4 goes to the shared output store, only its
key and score go back. The final latent goes there too: a final of the same shot (`from`)
starts from it. A replica may be a group of ranks that share the VAE's tiles (`decoding`)."""

from __future__ import annotations

from ray import serve
from ray.serve.handle import DeploymentHandle

from contract.jobs import latent_key, video_key
from contract.settings import Settings
from contract.storage import OutputStore
from deployments.reporting import JobReporter
from stages.checkpoint import Checkpoint
from stages.decoder import Decoder
from stages.denoising import latent_bytes
from stages.job_state import JobState
from stages.stage_list import DecodeVideo


@serve.deployment(name="Decoder")
class DecoderDeployment:
    def __init__(self, settings: Settings, jobs: DeploymentHandle):
        self.stage = DecodeVideo(Decoder(Checkpoint.from_settings(settings)), write=self.write)
        self.store = OutputStore(settings.output_uri)
        self.jobs = jobs

    def write(self, state: JobState, mp4: bytes) -> str:
        """A repair attempt's mp4 goes to a key of its own until the best one is kept."""
        key = video_key(state.job_id, state.attempt)
        self.store.write(key, mp4)
        self.store.write(latent_key(state.job_id, state.attempt), latent_bytes(state.final.latents))
        return key

    def check_health(self) -> None:
        """Serve replaces a decoder whose group of ranks is broken (a rank died, or failed)."""
        if broken := self.stage.decoder.ranks_broken:
            raise RuntimeError(f"Decoder: its group of ranks is broken ({broken})")

    def run(self, state: JobState, attempt: int | None = None) -> JobState:
        """The decoded state, without its tensors: it goes back to the ingress."""
        return self.stage(state, JobReporter(self.jobs, state.job_id), attempt).slim()
