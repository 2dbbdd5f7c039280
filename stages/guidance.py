"""Classifier-free guidance on a CPU: a step's two forwards side by side, not one after another.

A guided step runs the transformer twice, on the prompt and on the negative prompt, and the
two forwards are independent. On a CPU, two forwards with one intra-op thread each, on two
threads at once, beat two forwards with two intra-op threads each in turn: no OpenMP
barrier after every op, and no worker pool that sleeps between ops (on a Serve replica's
executor thread libgomp's pool does not spin, BENCHMARKS.md "CPU threads in replicas").
Each forward does the same arithmetic as before, so the results are bit-identical
(tests/test_guidance.py).
On a GPU the kernels already run asynchronously; there the forwards stay sequential.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import cache
from typing import TypeVar

import torch

T = TypeVar("T")


class GuidancePair:
    """Two worker threads that each run one forward with `threads // 2` intra-op threads."""

    def __init__(self, threads: int):
        self.threads_per_forward = max(1, threads // 2)
        started = threading.Barrier(3)
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="guidance", initializer=self._init_worker)
        # Start both workers now: the first blocks at the barrier, so the second submit starts another.
        workers = [self._pool.submit(started.wait) for _ in range(2)]
        started.wait()
        wait(workers)
        # torch.set_num_threads is per OpenMP thread, but also the default for threads that
        # start later: give that default back, so only the two workers run single-threaded.
        torch.set_num_threads(threads)

    def _init_worker(self) -> None:
        torch.get_num_threads()  # torch sizes a thread's OpenMP team lazily, on first use: do it now
        torch.set_num_threads(self.threads_per_forward)

    @staticmethod
    def _run(forward: Callable[[], T], grad: bool) -> T:
        with torch.set_grad_enabled(grad):
            return forward()

    def __call__(self, conditional: Callable[[], T], unconditional: Callable[[], T]) -> tuple[T, T]:
        """(conditional(), unconditional()), computed at the same time."""
        grad = torch.is_grad_enabled()  # thread-local: carry the caller's no_grad over
        uncond = self._pool.submit(self._run, unconditional, grad)
        cond = self._pool.submit(self._run, conditional, grad)
        wait((cond, uncond))  # both finish before either's error propagates: the pair stays free
        return cond.result(), uncond.result()


@cache
def guidance_pair(threads: int) -> GuidancePair:
    """One pair per process and thread count: a pipeline's two experts share it."""
    return GuidancePair(threads)


def pair_for(device: torch.device, enabled: bool) -> GuidancePair | None:
    """The pair for this process's CPU threads, or None where it would not help (GPU, one thread)."""
    threads = torch.get_num_threads()
    if not enabled or device.type != "cpu" or threads < 2:
        return None
    return guidance_pair(threads)
