"""Per-frame work side by side on the cores there are: OpenCV releases the GIL in its kernels, so
threads run a clip's pairs of frames in parallel without copying them to other processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

THREADS = min(4, os.cpu_count() or 1)


def pmap(fn: Callable, *iterables: Iterable) -> list:
    """`list(map(fn, *iterables))`, in `THREADS` threads, in order."""
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(fn, *iterables))
