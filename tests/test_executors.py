"""One stage list, three executors: in process (`Pipeline`), Ray Serve (the app over HTTP) and
Ray Data (`--engine data`) make the same video for the same request, frame for frame and signed, with the
same repair decisions, attempts and cache levels, for a plain prompt, a template, a repaired
request and an adapter request; a preview's final is the same in process and on Serve (Ray Data
refuses it by name: a shot's preview lives in the app's store). The Ray Data run's pools export
the metrics the app's deployments do, read back from a real Prometheus."""

from __future__ import annotations

import hashlib
import io
import secrets

import av
import httpx
import pytest

from cluster.pipeline import Pipeline
from cluster.prompt_table import rows_from_records
from stages.content_credentials import read_credentials
from tests.prometheus_server import query, total, wait_for

# A word of this session's own: the serve app's caches (shared by every test) know none of these prompts.
FRESH = secrets.token_hex(3)
SEED = secrets.randbelow(2**30)
CASES = {
    "plain": {"prompt": f"a red ball bouncing on grass {FRESH}", "seed": 11},
    "template": {"template": "product_showcase", "slots": {"product": f"a mug {FRESH}"}, "seed": SEED},
    # its boundary (the shared high-noise phase) now comes from the cache
    "template-again": {"template": "product_showcase", "slots": {"product": f"a lamp {FRESH}"}, "seed": SEED},
    "repaired": {
        "prompt": f"a blue box falling on sand {FRESH}",
        "seed": 3,
        "min_physics_score": 1.0,
        "max_retries": 2,
    },
    "adapter": {"prompt": f"a green ball rolling {FRESH}", "seed": 8, "lora": [{"name": "studio"}]},
}


def digest(mp4: bytes) -> str:
    """The video's decoded frames (its bytes differ run to run: each signed manifest is new)."""
    with av.open(io.BytesIO(mp4)) as container:
        return hashlib.sha256(
            b"".join(f.to_ndarray(format="rgb24").tobytes() for f in container.decode(video=0))
        ).hexdigest()


def summary(mp4: bytes, physics: dict, cache: dict) -> dict:
    """What must agree: the video's frames, its score, every attempt, the cache levels hit, and
    that it carries content credentials."""
    attempts = [(a["attempt"], a["seed"], a["score"]) for a in physics["attempts"]]
    credentials = read_credentials(mp4)
    return {
        "signed": credentials is not None and credentials.generated,
        "mp4": digest(mp4),
        "score": physics["score"],
        "attempts": attempts,
        "hits": sorted(level for level, hit in cache.items() if hit),
    }


@pytest.fixture(scope="module")
def in_process(settings, tmp_path_factory) -> dict[str, dict]:
    own = settings.model_copy(update={"cache_dir": tmp_path_factory.mktemp("in-process-cache")})
    pipeline = Pipeline.from_settings(own)
    results = {}
    for name, fields in CASES.items():
        result = pipeline(pipeline.validator.body({**fields, "steps": 4}))
        results[name] = summary(result.mp4, result.physics.model_dump(), result.cache)
    preview = pipeline(pipeline.validator.body({**CASES["plain"], "steps": 4, "cache": False}))
    final = pipeline.final_of(preview, steps=4)
    results["final"] = summary(final.mp4, final.physics.model_dump(), final.cache)
    return results


@pytest.fixture(scope="module")
def on_serve(serve_app) -> dict[str, dict]:
    results = {}
    with httpx.Client(base_url=serve_app.url, headers=serve_app.headers, timeout=300) as http:

        def make(body: dict) -> tuple[str, dict]:
            response = http.post("/v1/videos/sync", json=body)
            assert response.status_code == 200, response.text
            job = http.get(f"/v1/videos/{response.headers['X-Video-Id']}").json()
            return job["id"], summary(response.content, job["physics"], job["cache"])

        for name, fields in CASES.items():
            _, results[name] = make({**fields, "steps": 4})
        preview_id, _ = make({**CASES["plain"], "steps": 4, "cache": False})  # made again, not a cached copy
        _, results["final"] = make({"from": preview_id, "steps": 4})
    return results


MADE_ON_RAY_DATA = 'sum(ray_t2v_physics_score_count{engine="data"})'  # one score per video a pool kept
STAGES = 'sum by (stage) (ray_t2v_stage_duration_seconds_count{stage=~"encode|high_noise|low_noise|decode"})'


def by_stage(result: list[dict]) -> dict[str, float]:
    return {r["metric"]["stage"]: float(r["value"][1]) for r in result}


def counted(prometheus: str) -> dict[str, float]:
    """Videos the Ray Data pools made and stages they ran, as Prometheus has them now."""
    return {"made": total(query(prometheus, MADE_ON_RAY_DATA)), **by_stage(query(prometheus, STAGES))}


@pytest.fixture(scope="module")
def counted_before(prometheus) -> dict[str, float]:
    return counted(prometheus)


@pytest.fixture(scope="module")
def on_ray_data(serve_app, settings, tmp_path_factory, counted_before) -> dict[str, dict]:
    """The Ray Data executor's pools on the rows, each finished row's state read back (after
    Prometheus counted what came before: the run's metrics are checked below)."""
    from cluster.data_engine import DataEngine, _unpack

    root = tmp_path_factory.mktemp("ray-data")
    engine = DataEngine(settings.model_copy(update={"cache_dir": root / "cache"}))
    records = [{"id": name, **fields, "steps": 4} for name, fields in CASES.items()]
    records.append({"id": "final", "from": "video_" + "0" * 32, "steps": 4})
    rows, _ = rows_from_records(records)
    finished = dict(engine.stream(rows, str(root / "out")))
    results = {}
    for name in CASES:
        row = finished[name]
        assert row["error_code"] is None, row["error"]
        state = _unpack(row["state"])
        with open(row["output"], "rb") as mp4:
            results[name] = summary(mp4.read(), state.video.physics.model_dump(), state.cache)
    results["final"] = finished["final"]
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_every_executor_makes_the_same_video(case, in_process, on_serve, on_ray_data):
    assert on_serve[case] == in_process[case]
    assert on_ray_data[case] == in_process[case]


def test_the_repair_decisions_are_the_rule_s_and_the_template_shares_its_boundary(in_process):
    """What the equality above is about: the repaired request ran all its attempts (a minimum of
    1.0 is never met) and kept the best; the template computed its boundary (a miss, recorded)."""
    repaired = in_process["repaired"]
    assert [a[0] for a in repaired["attempts"]] == [0, 1, 2]
    assert repaired["score"] == max(a[2] for a in repaired["attempts"])
    assert in_process["plain"]["attempts"] == [(0, 11, in_process["plain"]["score"])]
    assert "boundary" not in in_process["template"]["hits"] and "boundary" in in_process["template-again"]["hits"]


def test_a_preview_s_final_is_the_same_in_process_and_on_serve_and_ray_data_refuses_it(
    in_process, on_serve, on_ray_data
):
    assert on_serve["final"] == in_process["final"]
    refused = on_ray_data["final"]
    assert refused["error_code"] == "invalid_request" and "finals of shots run on --engine serve" in refused["error"]


def test_the_ray_data_pools_export_what_the_deployments_do(prometheus, counted_before, on_ray_data):
    """Stage latency per stage and one physics score per video kept (`engine="data"`, apart from
    the app's jobs), from the pools' actors through Ray's metrics agent, as the app's replicas do."""
    made = len(CASES)  # none of them from a result cache: the run has a cache of its own
    wait_for(prometheus, MADE_ON_RAY_DATA, lambda r: total(r) >= counted_before["made"] + made)

    def every_stage_counted(result: list[dict]) -> bool:
        counts = by_stage(result)
        stages = ("encode", "high_noise", "low_noise", "decode")
        return all(counts.get(s, 0) >= counted_before.get(s, 0) + made for s in stages)

    wait_for(prometheus, STAGES, every_stage_counted)
