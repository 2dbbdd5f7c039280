"""The stage list run by the shared runner (stages/runner.py), driven with fake stages: the
template mode, the physics repair loop, cancellation, re-runs after a replica died and
the result cache, without a model and without Ray."""

from __future__ import annotations

import asyncio

import pytest

from cache.keys import ModelIdentity
from cache.store import LatentCache
from contract.messages import PhysicsResult, Video
from contract.request import GenerationRequest
from contract.settings import Settings
from stages.denoising import DenoisingPlan
from stages.job_state import JobState
from stages.runner import JobEvents, JobRunner
from stages.stage_list import ResultCache

PLAN = DenoisingPlan(timesteps=tuple(range(10, 0, -1)), boundary_step=6)  # 6 high-noise steps, 4 low-noise


class ReplicaDied(RuntimeError):
    pass


class Response:
    """Awaitable as a Serve `DeploymentResponse` is, and passed on to the next stage as it is."""

    def __init__(self, value):
        self.value = value

    def __await__(self):
        return self._value().__await__()

    async def _value(self):
        return self.value


class FakeStages:
    """Stages that note every call and answer from scripts: physics scores per attempt,
    errors to raise, and where the job is cancelled. `awaitable` answers as Serve handles do:
    the next stage gets the response as it is (noted as such) and looks inside."""

    def __init__(
        self,
        scores=(0.5,),
        dynamics=None,
        raise_in: dict[str, list[BaseException]] | None = None,
        cancelled_at: tuple[str, int] | None = None,
        awaitable: bool = False,
        low_noise: bool = True,
    ):
        self.scores = list(scores)
        self.dynamics = list(dynamics) if dynamics is not None else [None] * len(self.scores)
        self.raise_in = raise_in or {}
        self.cancelled_at = cancelled_at
        self.awaitable = awaitable
        self.has_low_noise = low_noise
        self.calls: list[tuple] = []
        self.handed: list[tuple[str, type]] = []  # (stage, type of what it was handed)

    def _take(self, stage: str, answer) -> JobState:
        self.handed.append((stage, type(answer)))
        return answer.value if isinstance(answer, Response) else answer

    def _answer(self, stage: str, state: JobState):
        errors = self.raise_in.get(stage) or []
        if errors:
            raise errors.pop(0)
        if self.cancelled_at == (stage, state.attempt):
            state = state.copy(cancelled=True)
        return Response(state) if self.awaitable else state

    def encode(self, answer, attempt):
        state = self._take("encode", answer)
        request = state.request
        self.calls.append(("encode", request.template_mode))
        base = f"emb({request.base_prompt})" if request.template_mode else None
        return self._answer("encode", state.copy(embeddings=f"emb({request.prompt})", base_embeddings=base))

    def high_noise(self, answer, attempt):
        state = self._take("high_noise", answer)
        self.calls.append(("high_noise", state.embeddings, state.base_embeddings))
        boundary = f"boundary<{state.base_embeddings or state.embeddings}>"
        return self._answer("high_noise", state.copy(boundary=boundary, final=None if self.has_low_noise else boundary))

    def low_noise(self, answer, attempt):
        state = self._take("low_noise", answer)
        state = state.for_attempt(attempt) if attempt is not None else state
        seed = state.seed if state.attempt else None
        self.calls.append(("low_noise", state.embeddings, state.boundary, seed))
        return self._answer("low_noise", state.copy(final=f"state<{state.boundary}, {seed}>"))

    def decode(self, answer, attempt):
        state = self._take("decode", answer)
        self.calls.append(("decode", state.final, state.attempt))
        video = Video(
            attempt=state.attempt,
            seed=state.seed,
            physics=PhysicsResult(score=self.scores[state.attempt], dynamics=self.dynamics[state.attempt]),
            mp4=f"mp4 of attempt {state.attempt}".encode(),
        )
        return self._answer("decode", state.copy(video=video))

    def stage_calls(self, job: JobState) -> dict:
        calls = {"encode": self.encode, "high_noise": self.high_noise, "decode": self.decode}
        if self.has_low_noise:
            calls["low_noise"] = self.low_noise
        return calls

    def named(self, stage: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == stage]


class Events(JobEvents):
    def __init__(self, allow_retry: bool = True):
        self.allow_retry = allow_retry
        self.retried = 0
        self.added: list[int] = []

    async def retrying(self, job_id: str) -> bool:
        self.retried += 1
        return self.allow_retry

    async def add_steps(self, job_id: str, steps: int) -> None:
        self.added.append(steps)

    async def current_stage(self, job_id: str) -> str | None:
        return "high_noise"


def runner(
    stages: FakeStages, cache: LatentCache | None = None, events: JobEvents | None = None, retries: int = 0
) -> JobRunner:
    return JobRunner(
        stages.stage_calls,
        stages.has_low_noise,
        lambda request: PLAN,
        ResultCache(cache, ModelIdentity("fake", "r1", "float32")),
        events=events or JobEvents(),
        retries=retries,
        replica_died=lambda error: isinstance(error, ReplicaDied),
    )


def request(**fields) -> GenerationRequest:
    return GenerationRequest.build(Settings(), **{"prompt": "a red ball bouncing", "seed": 7, **fields})


def run(job_runner: JobRunner, generation: GenerationRequest):
    return asyncio.run(job_runner.run(JobState("job", generation)))


@pytest.mark.parametrize("awaitable", [False, True], ids=["in-process", "handles"])
def test_the_sequence_hands_each_stage_the_previous_ones_answer(awaitable):
    stages = FakeStages(awaitable=awaitable)
    outcome = run(runner(stages), request())
    if awaitable:  # a Serve response goes to the next stage as it is: only the decoder's answer is awaited
        assert stages.handed == [
            ("encode", JobState),
            ("high_noise", Response),
            ("low_noise", Response),
            ("decode", Response),
        ]
    assert outcome.status == "completed" and len(outcome.attempts) == 1
    assert stages.calls == [
        ("encode", False),
        ("high_noise", "emb(a red ball bouncing)", None),
        ("low_noise", "emb(a red ball bouncing)", "boundary<emb(a red ball bouncing)>", None),
        ("decode", "state<boundary<emb(a red ball bouncing)>, None>", 0),
    ]
    assert [a.attempt for a in outcome.physics.attempts] == [0]


def test_a_template_request_runs_its_high_noise_phase_on_the_base_prompt():
    stages = FakeStages()
    generation = request(prompt=None, template="product_showcase", slots={"product": "a red sneaker"})
    assert run(runner(stages), generation).status == "completed"
    assert stages.named("encode") == [("encode", True)]  # one call embeds the prompt and the base prompt
    (high,) = stages.named("high_noise")
    # layout and motion shared from the base prompt, the full prompt at hand for the unshared steps
    assert high[1:] == (f"emb({generation.prompt})", f"emb({generation.base_prompt})")
    (low,) = stages.named("low_noise")
    assert low[1] == f"emb({generation.prompt})"  # detail from the full prompt
    uncached = request(prompt=None, template="product_showcase", slots={"product": "a red sneaker"}, cache=False)
    stages = FakeStages()
    run(runner(stages), uncached)
    assert stages.named("encode") == [("encode", False)]  # nothing to share without the cache


def test_repair_resamples_the_detail_phase_and_keeps_the_best():
    stages, events = FakeStages(scores=[0.2, 0.7, 0.4]), Events()
    generation = request(min_physics_score=0.9, max_retries=2)
    outcome = run(runner(stages, events=events), generation)
    assert outcome.status == "completed" and len(outcome.attempts) == 3
    seeds = [c[3] for c in stages.named("low_noise")]
    assert seeds == [None, generation.resample_seed(1), generation.resample_seed(2)]
    assert all(c[2] == stages.named("low_noise")[0][2] for c in stages.named("low_noise"))  # from one boundary
    assert len(stages.named("high_noise")) == 1
    assert outcome.video.attempt == 1 and outcome.physics.score == 0.7 and outcome.video.mp4 == b"mp4 of attempt 1"
    assert [(a.attempt, a.score) for a in outcome.physics.attempts] == [(0, 0.2), (1, 0.7), (2, 0.4)]
    assert events.added == [4, 4]  # each repair adds the low-noise steps to the job's progress


def test_repair_cannot_win_by_standing_still():
    """A re-sample that scores higher only because it barely moves does not replace the first;
    one that moves as much does. Every attempt shows its score and its dynamics."""
    stages = FakeStages(scores=[0.5, 0.9, 0.7], dynamics=[0.4, 0.05, 0.35])
    outcome = run(runner(stages), request(min_physics_score=0.95, max_retries=2))
    assert len(outcome.attempts) == 3 and outcome.video.attempt == 2 and outcome.physics.score == 0.7
    assert [(a.score, a.dynamics) for a in outcome.physics.attempts] == [(0.5, 0.4), (0.9, 0.05), (0.7, 0.35)]
    # nothing moves enough: the first stays, and the still one never ends the repair as "good enough"
    stages = FakeStages(scores=[0.5, 0.99], dynamics=[0.4, 0.0])
    outcome = run(runner(stages), request(min_physics_score=0.95, max_retries=1))
    assert outcome.video.attempt == 0 and outcome.physics.score == 0.5


def test_repair_stops_once_good_enough_and_never_without_a_low_noise_expert():
    stages = FakeStages(scores=[0.2, 0.95, 0.1])
    outcome = run(runner(stages), request(min_physics_score=0.9, max_retries=2))
    assert len(outcome.attempts) == 2 and outcome.physics.score == 0.95
    single = FakeStages(scores=[0.2], low_noise=False)
    outcome = run(runner(single), request(min_physics_score=0.9, max_retries=2))
    assert outcome.status == "completed" and len(outcome.attempts) == 1 and not single.named("low_noise")


@pytest.mark.parametrize("where", [("decode", 0), ("decode", 1)], ids=["first video", "repair"])
def test_a_cancelled_job_ends_cancelled_without_more_stages(where):
    stages = FakeStages(scores=[0.1, 0.1, 0.1], cancelled_at=where)
    outcome = run(runner(stages), request(min_physics_score=0.9, max_retries=2))
    assert outcome.status == "cancelled" and outcome.video is None
    assert len(stages.named("decode")) == where[1] + 1  # nothing after the cancelled answer


def test_a_replica_death_runs_the_job_again_then_fails_naming_the_stage():
    stages, events = FakeStages(raise_in={"high_noise": [ReplicaDied("actor died")]}), Events()
    outcome = run(runner(stages, events=events, retries=1), request())
    assert outcome.status == "completed" and events.retried == 1
    assert len(stages.named("high_noise")) == 2

    stages = FakeStages(raise_in={"high_noise": [ReplicaDied("actor died"), ReplicaDied("again")]})
    outcome = run(runner(stages, events=Events(), retries=1), request())
    assert outcome.status == "failed" and outcome.error.code == "replica_died"
    assert outcome.error.message.startswith("high_noise's replica died") and "retried 1 times" in outcome.error.message

    stages = FakeStages(raise_in={"high_noise": [ReplicaDied("actor died")]})
    outcome = run(runner(stages, events=Events(allow_retry=False), retries=1), request())
    assert outcome.status == "cancelled"  # cancelled while the replica was being replaced: that stands


def test_the_runner_says_when_each_job_ended_however_it_ended():
    """What lent a job a pool of experts (deployments/serve_executor.py) takes it back here."""
    for stages, status in [
        (FakeStages(), "completed"),
        (FakeStages(raise_in={"decode": [ValueError("bad latents")]}), "failed"),
        (FakeStages(scores=[0.1], cancelled_at=("decode", 0)), "cancelled"),
    ]:
        ended = []
        job_runner = runner(stages)
        job_runner.ended = ended.append
        outcome = asyncio.run(job_runner.run(JobState("job-1", request())))
        assert outcome.status == status and [state.job_id for state in ended] == ["job-1"]


def test_any_other_stage_error_fails_the_job_at_once():
    stages, events = FakeStages(raise_in={"decode": [ValueError("latents have the wrong shape")]}), Events()
    outcome = run(runner(stages, events=events, retries=3), request())
    assert outcome.status == "failed" and outcome.error.code == "generation_failed"
    assert outcome.error.message == "ValueError: latents have the wrong shape"
    assert events.retried == 0

    # what a client reads names no file or object of the service (the log has them)
    missing = FileNotFoundError(2, "No such file or directory", "/srv/models/wan/vae/config.json")
    for error, message in [
        (missing, "FileNotFoundError: [Errno 2] No such file or directory: '<path>'"),
        (
            OSError("When reading s3://t2v-outputs/jobs/x.json: AccessDenied"),
            "OSError: When reading <uri> AccessDenied",
        ),
    ]:
        outcome = run(runner(FakeStages(raise_in={"decode": [error]}), events=Events()), request())
        assert outcome.error.message == message


def test_the_result_cache_answers_an_identical_request_of_the_same_owner(tmp_path):
    cache = LatentCache(tmp_path, {"embeddings": 2**20, "boundary": 2**20, "result": 2**20})
    stages = FakeStages(scores=[0.2, 0.6], awaitable=True)
    job_runner = runner(stages, cache)
    generation = request(min_physics_score=0.9, max_retries=1)
    results = job_runner.results
    assert results.cached(generation, "key-a") is None
    outcome = asyncio.run(job_runner.run(JobState("job", generation), "key-a"))
    assert outcome.result_cache is False  # looked up by the caller, filled by the run
    hit = results.cached(generation, "key-a")
    assert hit.mp4 == b"mp4 of attempt 1" and hit.physics.score == 0.6 and len(hit.physics.attempts) == 2
    assert results.cached(generation, "key-b") is None  # another API key's request
    assert results.cached(generation) is None
    assert results.cached(generation.model_copy(update={"seed": 8}), "key-a") is None
    assert results.cached(generation.model_copy(update={"cache": False}), "key-a") is None
    assert cache.stats()["result"]["hits"] == 1


def test_a_job_states_repr_names_what_it_holds_never_tensor_values():
    """asyncio and Ray print states (a finished task's result, an error's arguments): a tensor's
    repr would read every element of a video's latents."""
    import torch

    from stages.job_state import JobState

    state = JobState("job-1", None, source=torch.full((4, 9, 64, 64), 0.123))
    text = repr(state)
    assert "holds=[source]" in text and "0.123" not in text and len(text) < 200
