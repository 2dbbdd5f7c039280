"""Experts as groups of ranks (stages/parallel.py): Ulysses sequence parallelism over gloo on
this CPU, the same code that runs over NCCL on GPUs, makes the video one rank makes."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from cluster.pipeline import Pipeline
from contract.experts import ExpertKind
from contract.settings import ParallelSettings, Settings, StepCacheSettings
from tests.test_vae_tiles import SMALL_TILES

# Ulysses moves whole heads between ranks and gathers the output: each rank computes exactly the
# numbers one rank would, in the same order. Zero is the expectation; the bound leaves room for
# a BLAS that picks another kernel for a smaller matrix.
TOLERANCE = 1e-5

CASES = {
    "plain": {"prompt": "a red ball bouncing on grass", "seed": 5, "steps": 4},
    "template": {"template": "product_showcase", "slots": {"product": "a mug"}, "seed": 6, "steps": 4},
    "adapter": {"prompt": "a green ball rolling", "seed": 7, "steps": 4, "lora": [{"name": "studio"}]},
}


def with_ranks(settings: Settings, cache_dir, **parallel) -> Settings:
    experts = {k.deployment for k in ExpertKind}
    deployments = {
        n: d.model_copy(update={"threads": 1}) if n in experts else d for n, d in settings.deployments.items()
    }
    one_thread = settings.model_copy(update={"deployments": deployments, "cache_dir": cache_dir})
    return one_thread.with_parallel_experts(ParallelSettings(**parallel))


def latents(pipeline: Pipeline) -> dict[str, torch.Tensor]:
    return {name: pipeline(pipeline.validator.body(fields)).latents for name, fields in CASES.items()}


@pytest.fixture(scope="module")
def one_rank_pipeline(settings, tmp_path_factory) -> Pipeline:
    return Pipeline.from_settings(with_ranks(settings, tmp_path_factory.mktemp("one")))


@pytest.fixture(scope="module")
def one_rank(one_rank_pipeline) -> dict[str, torch.Tensor]:
    return latents(one_rank_pipeline)


@pytest.mark.parametrize("parallel", [{"ulysses": 2}, {"cfg": 2}, {"ulysses": 2, "cfg": 2}], ids=str)
def test_groups_of_ranks_make_the_video_one_rank_makes(settings, one_rank, tmp_path, parallel):
    """Ulysses 2 (each rank half the tokens), CFG 2 (a guided step's halves on two ranks) and
    both (two groups of two) make the latents of one rank, for a prompt, a template and an adapter."""
    pipeline = Pipeline.from_settings(with_ranks(settings, tmp_path, **parallel))
    try:
        transformer = pipeline.high_noise_expert.transformer
        assert (transformer.ulysses, transformer.cfg) == (parallel.get("ulysses", 1), parallel.get("cfg", 1))
        two_ranks = latents(pipeline)
    finally:
        pipeline.high_noise_expert.close()
        pipeline.low_noise_expert.close()
    for name, expected in one_rank.items():
        difference = (two_ranks[name].float() - expected.float()).abs().max().item()
        assert difference <= TOLERANCE, (name, difference)


def test_parallel_settings_are_checked(settings, tmp_path):
    import typer

    from cluster.cli import _parallel_settings

    with pytest.raises(typer.BadParameter, match="'ring=2': Extra inputs are not permitted"):
        _parallel_settings("ring=2")  # not built: refused, not ignored
    with pytest.raises(typer.BadParameter, match="'cfg=3': Input should be less than or equal to 2"):
        _parallel_settings("cfg=3")
    assert _parallel_settings("ulysses=2").ulysses == 2
    assert _parallel_settings("ulysses=2,cfg=2").degree == 4
    cached = settings.model_copy(update={"step_cache": StepCacheSettings(kind="first_block")})
    with pytest.raises(ValueError, match="step_cache .first_block. does not run on parallel experts"):
        cached.with_parallel_experts(ParallelSettings(ulysses=2))
    with pytest.raises(ValueError, match=r"parallel.ulysses \(4\) must divide the model's 6 attention heads"):
        Pipeline.from_settings(with_ranks(settings, tmp_path, ulysses=4))


def test_t2v_generate_runs_its_experts_on_ranks(settings, wan22_dir, tmp_path):
    """`t2v generate --parallel ulysses=2` spawns each expert's ranks and writes the video one
    rank makes, frame for frame; a bad --parallel is a usage error naming the option."""
    import subprocess
    import sys

    from tests.test_executors import digest

    def generate(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "cluster.cli", "generate", "a blue box falling", "--seed", "3"]
        command += ["--steps", "3", "--model", str(wan22_dir), "-o", str(tmp_path / "two.mp4"), *extra]
        env = {**os.environ, "T2V_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "300"}
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    two = generate("--parallel", "ulysses=2")
    assert two.returncode == 0, two.stderr
    pipeline = Pipeline.from_settings(settings.model_copy(update={"cache_dir": tmp_path / "one"}))
    one = pipeline(pipeline.validator.request(prompt="a blue box falling", seed=3, num_inference_steps=3))
    assert digest((tmp_path / "two.mp4").read_bytes()) == digest(one.mp4)
    bad = generate("--parallel", "ulysses=0")
    assert bad.returncode == 2 and "Invalid value for --parallel: 'ulysses=0': Input should be greater" in bad.stderr


def test_a_serve_app_whose_interactive_pool_runs_on_ranks(serve_app, tmp_path):
    """One app, two pools: the default one (one rank a replica) and the interactive one, each
    expert replica a group of four rank actors in its placement group (two CFG groups of two
    Ulysses ranks), and a decoder of two ranks that share the VAE's tiles. `priority: interactive`
    runs on the ranks, batch on the default pool but for one job the interactive pool may borrow
    (backfill 1), and all make the video one rank makes; a rank killed fails its job with a clear error, Serve
    replaces the whole group (health check) and the next job completes; deleting the app
    leaves no rank."""
    import signal

    import httpx
    from ray import serve
    from ray.util.state import list_actors

    from cluster.app import bind_app
    from contract.settings import InteractiveSettings
    from tests.test_executors import digest

    name = "t2v-parallel"
    small = {
        n: d.model_copy(update={"num_cpus": 0.01, "threads": 1}) for n, d in serve_app.settings.deployments.items()
    }
    serving = serve_app.settings.serving.model_copy(update={"output_uri": str(tmp_path / "outputs")})
    settings = serve_app.settings.model_copy(
        update={"deployments": small, "cache_dir": tmp_path / "cache", "serving": serving}
    )
    ranked = settings.with_parallel_experts(ParallelSettings(ulysses=2, cfg=2, collective_timeout_seconds=30))
    interactive = InteractiveSettings(
        enabled=True, experts=ranked.deployments[ExpertKind.HIGH_NOISE.deployment], backfill=1
    )
    # ... and a decoder of two ranks, each decoding half the VAE's tiles
    small["Decoder"] = small["Decoder"].model_copy(update={"parallel": ParallelSettings(ulysses=2)})
    settings = settings.model_copy(update={"interactive": interactive, "decoding": SMALL_TILES})

    def ranks(worker: str = "RankWorker") -> list:
        return list_actors(filters=[("class_name", "=", worker), ("state", "=", "ALIVE")])

    def deployments_of(job: dict) -> dict[str, str]:
        """Stage -> the deployment of the replica that ran it (replica actors are named app#deployment#id)."""
        replicas = {}
        for actor in list_actors(filters=[("state", "=", "ALIVE")]):
            if (actor.name or "").startswith(f"SERVE_REPLICA::{name}#"):
                _, deployment, replica = actor.name.split("#")
                replicas[replica] = deployment
        return {span["stage"]: replicas.get(span["replica"], "?") for span in job["trace"]}

    body = {"prompt": "a blue box falling", "seed": 3, "steps": 3, "cache": False}
    fast = {**body, "priority": "interactive"}
    serve.run(bind_app(settings), name=name, route_prefix="/parallel")
    try:
        with httpx.Client(base_url=f"{serve_app.url}/parallel", headers=serve_app.headers, timeout=300) as http:

            def make(request: dict) -> tuple[str, tuple[str, str]]:
                video = http.post("/v1/videos/sync", json=request)
                assert video.status_code == 200, video.text
                ran_on = deployments_of(http.get(f"/v1/videos/{video.headers['X-Video-Id']}").json())
                return digest(video.content), (ran_on["high_noise"], ran_on["low_noise"])

            on_ranks, ran_on_ranks = make(fast)
            assert ran_on_ranks == ("HighNoiseExpertInteractive", "LowNoiseExpertInteractive")
            with ThreadPoolExecutor(2) as pool:  # two batch jobs at once: the pool borrows one
                batch = list(pool.map(make, [body, body]))
            assert len(ranks()) == 8  # the interactive pool's two experts, four ranks each
            assert len(ranks("DecodeRank")) == 2
            assert {ran_on for _, ran_on in batch} == {ran_on_ranks, ("HighNoiseExpert", "LowNoiseExpert")}
            one_process = {"cache_dir": tmp_path / "one", "decoding": SMALL_TILES}
            pipeline = Pipeline.from_settings(serve_app.settings.model_copy(update=one_process))
            one = pipeline(pipeline.validator.body(body))
            assert on_ranks == batch[0][0] == batch[1][0] == digest(one.mp4)  # as one process, tiles and all
            refused = http.post("/v1/videos/sync", json={**body, "priority": "urgent"})
            assert refused.status_code == 400 and "priority" in refused.json()["error"]["param"]

            before = {a.actor_id for a in ranks()}
            os.kill(ranks()[0].pid, signal.SIGKILL)
            failed = http.post("/v1/videos/sync", json={**fast, "seed": 4})
            assert failed.status_code >= 500 and "a rank failed" in failed.text, failed.text
            deadline = time.monotonic() + 120  # Serve's health check replaces the replica and its ranks
            while len((now := {a.actor_id for a in ranks()}) - before) < 4 or len(now) != 8:
                assert time.monotonic() < deadline, f"the broken group was not replaced: {len(now)} ranks"
                time.sleep(1)
            assert http.post("/v1/videos/sync", json={**fast, "seed": 5}).status_code == 200
    finally:
        serve.delete(name)
    deadline = time.monotonic() + 30
    while ranks() or ranks("DecodeRank"):
        assert time.monotonic() < deadline, f"rank actors left after the app was deleted: {ranks()}"
        time.sleep(1)


def test_the_ray_data_engine_runs_its_experts_on_ranks(serve_app, settings, one_rank_pipeline, tmp_path):
    """`--engine data` with CFG-parallel experts: each expert actor holds a coordinator's share and
    starts its ranks in a placement group of its own, reserved whole; every row, a prompt, a
    template and an adapter, makes the video one rank makes, frame for frame."""
    from ray.util.state import list_actors

    from cluster.data_engine import DataEngine
    from cluster.prompt_table import rows_from_records
    from tests.test_executors import digest

    small = {n: d.model_copy(update={"num_cpus": 0.01}) for n, d in settings.deployments.items()}
    parallel = with_ranks(settings.model_copy(update={"deployments": small}), tmp_path / "cache", cfg=2)
    assert parallel.deployments[ExpertKind.HIGH_NOISE.deployment].replica_resources["num_gpus"] == 0
    rows, _ = rows_from_records([{"id": name, **fields} for name, fields in CASES.items()])
    finished = dict(DataEngine(parallel).stream(rows, str(tmp_path / "out")))
    for name, fields in CASES.items():
        row = finished[name]
        assert row["error_code"] is None, row["error"]
        one = one_rank_pipeline(one_rank_pipeline.validator.body(fields))
        assert digest((tmp_path / "out" / "videos" / f"{name}.mp4").read_bytes()) == digest(one.mp4), name
    deadline = time.monotonic() + 30  # the pools' actors are gone, and their ranks with them
    while list_actors(filters=[("class_name", "=", "RankWorker"), ("state", "=", "ALIVE")]):
        assert time.monotonic() < deadline, "rank actors left after the Ray Data run"
        time.sleep(1)
