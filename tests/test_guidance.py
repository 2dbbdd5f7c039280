"""A guided step's two forwards side by side on a CPU: same result, really concurrent,
single-threaded workers that leave the caller's thread count alone, used where it helps."""

from __future__ import annotations

import threading

import pytest
import torch

from contract.experts import ExpertKind
from contract.request import GenerationRequest
from contract.settings import Settings, StepCacheSettings
from stages.checkpoint import Checkpoint
from stages.expert import Expert
from stages.guidance import GuidancePair, pair_for
from stages.text_encoder import TextEncoder

pytestmark = pytest.mark.skipif(torch.get_num_threads() < 2, reason="the pair needs two torch threads")


def test_the_two_forwards_run_at_the_same_time_on_single_threaded_workers():
    pair = GuidancePair(torch.get_num_threads())
    meet = threading.Barrier(2, timeout=10)  # breaks (raises) unless both sides are running at once

    def side():
        meet.wait()
        return threading.current_thread().name, torch.get_num_threads(), torch.is_grad_enabled()

    with torch.no_grad():
        cond, uncond = pair(side, side)
    assert cond[0] != uncond[0]
    assert cond[1:] == uncond[1:] == (pair.threads_per_forward, False)  # the caller's no_grad carried over
    assert pair.threads_per_forward == torch.get_num_threads() // 2
    # Only the workers run with fewer threads: the caller and threads started later keep torch's count.
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [torch.get_num_threads()] and torch.get_num_threads() >= 2


def test_an_error_in_one_forward_reaches_the_caller_after_both_finished():
    pair = GuidancePair(2)
    finished = threading.Event()

    def fails():
        raise ValueError("bad forward")

    with pytest.raises(ValueError, match="bad forward"):
        pair(fails, finished.set)
    assert finished.is_set()


def phase(wan22_dir, **settings_overrides) -> tuple[Expert, torch.Tensor]:
    settings = Settings(model=wan22_dir, **settings_overrides)
    checkpoint = Checkpoint(wan22_dir, settings)
    expert = Expert(checkpoint, ExpertKind.HIGH_NOISE, batching=False)
    request = GenerationRequest.build(settings, prompt="a red ball bouncing", seed=5, num_inference_steps=6)
    embeddings = TextEncoder(checkpoint)(request.prompt, request.negative_prompt, request.classifier_free_guidance)
    return expert, expert.phase(request, embeddings).latents


def test_side_by_side_guidance_equals_sequential_bit_for_bit(wan22_dir):
    paired, latents = phase(wan22_dir)
    sequential, expected = phase(wan22_dir, parallel_guidance=False)
    assert paired.pair is not None and sequential.pair is None
    assert torch.equal(latents, expected)


def test_the_pair_is_left_out_where_it_cannot_help_or_would_race(wan22_dir):
    assert pair_for(torch.device("cuda"), enabled=True) is None  # GPU kernels already run asynchronously
    assert pair_for(torch.device("cpu"), enabled=False) is None
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert pair_for(torch.device("cpu"), enabled=True) is None
    finally:
        torch.set_num_threads(threads)
    # A step cache keeps one context per transformer: its two forwards must take turns.
    cached = Expert(
        Checkpoint(wan22_dir, Settings(model=wan22_dir, step_cache=StepCacheSettings(kind="first_block"))),
        ExpertKind.HIGH_NOISE,
        batching=False,
    )
    assert cached.pair is None
