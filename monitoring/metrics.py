"""The cluster's Prometheus metrics, defined in one place.

They are Ray metrics (`ray.util.metrics`): every replica on every node exports through
its node's metrics agent, Ray adds node and replica labels, and Prometheus scrapes the
agents listed in Ray's service-discovery file (monitoring/prometheus.yml), so the
series aggregate across replicas and nodes with `sum by (...)`. Exported names carry
Ray's `ray_` prefix, and counters a `_total` suffix: `t2v_http_requests` is scraped as
`ray_t2v_http_requests_total`.

Outside Ray (`t2v generate`, unit tests) every call is a no-op.
"""

from __future__ import annotations

import threading
import time
from functools import cached_property

SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600]
SCORE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
DYNAMICS = [0.01, 0.03, 0.1, 0.2, 0.5, 1.0, 2.0]  # the scorer's "still" ends at 0.03
# Ray's metrics agent drops a gauge's value two export intervals (2 x 10 s) after it was last set:
# a gauge that changes rarely (a cache's size) is set again this often while its process lives.
GAUGE_REFRESH_SECONDS = 5.0


class _Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._gauges: dict[tuple[str, tuple], float] = {}  # (name, tags) -> the value last set
        self._refresher: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        import ray

        return ray.is_initialized()

    @cached_property
    def _all(self) -> dict:
        from ray.util.metrics import Counter, Gauge, Histogram

        return {
            "http": Counter(
                "t2v_http_requests", "HTTP requests by endpoint and status", tag_keys=("endpoint", "method", "status")
            ),
            "job": Histogram(
                "t2v_job_duration_seconds",
                "End-to-end seconds of a finished job",
                boundaries=SECONDS,
                tag_keys=("status", "template", "model"),
            ),
            "queue": Histogram(
                "t2v_queue_wait_seconds",
                "Seconds from accepted to the first stage",
                boundaries=SECONDS,
                tag_keys=("model",),
            ),
            "stage": Histogram(
                "t2v_stage_duration_seconds",
                "Seconds per stage of a job",
                boundaries=SECONDS,
                tag_keys=("stage", "model"),
            ),
            "in_flight": Gauge("t2v_jobs_in_flight", "Jobs queued or in progress", tag_keys=("status",)),
            "steps": Counter("t2v_denoising_steps", "Denoising steps run", tag_keys=("expert", "model")),
            "adapter_loads": Counter(
                "t2v_adapter_loads", "LoRA adapters loaded into an expert replica", tag_keys=("expert", "adapter")
            ),
            "adapter_requests": Counter(
                "t2v_adapter_requests",
                "Expert phases with adapters: their adapters already loaded (hit) or loaded for them (load)",
                tag_keys=("expert", "result"),
            ),
            "adapter_load": Histogram(
                "t2v_adapter_load_seconds",
                "Seconds to load one adapter into an expert",
                boundaries=SECONDS,
                tag_keys=("expert",),
            ),
            "cache": Counter("t2v_cache_lookups", "Cache lookups by level and result", tag_keys=("level", "result")),
            "evictions": Counter(
                "t2v_cache_evictions", "Entries evicted to respect the size limit", tag_keys=("level",)
            ),
            "corrupt": Counter(
                "t2v_cache_corrupt_entries", "Corrupt entries detected and dropped", tag_keys=("level",)
            ),
            "unreadable": Counter(
                "t2v_unreadable_records", "Stored records that did not parse (skipped, kept)", tag_keys=("store",)
            ),
            "cache_bytes": Gauge("t2v_cache_size_bytes", "Bytes held by a node's cache level", tag_keys=("level",)),
            "physics": Histogram(
                "t2v_physics_score",
                "Physics-plausibility score of each video",
                boundaries=SCORE,
                tag_keys=("template", "model", "engine"),
            ),
            "subscore": Histogram(
                "t2v_physics_subscore",
                "Physics-plausibility subscores",
                boundaries=SCORE,
                tag_keys=("subscore", "template", "model", "engine"),
            ),
            "dynamics": Histogram(
                "t2v_physics_dynamics",
                "How much each video's scene moves, camera removed (frame sizes per second)",
                boundaries=DYNAMICS,
                tag_keys=("template", "model", "engine"),
            ),
            "simulated_seconds": Counter(
                "t2v_simulated_gpu_seconds",
                "Simulated GPU seconds charged by the cost model (device: sim), by stage",
                tag_keys=("stage", "gpu"),
            ),
            "violations": Counter(
                "t2v_physics_violations",
                "Physics violations found in completed videos, by kind",
                tag_keys=("kind", "engine"),
            ),
        }

    def _get(self, name: str):
        if not self.enabled:
            return None
        with self._lock:
            return self._all[name]

    def inc(self, name: str, value: float = 1, **tags: str) -> None:
        metric = self._get(name)
        if metric is not None and value:
            metric.inc(value, tags={k: str(v) for k, v in tags.items()})

    def observe(self, name: str, value: float, **tags: str) -> None:
        metric = self._get(name)
        if metric is not None:
            metric.observe(value, tags={k: str(v) for k, v in tags.items()})

    def physics(self, physics, template: str | None, model: str, engine: str) -> None:
        """One completed video's physics score, subscores, dynamics and violations. `engine`: serve
        (the app's jobs, HTTP and batch rows alike) or data (the Ray Data batch engine's rows)."""
        tags = {"template": template, "model": model, "engine": engine}
        self.observe("physics", physics.score, **tags)
        for name, value in physics.subscores.items():
            if value is not None:
                self.observe("subscore", value, subscore=name, **tags)
        if physics.dynamics is not None:
            self.observe("dynamics", physics.dynamics, **tags)
        for violation in physics.violations:
            self.inc("violations", kind=violation["kind"], engine=engine)

    def zero(self, name: str, **tags: str) -> None:
        """Create a counter's or gauge's series at 0, so that a dashboard panel shows 0, not
        "No data" (which looks like a broken exporter), until the first event."""
        metric = self._get(name)
        if metric is None:
            return
        if hasattr(metric, "set"):
            self.set(name, 0, **tags)
        else:  # Counter.inc refuses 0; recording it creates the series
            metric._record(0, tags={k: str(v) for k, v in tags.items()})

    def set(self, name: str, value: float, **tags: str) -> None:
        metric = self._get(name)
        if metric is None:
            return
        tags = {k: str(v) for k, v in tags.items()}
        metric.set(value, tags=tags)
        with self._lock:
            self._gauges[(name, tuple(sorted(tags.items())))] = value
            if self._refresher is None:
                self._refresher = threading.Thread(target=self._refresh, name="t2v-gauges", daemon=True)
                self._refresher.start()

    def _refresh(self) -> None:
        while True:
            time.sleep(GAUGE_REFRESH_SECONDS)
            with self._lock:
                gauges = list(self._gauges.items())
            for (name, tags), value in gauges:
                metric = self._get(name)
                if metric is not None:
                    metric.set(value, tags=dict(tags))


metrics = _Metrics()
