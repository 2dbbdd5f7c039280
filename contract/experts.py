"""The two experts of Wan2.2's Mixture of Experts, named once.

Each expert has four names that used to drift apart: its checkpoint subfolder (diffusers'
`transformer` / `transformer_2`), its Serve deployment, its stage in job records and
timings, and its label on the denoising-steps metric. `ExpertKind` holds all four.
"""

from __future__ import annotations

from enum import Enum

# Both experts in one deployment (settings `experts_placement: co_located`): its methods are the
# experts' stage names, `high_noise` and `low_noise`.
CO_LOCATED_DEPLOYMENT = "Experts"
# The interactive pool's deployments (settings `interactive`): each name with this suffix.
INTERACTIVE = "Interactive"


class ExpertKind(Enum):
    HIGH_NOISE = ("transformer", "HighNoiseExpert", "high_noise")  # layout and motion: steps with t >= boundary
    LOW_NOISE = ("transformer_2", "LowNoiseExpert", "low_noise")  # detail: the steps below the boundary

    def __init__(self, subfolder: str, deployment: str, stage: str):
        self.subfolder = subfolder  # the checkpoint component (model_index.json key and folder)
        self.deployment = deployment  # the Serve deployment (and its key in Settings.deployments)
        self.stage = stage  # the stage name in job records, timings and traces

    @property
    def interactive_deployment(self) -> str:
        """Its deployment in the interactive pool (settings `interactive`)."""
        return self.deployment + INTERACTIVE

    @property
    def metric_label(self) -> str:
        """The `expert` label of `ray_t2v_denoising_steps_total`."""
        return self.stage
