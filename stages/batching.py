"""Continuous batching of denoising steps across requests, inside one expert replica.

Requests of one latent shape share each step's transformer forward: their conditional and
unconditional inputs are stacked, each with its own timestep (Wan's transformer takes one
per sample), so requests at different step indices batch too. Everything else stays per
request: the UniPC scheduler and its multistep history, the guidance scale, progress and
cancellation. A request joins at the next step boundary and leaves when its phase ends,
as continuous batching does for LLM decoding. An idle engine waits up to `max_wait` for
company before its first forward; a busy one never waits.

Interactive requests (`priority: interactive`) go first at every step boundary and batch only
with each other: a batch job lent to an interactive replica yields to a director's video within
one step of it, instead of within a whole phase. The batchers of one GPU (co-located experts)
share a `StepGate`: a batch step waits while the other expert steps an interactive request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from contract.adapters import AdapterRef
from sim.gpu import standing_for
from stages.adapter_store import ExpertAdapters
from stages.denoising import DenoisingState, Scheduler
from stages.guidance import GuidancePair
from stages.text_encoder import PromptEmbeddings


class StepGate:
    """The interactive requests stepping in the batchers of one GPU, so that each batcher's batch
    steps wait for the others' interactive ones too."""

    POLL_SECONDS = 0.05  # how soon a waiting batch step sees its own batcher's new arrivals

    def __init__(self):
        self._cond = threading.Condition()
        self.interactive = 0

    def entered(self, count: int) -> None:
        with self._cond:
            self.interactive += count

    def left(self) -> None:
        with self._cond:
            self.interactive -= 1
            self._cond.notify_all()

    def wait(self) -> bool:
        """Wait (a poll's time at most) for no interactive request to be stepping; True if none is."""
        with self._cond:
            return self._cond.wait_for(lambda: self.interactive == 0, self.POLL_SECONDS)


@dataclass
class _Member:
    scheduler: object  # this request's UniPC scheduler, restored from its state
    latents: torch.Tensor  # (1, C, T, H, W) on the device
    prompt: torch.Tensor
    negative: torch.Tensor | None
    guidance: float
    steps: list[int]  # indices still to run
    on_step: Callable[[int], None] | None
    stop: int  # the step index after the phase
    stands_for: tuple[int, int, int] | None = None  # the video a simulated stand-in latent stands for
    adapters: list[AdapterRef] = field(default_factory=list)  # this expert's LoRAs for the request
    interactive: bool = False  # steps before every batch request's
    future: Future = field(default_factory=Future)
    ready_since: float = field(default_factory=time.monotonic)  # when it last stepped (or arrived)

    @property
    def key(self) -> tuple:
        """Requests batch with their own kind: same latent shape, guidance on or off, same adapters
        at the same scales (one forward runs one set of weights), and the same priority (a batch
        request in an interactive one's forward would slow it)."""
        adapters = tuple((a.name, a.revision, a.scale) for a in self.adapters)
        return tuple(self.latents.shape), self.stands_for, self.negative is not None, adapters, self.interactive


class StepBatcher:
    """Runs phases for many threads (a replica's concurrent requests) on one worker thread."""

    def __init__(
        self,
        transformer,
        scheduler: Scheduler,
        device,
        dtype,
        max_batch: int,
        max_wait: float,
        pair: GuidancePair | None = None,
        adapters: ExpertAdapters | None = None,
        gate: StepGate | None = None,
    ):
        """`pair`: run the conditional and unconditional halves as two forwards side by side (CPU).
        `adapters`: the expert's LoRAs, set for each forward to its batch's. `gate`: shared with
        the other batchers of this GPU (default: its own)."""
        self.transformer, self.scheduler, self.pair = transformer, scheduler, pair
        self.gate = gate or StepGate()
        self.adapters = adapters
        self.device, self.dtype = device, dtype
        self.max_batch, self.max_wait = max_batch, max_wait
        self.batch_sizes: list[int] = []  # requests per forward, for tests and benchmarks
        self._waiting: list[_Member] = []
        self._active: list[_Member] = []
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="step-batcher", daemon=True)
        self._worker.start()

    @property
    def alive(self) -> bool:
        """False once the worker thread died: every request would wait forever (health checks use it)."""
        return self._worker.is_alive()

    def run(
        self,
        state: DenoisingState,
        embeddings: PromptEmbeddings,
        guidance_scale: float,
        steps: range,
        on_step: Callable[[int], None] | None = None,
        adapters: list[AdapterRef] | None = None,
        interactive: bool = False,
    ) -> DenoisingState:
        """The same contract as `Expert.__call__`; blocks until this request's phase is done.
        `interactive`: this request's steps go before every batch request's."""
        negative = None if embeddings.negative is None else embeddings.negative.to(self.device, self.dtype)
        member = _Member(
            self.scheduler.restore(state.scheduler),
            state.latents.to(self.device),
            embeddings.prompt.to(self.device, self.dtype),
            negative,
            guidance_scale,
            list(steps),
            on_step,
            steps.stop,
            state.stands_for,
            list(adapters or []),
            interactive,
        )
        if not member.steps:
            return DenoisingState(state.latents, state.scheduler, steps.stop, state.stands_for)
        with self._cond:
            self._waiting.append(member)
            self._cond.notify()
        return member.future.result()

    # -- the worker ----------------------------------------------------------------------

    def _admit(self) -> None:
        """Move waiting requests in; an idle engine first waits up to max_wait for more."""
        with self._cond:
            while not self._waiting and not self._active:
                self._cond.wait()
            if not self._active:
                deadline = time.monotonic() + self.max_wait
                while len(self._waiting) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
            self.gate.entered(sum(m.interactive for m in self._waiting))
            self._active += self._waiting
            self._waiting = []

    def _work(self) -> None:
        while True:
            self._admit()
            # Interactive requests first; then the kind whose request has waited longest for a
            # step, so requests of another shape take turns instead of starving behind a bigger group.
            groups: dict[tuple, list[_Member]] = {}
            for member in sorted(self._active, key=lambda m: (not m.interactive, m.ready_since)):
                groups.setdefault(member.key, []).append(member)
            batch = next(iter(groups.values()))[: self.max_batch]
            if not batch[0].interactive and not self.gate.wait():  # another expert's interactive step
                continue
            try:
                if self.adapters is None:
                    self._step(batch)
                else:
                    with self.adapters.active(batch[0].adapters):
                        self._step(batch)
            except Exception as error:  # a bad forward fails its batch, not the engine
                for member in batch:
                    self._leave(member, error=error)

    @torch.no_grad()
    def _step(self, batch: list[_Member]) -> None:
        timesteps = [m.scheduler.timesteps[m.steps[0]] for m in batch]
        guided = [m for m in batch if m.negative is not None]
        self.batch_sizes.append(len(batch))
        latents = [m.latents for m in batch] + [m.latents for m in guided]
        text = [m.prompt for m in batch] + [m.negative for m in guided]
        t = [timesteps[i] for i in range(len(batch))] + [timesteps[batch.index(m)] for m in guided]

        def forward(rows: slice) -> torch.Tensor:  # no step cache here: an expert with one does not batch
            return self.transformer(
                hidden_states=torch.cat(latents[rows]).to(self.dtype),
                timestep=torch.stack(t[rows]),
                encoder_hidden_states=torch.cat(text[rows]),
                return_dict=False,
            )[0]

        with standing_for(batch[0].stands_for):
            if guided and self.pair is not None:
                conditional, unconditional = self.pair(
                    lambda: forward(slice(len(batch))), lambda: forward(slice(len(batch), None))
                )
            else:
                noise = forward(slice(None))
                conditional, unconditional = noise[: len(batch)], noise[len(batch) :]
        for i, member in enumerate(batch):
            prediction = conditional[i : i + 1]
            if member.negative is not None:
                uncond = unconditional[guided.index(member) : guided.index(member) + 1]
                prediction = uncond + member.guidance * (prediction - uncond)
            index = member.steps.pop(0)
            member.latents = member.scheduler.step(prediction, timesteps[i], member.latents, return_dict=False)[0]
            member.ready_since = time.monotonic()
            try:
                if member.on_step is not None:
                    member.on_step(index)
            except Exception as error:  # e.g. JobCancelled: this request leaves now
                self._leave(member, error=error)
                continue
            if not member.steps:
                self._leave(member)

    def _leave(self, member: _Member, error: BaseException | None = None) -> None:
        """Hand the request its result (or error) and drop it; a member that already left stays left."""
        with self._cond:
            if member in self._active:
                self._active.remove(member)
                if member.interactive:
                    self.gate.left()
        if member.future.done():
            return
        if error is not None:
            member.future.set_exception(error)
        else:
            member.future.set_result(
                DenoisingState(
                    member.latents.cpu(), Scheduler.capture(member.scheduler), member.stop, member.stands_for
                )
            )
