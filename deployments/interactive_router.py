"""The interactive pool's Serve request router: a phase of an interactive video goes to a replica
running no other interactive phase, so that no two directors' videos share one group of GPUs
while another replica has room; a lent batch job likewise, so that it is not paused at once.

Serve's default (power of two choices) reads only queue lengths, and a replica's lent batch job
counts in its queue like an interactive video: with two replicas, each lent one job, an
interactive video's phase picked either at random (BENCHMARKS.md "Mixed traffic"). This router
remembers which replica runs each interactive phase it routed (the ingress holds the pool's
only handle, so it sees them all) and ranks the free replicas first, by power of two choices.

A phase call's `priority` keyword (deployments/serve_executor.py) says which kind it is.
"""

from __future__ import annotations

import random

from ray.serve.request_router import (
    FIFOMixin,
    LocalityMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

ROUTER_PATH = f"{__name__}.InteractiveFirstRouter"  # as Serve's config names a router class


def is_interactive(request: PendingRequest | None) -> bool:
    return request is not None and request.kwargs.get("priority") == "interactive"


class InteractiveFirstRouter(FIFOMixin, MultiplexMixin, LocalityMixin, RequestRouter):
    def initialize_state(self, **kwargs) -> None:
        self.interactive: dict[str, ReplicaID] = {}  # internal request id -> the replica running it

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        """Replicas without an interactive phase first, then the others; two of each at random
        (the router then takes the shorter queue of a rank that accepts)."""
        if pending_request is not None and pending_request.metadata.multiplexed_model_id:
            ids = self.apply_multiplex_routing(pending_request=pending_request)  # the job's adapters
        else:
            ids = self.apply_locality_routing(pending_request=pending_request)
        busy = set(self.interactive.values())
        free = [self._replicas[i] for i in ids if i not in busy]
        taken = [self._replicas[i] for i in ids if i in busy]
        return [random.sample(rank, min(2, len(rank))) for rank in (free, taken) if rank]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        if is_interactive(pending_request):
            self.interactive[pending_request.metadata.internal_request_id] = replica_id

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.interactive.pop(internal_request_id, None)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.interactive = {r: i for r, i in self.interactive.items() if i != replica_id}
