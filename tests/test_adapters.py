"""LoRA adapters: the store and its checks, each expert alone and both, scale 0, cache keys,
batching with mixed adapters, the LRU and turn-taking of one expert, and on Serve the 400s,
`GET /v1/adapters` and multiplexed routing across two replicas."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cache.keys import boundary_key, embedding_key, result_key
from cluster.pipeline import Pipeline
from contract.adapters import AdapterRef, adapter_set_id, adapters_for, parse_adapter_set_id
from contract.errors import RequestInvalid
from contract.experts import ExpertKind
from contract.settings import Settings
from deployments.http import form_fields
from stages.adapter_store import AdapterStore, ExpertAdapters
from stages.checkpoint import Checkpoint

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def write_adapter(store: Path, name: str, model_dir: Path, kinds: list[ExpertKind], seed: int, rank: int = 4) -> None:
    """A LoRA with random weights (strong enough to change every frame) in the store's layout."""
    from peft import LoraConfig, get_peft_model_state_dict

    checkpoint = Checkpoint(model_dir, Settings(model=model_dir))
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for kind in kinds:
        transformer = checkpoint.expert(kind)
        transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS), adapter_name="style")
        for name_, parameter in transformer.named_parameters():
            if "lora_" in name_:
                parameter.data = torch.randn(parameter.shape, generator=generator) * 0.3
        state = get_peft_model_state_dict(transformer, adapter_name="style")
        tensors |= {f"{kind.subfolder}.{k}": v.clone().contiguous() for k, v in state.items()}
    (store / name).mkdir(parents=True, exist_ok=True)
    save_file(tensors, store / name / "pytorch_lora_weights.safetensors")
    (store / name / "adapter.json").write_text(json.dumps({"description": f"random {name}"}))


@pytest.fixture(scope="module")
def store(wan22_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    write_adapter(root, "both", wan22_dir, list(ExpertKind), 1)
    write_adapter(root, "high", wan22_dir, [ExpertKind.HIGH_NOISE], 2)
    write_adapter(root, "low", wan22_dir, [ExpertKind.LOW_NOISE], 3)
    # one set of transformer. weights for both experts, as diffusers' load_into_transformer_2 loads it
    write_adapter(root, "shared", wan22_dir, [ExpertKind.HIGH_NOISE], 4)
    (root / "shared" / "adapter.json").write_text(json.dumps({"load_into_transformer_2": True}))
    # Made for a wider model: lora_A takes 5120 inputs where this one's attention takes 192.
    (root / "alien").mkdir()
    alien = {"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 5120)}
    save_file(
        alien | {"transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(5120, 4)},
        root / "alien" / "pytorch_lora_weights.safetensors",
    )
    (root / "broken").mkdir()
    (root / "broken" / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file")
    (root / "notes").mkdir()  # a folder without weights is not an adapter
    return root


@pytest.fixture(scope="module")
def pipeline(wan22_dir, store, tmp_path_factory) -> Pipeline:
    settings = Settings(
        model=wan22_dir,
        cache_dir=tmp_path_factory.mktemp("cache"),
        adapters={"uri": str(store)},
        cache={"enabled": False},
    )
    return Pipeline.from_settings(settings)


def _request(pipeline: Pipeline, lora=None, **fields):
    prompt = {} if "template" in fields else {"prompt": "a red ball bounces on grass"}
    fields = {**prompt, "seed": 1, "steps": 6, **fields}
    return pipeline.validator.body({**fields, **({"lora": lora} if lora is not None else {})})


def test_the_store_lists_each_adapter_with_its_experts_and_the_reason_one_does_not_fit(pipeline):
    listing = pipeline.validator.adapters.listing()
    assert sorted(listing) == ["alien", "both", "broken", "high", "low", "shared"]
    assert listing["shared"].experts == ("high_noise", "low_noise") and listing["shared"].shared
    assert listing["both"].experts == ("high_noise", "low_noise") and listing["both"].rank == 4
    assert listing["high"].experts == ("high_noise",) and listing["low"].experts == ("low_noise",)
    assert listing["both"].public()["description"] == "random both" and listing["both"].public()["compatible"]
    assert "5120" in listing["alien"].problem and "another architecture" in listing["alien"].problem
    assert "unreadable" in listing["broken"].problem


def _safetensors(header) -> bytes:
    data = json.dumps(header).encode()
    return len(data).to_bytes(8, "little") + data


def test_one_bad_folder_is_listed_with_its_reason_and_the_others_serve(wan22_dir, store, tmp_path):
    """A weights file cut short or empty (mid-copy), headers that are not safetensors', shapes
    that are not sizes, ranks that disagree, an adapter.json that is a folder: each is listed
    with a reason that names no path, and a request naming it is refused by field."""
    import shutil

    from stages.validation import RequestValidator

    root = tmp_path / "store"
    shutil.copytree(store / "both", root / "good")
    weights = (store / "both" / "pytorch_lora_weights.safetensors").read_bytes()
    key = "transformer.blocks.0.attn1.to_q"
    bad = {
        "empty": b"",
        "cut": weights[: len(weights) // 2],
        "short": weights[:5],
        "listhdr": _safetensors(["a", 8]),
        "notobj": _safetensors({f"{key}.lora_A.weight": 8}),
        "words": _safetensors({f"{key}.lora_A.weight": {"dtype": "F32", "shape": ["a", 192], "data_offsets": [0, 0]}}),
        "ranks": _safetensors(
            {
                f"{key}.lora_A.weight": {"dtype": "F32", "shape": [4, 192], "data_offsets": [0, 0]},
                f"{key}.lora_B.weight": {"dtype": "F32", "shape": [192, 8], "data_offsets": [0, 0]},
            }
        ),
    }
    for name, data in bad.items():
        (root / name).mkdir()
        (root / name / "pytorch_lora_weights.safetensors").write_bytes(data)
    shutil.copytree(store / "both", root / "dirnote")
    (root / "dirnote" / "adapter.json").unlink()
    (root / "dirnote" / "adapter.json").mkdir()

    settings = Settings(model=wan22_dir, adapters={"uri": str(root)}, cache={"enabled": False})
    checkpoint = Checkpoint(wan22_dir, settings)
    listing = AdapterStore(root, checkpoint).listing()
    assert sorted(listing) == sorted([*bad, "dirnote", "good"])
    assert listing["good"].problem is None and listing["good"].experts == ("high_noise", "low_noise")
    for name in (*bad, "dirnote"):
        problem = listing[name].problem
        assert problem and str(tmp_path) not in problem and "/" not in problem, (name, problem)
    assert "rank 4" in listing["ranks"].problem and "rank 8" in listing["ranks"].problem
    assert "adapter.json" in listing["dirnote"].problem

    validator = RequestValidator(settings, checkpoint)
    body = {"prompt": "a red ball bounces on grass", "seed": 1, "steps": 6}
    assert validator.body({**body, "lora": [{"name": "good"}]}).lora[0].name == "good"
    for name in (*bad, "dirnote"):
        with pytest.raises(RequestInvalid) as refused:
            validator.body({**body, "lora": [{"name": name}]})
        assert refused.value.field == "lora.0.name" and "does not fit" in refused.value.message, name


def test_the_listing_answers_at_once_and_is_read_again_in_the_background(wan22_dir, store, tmp_path):
    """Only the first call reads the store: a stale listing answers (a request never waits on
    an object store's round trips) and starts a re-read whose result the next calls see."""
    import shutil

    root = tmp_path / "store"
    shutil.copytree(store / "both", root / "good")
    adapters = AdapterStore(root, Checkpoint(wan22_dir, Settings(model=wan22_dir)), listing_seconds=0)
    first = adapters.listing()
    assert list(first) == ["good"]
    shutil.copytree(store / "high", root / "new")
    assert adapters.listing() is first  # stale: answered as it was, re-read meanwhile
    deadline = time.monotonic() + 30
    while "new" not in adapters.listing():
        assert time.monotonic() < deadline, "the re-read never landed"
        time.sleep(0.05)
    assert adapters.listing()["new"].experts == ("high_noise",)

    def reread() -> None:
        deadline = time.monotonic() + 30
        while adapters._refreshing:
            assert time.monotonic() < deadline, "the re-read never ended"
            time.sleep(0.05)

    # the store cannot be listed (down, or its path is no folder now): the last listing stands
    reread()
    shutil.move(root, tmp_path / "away")
    root.write_text("not a folder")
    adapters.listing()  # stale: starts a re-read, which fails
    reread()
    assert sorted(adapters.listing()) == ["good", "new"]


def test_the_low_noise_expert_only_adapter_does_not_fit_a_one_transformer_model(wan21_dir, store):
    checkpoint = Checkpoint(wan21_dir, Settings(model=wan21_dir))
    listing = AdapterStore(store, checkpoint).listing()
    assert listing["high"].problem is None and listing["shared"].problem is None
    assert listing["shared"].experts == ("high_noise",)  # no second transformer to load it into
    assert "one transformer" in listing["low"].problem and "one transformer" in listing["both"].problem


@pytest.mark.parametrize(
    ("lora", "field", "words"),
    [
        ([{"name": "nope"}], "lora.0.name", "unknown adapter 'nope'; known: alien, both, broken, high, low, shared"),
        ([{"name": "alien"}], "lora.0.name", "does not fit model"),
        ([{"name": "broken"}], "lora.0.name", "unreadable"),
        ([{"name": "both", "scale": 2.5}], "lora.0.scale", "between -2 and 2"),
        ([{"name": "both"}, {"name": "both"}], "lora", "each adapter at most once"),
        ([{"name": "../etc"}], "lora.0.name", "should match pattern"),
        ([{"name": "both", "scale": "big"}], "lora.0.scale", "valid number"),
        ([{"scale": 1}], "lora.0.name", "required"),
        ("both", "lora", "valid list"),
    ],
)
def test_a_bad_adapter_is_refused_naming_it_before_any_compute(pipeline, lora, field, words):
    with pytest.raises(RequestInvalid) as refused:
        _request(pipeline, lora)
    assert refused.value.field == field, refused.value.errors
    assert words in refused.value.message


def test_each_expert_alone_and_both_change_their_phase_and_scale_0_gives_the_base_model(pipeline):
    base = pipeline.denoise(_request(pipeline))
    runs = {name: pipeline.denoise(_request(pipeline, [{"name": name}])) for name in ("high", "low", "both")}
    assert not torch.equal(runs["high"].boundary.latents, base.boundary.latents)  # layout and motion
    assert torch.equal(runs["low"].boundary.latents, base.boundary.latents)  # the low-noise expert's alone
    assert not torch.equal(runs["low"].state.latents, base.state.latents)
    assert not torch.equal(runs["both"].boundary.latents, base.boundary.latents)
    # both = high on the high-noise expert + low on the low-noise one: the same file format, either part
    both_parts = pipeline.denoise(_request(pipeline, [{"name": "high"}, {"name": "low"}]))
    assert not torch.equal(both_parts.state.latents, runs["high"].state.latents)
    # load_into_transformer_2: the high-noise weights in the low-noise expert too
    shared = pipeline.denoise(_request(pipeline, [{"name": "shared"}]))
    assert not torch.equal(shared.boundary.latents, base.boundary.latents)
    shared_low = pipeline.low_noise_expert.phase(
        _request(pipeline, [{"name": "shared"}]), base.embeddings, base.boundary
    ).latents
    assert not torch.equal(shared_low, base.state.latents)
    zero = pipeline.denoise(_request(pipeline, [{"name": "both", "scale": 0}]))
    assert torch.equal(zero.state.latents, base.state.latents)
    half = pipeline.denoise(_request(pipeline, [{"name": "both", "scale": 0.5}]))
    distance = lambda run: float((run.state.latents - base.state.latents).abs().mean())  # noqa: E731
    assert 0 < distance(half) < distance(runs["both"])
    # and after all that, a request without adapters is the base model again
    assert torch.equal(pipeline.denoise(_request(pipeline)).state.latents, base.state.latents)


def test_the_shipped_studio_adapter_paints_the_studio_through_the_served_stages(tmp_path):
    """The trained adapter, by the stage classes Serve wraps: the backdrop it was trained on at
    scale 1, the base model's frames at scale 0, the asked-for colour kept."""
    from world.reading import read_clip
    from world.styles import style_strength

    trained = Pipeline.from_settings(Settings(cache_dir=tmp_path, cache={"enabled": False}))
    for seed in (0, 1):
        fields = {"prompt": "a red ball rolls to the right on the grass", "seed": seed}
        base = trained(trained.validator.body(fields)).frames
        studio = trained(trained.validator.body({**fields, "lora": [{"name": "studio"}]})).frames
        zero = trained(trained.validator.body({**fields, "lora": [{"name": "studio", "scale": 0}]})).frames
        assert style_strength(studio) > 0.5 > 0.05 > style_strength(base), seed
        assert np.array_equal(zero, base)
        assert read_clip(studio).color == "red"


def test_adapters_and_their_scales_are_part_of_the_keys_they_affect(pipeline):
    identity = pipeline.checkpoint.identity
    plain = _request(pipeline, template="product_showcase", slots={"product": "a mug", "surface": "a desk"})
    high = plain.model_copy(update={"lora": _request(pipeline, [{"name": "high"}]).lora})
    high_half = plain.model_copy(update={"lora": _request(pipeline, [{"name": "high", "scale": 0.5}]).lora})
    low = plain.model_copy(update={"lora": _request(pipeline, [{"name": "low"}]).lora})
    boundaries = {boundary_key(identity, r) for r in (plain, high, high_half)}
    assert len(boundaries) == 3
    assert boundary_key(identity, low) == boundary_key(identity, plain)  # the high-noise phase is the base's
    assert len({result_key(identity, r) for r in (plain, high, high_half, low)}) == 4
    # a replaced adapter (new revision) is another adapter
    replaced = high.lora[0].model_copy(update={"revision": "0" * 16})
    assert boundary_key(identity, high.model_copy(update={"lora": [replaced]})) != boundary_key(identity, high)
    assert embedding_key(identity, plain.prompt)  # the text encoder has no adapters: its key is unchanged


def test_a_template_shares_its_high_noise_phase_only_with_the_same_high_noise_adapters(wan22_dir, store, tmp_path):
    settings = Settings(model=wan22_dir, cache_dir=tmp_path / "cache", adapters={"uri": str(store)})
    pipeline = Pipeline.from_settings(settings)
    template = {"template": "product_showcase", "steps": 6}
    first = pipeline.denoise(_request(pipeline, [{"name": "high"}], slots={"product": "a mug"}, **template))
    second = pipeline.denoise(_request(pipeline, [{"name": "high"}], slots={"product": "a teapot"}, **template))
    other = pipeline.denoise(_request(pipeline, None, slots={"product": "a teapot"}, **template))
    low_only = pipeline.denoise(_request(pipeline, [{"name": "low"}], slots={"product": "a lamp"}, **template))
    assert (first.hits["boundary"], second.hits["boundary"], other.hits["boundary"]) == (False, True, False)
    assert torch.equal(first.boundary.latents, second.boundary.latents)
    assert not torch.equal(other.boundary.latents, second.boundary.latents)
    assert low_only.hits["boundary"] is True  # the base's boundary: its adapter is the low-noise expert's


def test_the_multiplexed_model_id_names_one_experts_adapters_and_their_versions(pipeline):
    request = _request(pipeline, [{"name": "low", "scale": 0.3}, {"name": "both"}, {"name": "high"}])
    high = adapter_set_id(adapters_for(request.lora, ExpertKind.HIGH_NOISE))
    low = adapter_set_id(adapters_for(request.lora, ExpertKind.LOW_NOISE))
    revisions = {a.name: a.revision for a in request.lora}
    assert high == f"both@{revisions['both']}+high@{revisions['high']}"
    assert low == f"both@{revisions['both']}+low@{revisions['low']}"  # scales are no part of it
    assert parse_adapter_set_id(low) == [("both", revisions["both"]), ("low", revisions["low"])]
    assert adapter_set_id(adapters_for(_request(pipeline).lora, ExpertKind.HIGH_NOISE)) == ""


def test_an_expert_keeps_at_most_max_loaded_adapters_least_recently_used_out_first(wan22_dir, store):
    checkpoint = Checkpoint(wan22_dir, Settings(model=wan22_dir))
    adapters_store = AdapterStore(store, checkpoint)
    transformer = checkpoint.expert(ExpertKind.LOW_NOISE)
    adapters = ExpertAdapters(transformer, ExpertKind.LOW_NOISE, adapters_store, max_loaded=2)
    listing = adapters_store.listing()
    pair = lambda name: (name, listing[name].revision)  # noqa: E731
    assert adapters.load([pair("both")]) is False and adapters.load([pair("low")]) is False
    assert adapters.load([pair("both")]) is True  # a hit, and now the most recently used
    adapters.load([pair("high")])  # "high" has no low-noise weights: peft loads nothing, the LRU counts it
    assert list(adapters.loaded) == ["both", "high"]  # "low" was the least recently used
    adapters.unload(["both"])
    assert list(adapters.loaded) == ["high"] and len(adapters.load_seconds) == 3


def test_phases_with_different_adapters_take_turns_and_same_ones_run_together(wan22_dir, store):
    checkpoint = Checkpoint(wan22_dir, Settings(model=wan22_dir))
    adapters = ExpertAdapters(
        checkpoint.expert(ExpertKind.HIGH_NOISE), ExpertKind.HIGH_NOISE, AdapterStore(store, checkpoint), 4
    )
    listing = AdapterStore(store, checkpoint).listing()
    ref = lambda name, scale=1.0: AdapterRef(name=name, scale=scale, revision=listing[name].revision)  # noqa: E731
    inside: list[tuple] = []
    seen: list[list[tuple]] = []  # who was inside, each time one entered
    lock = threading.Lock()
    release = threading.Event()

    def phase(refs):
        with adapters.active(refs):
            key = (refs[0].name, refs[0].scale)
            with lock:
                inside.append(key)
                seen.append(list(inside))
            release.wait(30)
            with lock:
                inside.remove(key)

    def until(condition):
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.01)

    def start(refs, condition):
        thread = threading.Thread(target=phase, args=(refs,))
        thread.start()
        until(condition)
        return thread

    waiting = lambda n: len(adapters._queue) == n  # noqa: E731
    # two phases with "both" at 1.0 run side by side
    threads = [start([ref("both")], lambda: len(inside) == 1)]
    threads.append(start([ref("both")], lambda: len(inside) == 2))
    # "both" at 0.5 and "high" wait for them; a third "both" at 1.0 must not cut in ahead of those two
    threads += [start([ref("both", 0.5)], lambda: waiting(1)), start([ref("high")], lambda: waiting(2))]
    threads.append(start([ref("both")], lambda: waiting(3)))
    assert len(inside) == 2
    release.set()
    for thread in threads:
        thread.join()
    assert all(len(set(group)) == 1 for group in seen), seen  # never two sets at once
    order = [group[-1] for group in seen]
    assert order[:2] == [("both", 1.0)] * 2 and len(seen[1]) == 2, seen
    assert order.index(("both", 0.5)) < order.index(("both", 1.0), 2) and order.index(("high", 1.0)) < order.index(
        ("both", 1.0), 2
    ), order


def test_batching_groups_only_requests_with_the_same_adapters(wan22_dir, store, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    settings = Settings(
        model=wan22_dir,
        cache_dir=tmp_path / "cache",
        adapters={"uri": str(store)},
        cache={"enabled": False},
        batching={"enabled": True, "max_batch_size": 4, "max_wait_ms": 200},
    )
    batched = Pipeline(Checkpoint.from_settings(settings), None, batching=True)
    alone = Pipeline(Checkpoint.from_settings(settings), None)
    loras = [[{"name": "high"}], [{"name": "high"}], None, None, [{"name": "high", "scale": 0.5}], [{"name": "both"}]]
    requests = [_request(alone, lora, seed=i) for i, lora in enumerate(loras)]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: batched.denoise(r).state.latents, requests))
    for request, latents in zip(requests, together, strict=True):
        assert torch.allclose(latents, alone.denoise(request).state.latents, atol=1e-4), request.lora
    sizes = batched.high_noise_expert.batcher.batch_sizes
    assert max(sizes) == 2  # the two "high" at scale 1 together, or the two without: never more
    assert max(batched.low_noise_expert.batcher.batch_sizes) <= 4  # low-noise: "high" changes nothing there


def test_the_openai_sdks_form_encoding_of_adapters_reads_as_the_json_body():
    # what openai's SDK sends for extra_body={"lora": [{...}, {...}], "slots": {...}}
    form = [("prompt", "p"), ("lora[][name]", "a"), ("lora[][scale]", "0.8"), ("lora[][name]", "b")]
    assert form_fields(form + [("slots[product]", "mug")]) == {
        "prompt": "p",
        "lora": [{"name": "a", "scale": "0.8"}, {"name": "b"}],
        "slots": {"product": "mug"},
    }


# -- on Serve ------------------------------------------------------------------------------------


def test_get_adapters_lists_the_shipped_test_adapters_and_a_bad_one_is_a_400(serve_app):
    with httpx.Client(base_url=serve_app.url, headers=serve_app.headers, timeout=60) as http:
        listed = http.get("/v1/adapters").raise_for_status().json()
        names = [a["id"] for a in listed["data"]]
        assert listed["object"] == "list" and "studio" in names
        studio = next(a for a in listed["data"] if a["id"] == "studio")
        assert studio["experts"] == ["high_noise", "low_noise"] and studio["compatible"]
        refused = http.post("/v1/videos", json={"prompt": "a ball", "lora": [{"name": "nope", "scale": 1}]})
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["param"] == "lora.0.name" and "unknown adapter 'nope'" in error["message"]
        assert error["code"] == "adapter_not_found"
        bad_scale = http.post("/v1/videos", json={"prompt": "a ball", "lora": [{"name": "studio", "scale": 9}]})
        assert bad_scale.status_code == 400 and bad_scale.json()["error"]["param"] == "lora.0.scale"


def test_requests_with_an_adapter_go_to_the_replica_that_holds_it(serve_app, store, tmp_path):
    """Two high-noise replicas on a second app of the session's cluster: after the first request
    with an adapter, every request with it lands on the replica that loaded it (Serve model
    multiplexing), and the expert's adapter metrics count one load and the rest as hits."""
    from ray import serve

    from cluster.app import bind_app

    name = "t2v-adapters"
    deployments = {n: d.model_copy(update={"num_cpus": 0.01}) for n, d in serve_app.settings.deployments.items()}
    high = ExpertKind.HIGH_NOISE.deployment
    deployments[high] = deployments[high].model_copy(update={"min_replicas": 2, "max_replicas": 2})
    serving = serve_app.settings.serving.model_copy(update={"output_uri": str(tmp_path / "outputs")})
    settings = serve_app.settings.model_copy(
        update={
            "cache_dir": tmp_path / "cache",
            "serving": serving,
            "deployments": deployments,
            "adapters": serve_app.settings.adapters.model_copy(update={"uri": str(store), "max_loaded": 1}),
        }
    )
    serve.run(bind_app(settings), name=name, route_prefix="/adapters")
    try:
        with httpx.Client(base_url=f"{serve_app.url}/adapters", headers=serve_app.headers, timeout=120) as http:

            def high_noise_replica(lora, seed: int) -> str:
                body = {"prompt": "a ball", "seed": seed, "steps": 2, "cache": False, "lora": lora}
                job_id = http.post("/v1/videos", json=body).raise_for_status().json()["id"]
                deadline = time.monotonic() + 120
                while (job := http.get(f"/v1/videos/{job_id}").json())["status"] in ("queued", "in_progress"):
                    assert time.monotonic() < deadline, job
                    time.sleep(0.3)
                assert job["status"] == "completed", job["error"]
                return next(s["replica"] for s in job["trace"] if s["stage"] == "high_noise")

            both = [high_noise_replica([{"name": "both"}], i) for i in range(4)]
            high = [high_noise_replica([{"name": "high", "scale": 0.5}], 10 + i) for i in range(4)]
            again = [high_noise_replica([{"name": "both"}], 20 + i) for i in range(2)]
        assert len(set(both)) == 1 and len(set(high)) == 1, (both, high)
        # max_loaded=1: one set per replica, so the second adapter went to the other replica
        assert set(both) != set(high) and set(again) == set(both), (both, high, again)
    finally:
        serve.delete(name)


def test_the_adapter_benchmark_measures_each_case_side_by_side(capsys):
    from bench import adapters as bench

    result = bench.main(["--repeats", "1", "--steps", "4"])
    assert set(result["phase_seconds"]) == {
        "no adapter, expert never adapted",
        "no adapter, 2 adapters loaded",
        "studio",
        "studio + studio-high x0.5",
        "studio, same set back to back",
        "studio x1 / x0.5 taking turns",
    }
    assert result["vs_plain"]["no adapter, expert never adapted"] == 1.0 and result["load_seconds"] > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["adapters"]["studio"]["rank"] == 8
