"""What the benchmarks share: a log on stderr (stdout carries only the tables and the JSON line),
the model's settings, a benchmark's own Ray and Serve run, a percentile, the JSON's rounding, and
the venv's bin folder for the commands a benchmark starts."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from contract.settings import Settings

BIN_DIR = os.path.dirname(sys.executable)  # the venv's bin (no realpath: that leaves the venv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def cluster_run(ray_dir: str, work: Path):
    """A benchmark's own Ray and Serve, stopped at the end; Ray's logs and the work folder
    removed after a successful run, kept and named after a failed one."""
    import ray
    from ray import serve

    ok = False
    try:
        yield
        ok = True
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        if ok:
            shutil.rmtree(ray_dir, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"failed: logs kept in {ray_dir} and {work}")


def model_settings() -> Settings:
    """The process settings with the model resolved (`T2V_MODEL`, else the embedded default,
    built now so no benchmark times the build)."""
    from stages.default_model import default_model_dir

    base = Settings()
    return base if base.model else base.model_copy(update={"model": default_model_dir(base.cache_dir)})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rounded(value, digits: int = 4):
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value
