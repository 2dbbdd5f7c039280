"""Continuous batching in an expert: batched equals unbatched, requests join and leave
between steps, the idle wait is bounded, a cancelled request leaves alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from contract.experts import ExpertKind
from contract.jobs import JobCancelled
from contract.request import GenerationRequest
from contract.settings import BatchingSettings, Settings
from stages.batching import StepGate, _Member
from stages.checkpoint import Checkpoint
from stages.expert import Expert
from stages.text_encoder import TextEncoder


@pytest.fixture(scope="module")
def parts(wan22_dir):
    settings = Settings(model=wan22_dir)
    checkpoint = Checkpoint(wan22_dir, settings)
    return settings, TextEncoder(checkpoint), Expert(checkpoint, ExpertKind.HIGH_NOISE, batching=False)


def batching_expert(wan22_dir, max_batch: int = 4, max_wait_ms: float = 200) -> Expert:
    settings = Settings(
        model=wan22_dir, batching=BatchingSettings(enabled=True, max_batch_size=max_batch, max_wait_ms=max_wait_ms)
    )
    return Expert(Checkpoint(wan22_dir, settings), ExpertKind.HIGH_NOISE)


def job(parts, prompt: str, seed: int, steps: int = 10, guidance: float = 4.0):
    settings, encoder, _ = parts
    request = GenerationRequest.build(
        settings, prompt=prompt, seed=seed, guidance_scale=guidance, num_inference_steps=steps
    )
    return request, encoder(request.prompt, request.negative_prompt, request.classifier_free_guidance)


REQUESTS = [("a red ball bouncing", 1, 10, 4.0), ("一只橘猫在草地上奔跑", 2, 10, 5.5), ("a kite at dusk", 3, 10, 1.0)]


def test_batched_phases_equal_unbatched_ones(wan22_dir, parts):
    expert = batching_expert(wan22_dir)
    jobs = [job(parts, *r) for r in REQUESTS]  # the third without guidance: a group of its own
    with ThreadPoolExecutor(len(jobs)) as pool:
        batched = list(pool.map(lambda j: expert.phase(*j), jobs))
    alone = [parts[2].phase(*j) for j in jobs]
    for b, a in zip(batched, alone, strict=False):
        assert b.step == a.step and (b.latents - a.latents).abs().max() <= 1e-4
        assert b.scheduler["model_outputs"][-1] is not None
    assert max(expert.batcher.batch_sizes) == 2  # the two guided ones shared forwards


def test_requests_join_and_leave_between_steps(wan22_dir, parts):
    expert = batching_expert(wan22_dir, max_wait_ms=0)
    long_job, short_job = job(parts, "a long ride", 5, steps=20), job(parts, "a short hop", 6, steps=6)
    third_step = threading.Event()
    results = {}

    def long_run():
        results["long"] = expert.phase(*long_job, on_step=lambda i: i == 3 and third_step.set())

    runner = threading.Thread(target=long_run)
    runner.start()
    third_step.wait(60)
    results["short"] = expert.phase(*short_job)  # joins the long one, at another step index
    runner.join(60)

    sizes = expert.batcher.batch_sizes
    assert sizes[0] == 1 and 2 in sizes and sizes[-1] == 1  # alone, joined, alone again after it left
    high_steps_short = results["short"].step
    assert sizes.count(2) == high_steps_short  # shared every step of the short one
    for name, j in (("long", long_job), ("short", short_job)):
        assert (results[name].latents - parts[2].phase(*j).latents).abs().max() <= 1e-4


def beside_a_batch_phase(parts, lending: Expert, urgent_expert: Expert, seed: int) -> tuple[list[str], dict, tuple]:
    """A batch phase of 20 steps under way on `lending`; from its second step on, an interactive
    phase of 8 on `urgent_expert`. Returns the order their steps ran in, both results and jobs."""
    settings = parts[0]
    lent = job(parts, "a batch video lent to the interactive pool", seed, steps=20)
    request = GenerationRequest.build(settings, prompt="a director's shot", seed=seed + 1, num_inference_steps=8)
    jobs = {"batch": lent, "interactive": (request.model_copy(update={"priority": "interactive"}), lent[1])}
    order: list[str] = []
    second_step = threading.Event()
    results = {}

    def batch_run():
        results["batch"] = lending.phase(*lent, on_step=lambda i: (order.append("batch"), i == 1 and second_step.set()))

    runner = threading.Thread(target=batch_run)
    runner.start()
    second_step.wait(60)
    results["interactive"] = urgent_expert.phase(*jobs["interactive"], on_step=lambda i: order.append("interactive"))
    runner.join(60)
    return order, results, jobs


def test_an_interactive_request_steps_first_and_apart(wan22_dir, parts):
    """A batch phase under way yields to an interactive one at the next step boundary: every step
    of the interactive request runs before the batch one's next, in forwards of its own; both end
    with the latents they would make alone."""
    expert = batching_expert(wan22_dir, max_wait_ms=0)
    order, results, jobs = beside_a_batch_phase(parts, expert, expert, seed=14)
    first = order.index("interactive")
    interactive_steps = results["interactive"].step
    # at most one batch step (the one under way when it arrived) before it, none among its steps
    assert first <= 3 and order[first : first + interactive_steps] == ["interactive"] * interactive_steps
    assert 2 not in expert.batcher.batch_sizes  # never in one forward together
    for name, j in jobs.items():
        assert (results[name].latents - parts[2].phase(*j).latents).abs().max() <= 1e-4


def test_experts_of_one_gpu_share_the_gate(wan22_dir, parts):
    """Co-located experts run a batcher each on one GPU: a batch request's steps in one wait while
    the other steps an interactive request (past the one step under way when it arrived)."""
    settings = Settings(model=wan22_dir, batching=BatchingSettings(enabled=True, max_wait_ms=0))
    gate = StepGate()
    lending, urgent = (Expert(Checkpoint(wan22_dir, settings), ExpertKind.HIGH_NOISE, gate=gate) for _ in range(2))
    order, results, _ = beside_a_batch_phase(parts, lending, urgent, seed=16)
    first, last = order.index("interactive"), len(order) - 1 - order[::-1].index("interactive")
    assert last - first + 1 - results["interactive"].step <= 1, order  # at most the batch step under way
    assert gate.interactive == 0


def test_an_idle_expert_waits_at_most_max_wait_for_company(wan22_dir, parts):
    expert = batching_expert(wan22_dir, max_wait_ms=400)
    first_step = []
    start = time.monotonic()
    expert.phase(*job(parts, "alone", 7, steps=4), on_step=lambda i: first_step.append(time.monotonic() - start))
    assert 0.35 <= first_step[0] <= 0.4 + 2.0  # waited for company, then no longer than max_wait (+ one forward)

    with ThreadPoolExecutor(2) as pool:  # a second request inside the window joins the first forward
        first = pool.submit(expert.phase, *job(parts, "first", 8, steps=4))
        time.sleep(0.1)
        second = pool.submit(expert.phase, *job(parts, "second", 9, steps=4))
        first.result(), second.result()
    assert expert.batcher.batch_sizes[-3:] == [2, 2, 2]


def test_a_cancelled_request_leaves_and_the_others_go_on(wan22_dir, parts):
    expert = batching_expert(wan22_dir)
    keep, drop = job(parts, "stays", 10), job(parts, "goes", 11)

    def cancel_at_two(i):
        if i == 2:
            raise JobCancelled("goes")

    with ThreadPoolExecutor(2) as pool:
        kept = pool.submit(expert.phase, *keep)
        dropped = pool.submit(expert.phase, *drop, on_step=cancel_at_two)
        with pytest.raises(JobCancelled):
            dropped.result()
        assert (kept.result().latents - parts[2].phase(*keep).latents).abs().max() <= 1e-4
    assert torch.is_tensor(kept.result().latents)


def test_a_request_that_left_can_leave_again(wan22_dir):
    """A member cancelled in its step whose batch then fails as a whole is left twice: the second
    time must be a no-op, not an InvalidStateError that kills the worker (and hangs every later
    request on the replica)."""
    batcher = batching_expert(wan22_dir).batcher
    member = _Member(None, torch.zeros(1), torch.zeros(1), None, 1.0, [], None, 0)
    batcher._leave(member, JobCancelled("cancelled in its step"))
    batcher._leave(member, RuntimeError("then its batch's forward failed"))
    batcher._leave(member)
    assert isinstance(member.future.exception(), JobCancelled)
    assert batcher.alive


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the deaths it causes
def test_a_dead_batcher_fails_the_replicas_health_check(wan22_dir, parts):
    from deployments.expert_phase import ExpertPhase

    expert = batching_expert(wan22_dir, max_wait_ms=0)
    deployment = object.__new__(ExpertPhase)  # the Serve replica's object, without Serve
    deployment.expert, deployment.kind = expert, ExpertKind.HIGH_NOISE
    deployment.check_health()  # healthy

    def dies(batch):
        raise SystemExit("the worker thread ends")  # not an Exception: the engine's guard lets it through

    expert.batcher._step = dies
    request, embeddings = job(parts, "kills the worker", 13, steps=2)
    threading.Thread(target=lambda: expert.phase(request, embeddings), daemon=True).start()
    expert.batcher._worker.join(30)
    assert not expert.batcher.alive
    with pytest.raises(RuntimeError, match="worker thread died"):
        deployment.check_health()
    for member in list(expert.batcher._active):  # let the stranded request go
        member.future.set_exception(RuntimeError("test over"))
