"""The latent cache: templates, the three levels, integrity, single flight and eviction."""

from __future__ import annotations

import hmac
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from cache.keys import BOUNDARY_FIELDS, ModelIdentity, boundary_key, embedding_key, result_key
from cache.store import LatentCache, pack
from cluster.pipeline import Pipeline
from contract.adapters import AdapterRef
from contract.request import GenerationRequest
from contract.settings import CacheSettings, Settings, StepCacheSettings
from contract.templates import DEFAULT_TEMPLATES, Template, TemplateRegistry
from stages.checkpoint import Checkpoint

LIMITS = {"embeddings": 2**24, "boundary": 2**26, "result": 2**24}


@pytest.fixture
def settings(wan22_dir, tmp_path) -> Settings:
    return Settings(model=wan22_dir, cache_dir=tmp_path / "t2v")


@pytest.fixture(scope="module")
def checkpoint(wan22_dir) -> Checkpoint:
    return Checkpoint(wan22_dir, Settings(model=wan22_dir))


def _pipeline(checkpoint: Checkpoint, directory) -> Pipeline:
    return Pipeline(checkpoint, LatentCache(directory, LIMITS))


def _template(settings, product: str, **fields) -> GenerationRequest:
    return GenerationRequest.build(
        settings, template="product_showcase", slots={"product": product}, num_inference_steps=6, **fields
    )


# -- templates ----------------------------------------------------------------------------


def test_registry_fills_templates_and_base_prompts():
    registry = TemplateRegistry.from_yaml(DEFAULT_TEMPLATES)
    showcase = registry.get("product_showcase")
    assert showcase.fill({"product": "red sneakers", "surface": "sand"}) == (
        "product showcase: red sneakers on sand, soft studio lighting"
    )
    assert showcase.base_prompt == "product showcase: a product on a table, soft light"
    assert {t["name"] for t in registry.public()} == {"product_showcase", "scene", "pet_portrait", "world", "world_zh"}
    world = registry.get("world_zh")  # the default model's world, in its own words
    assert world.fill({"color": "蓝色", "object": "箱子"}) == "蓝色的箱子在草地上弹跳"
    with pytest.raises(ValueError, match="text names"):
        Template(name="bad", text="{a} and {b}", slots={"a": {"base": "x"}})


def test_template_request_takes_template_seed_and_base_prompt(settings):
    request = _template(settings, "a lamp")
    assert request.prompt.startswith("product showcase: a lamp on")
    assert request.base_prompt == "product showcase: a product on a table, soft light"
    assert request.seed == 1234 and request.template_mode
    assert not GenerationRequest.build(
        settings, template="scene", slots={"subject": "a dog"}, cache=False
    ).template_mode


# -- the levels through the in-process pipeline -------------------------------------------


def test_template_hit_equals_a_fresh_template_mode_run(settings, checkpoint, tmp_path):
    warm = _pipeline(checkpoint, tmp_path / "warm")
    first = warm(_template(settings, "red sneakers"))
    assert first.cache["boundary"] is False
    hit = warm(_template(settings, "a teapot"))
    assert hit.cache["boundary"] is True
    fresh = _pipeline(checkpoint, tmp_path / "fresh")(_template(settings, "a teapot"))
    assert fresh.cache["boundary"] is False
    assert np.array_equal(hit.frames, fresh.frames)
    # Same template, other product: the detail phase really used the full prompt.
    assert not np.array_equal(hit.frames, first.frames)


def test_a_template_can_share_only_its_first_high_noise_steps(wan22_dir, tmp_path):
    """The first k steps come from the base prompt (cached), the rest of the phase from the request's prompt."""
    settings = Settings(model=wan22_dir, cache_dir=tmp_path / "t2v", cache={"template_shared_steps": 1})
    checkpoint = Checkpoint(wan22_dir, settings)
    warm = _pipeline(checkpoint, tmp_path / "warm")
    first = warm.denoise(_template(settings, "red sneakers"))
    assert first.hits["boundary"] is False
    hit = warm.denoise(_template(settings, "a teapot"))
    assert hit.hits["boundary"] is True
    high_steps = len(warm.plan(_template(settings, "a teapot")).high_noise_steps)
    assert hit.boundary.step == high_steps > 1  # the whole phase ran, one step of it shared
    fresh = _pipeline(checkpoint, tmp_path / "fresh").denoise(_template(settings, "a teapot"))
    assert torch.equal(hit.boundary.latents, fresh.boundary.latents)
    # Sharing all of it hands over the base prompt's boundary as it is: another latent.
    whole = Pipeline(Checkpoint(wan22_dir, Settings(model=wan22_dir)), LatentCache(tmp_path / "whole", LIMITS))
    assert not torch.equal(whole.denoise(_template(settings, "a teapot")).boundary.latents, hit.boundary.latents)
    # The key names the number of shared steps: a different k never reads this entry.
    request = _template(settings, "a teapot")
    assert boundary_key(checkpoint.identity, request, 1) != boundary_key(checkpoint.identity, request, 2)


def test_exact_repeat_returns_the_identical_mp4(settings, checkpoint, tmp_path):
    pipeline = _pipeline(checkpoint, tmp_path / "c")
    request = GenerationRequest.build(settings, prompt="a kite over the sea", seed=9, num_inference_steps=4)
    first = pipeline(request)
    again = pipeline(request)
    assert first.cache["result"] is False and again.cache == {"result": True}
    assert again.mp4 == first.mp4 and again.frames is None
    other_seed = pipeline(request.model_copy(update={"seed": 10}))
    assert other_seed.cache["result"] is False and other_seed.mp4 != first.mp4
    assert pipeline.cache.stats()["result"]["hits"] == 1


def test_corrupt_entries_are_detected_dropped_and_recomputed(settings, checkpoint, tmp_path):
    pipeline = _pipeline(checkpoint, tmp_path / "c")
    request = _template(settings, "a chair", cache=True)
    expected = pipeline(request).frames
    for f in (tmp_path / "c" / "boundary").rglob("*.val"):  # large values live in files
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncate
    again = pipeline(request.model_copy(update={"fps": 8}))  # not a result hit: the mp4 differs by fps
    stats = pipeline.cache.stats()["boundary"]
    assert again.cache["boundary"] is False, "a truncated entry was served"
    assert stats["corrupt"] == 1
    assert np.array_equal(again.frames, expected)


def test_bit_flip_in_a_small_entry_is_caught(tmp_path):
    cache = LatentCache(tmp_path, LIMITS)
    cache.put("embeddings", "k", torch.ones(4))
    raw = bytearray(cache.levels["embeddings"].get("k"))
    raw[-1] ^= 0xFF
    cache.levels["embeddings"].set("k", bytes(raw))
    assert cache.get("embeddings", "k") is None
    assert cache.stats()["embeddings"]["corrupt"] == 1 and "k" not in cache.levels["embeddings"]


class RunsCode:
    """Unpickles into a call: what a forged entry would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _forged(value, secret: bytes | None = None) -> bytes:
    """An entry in the store's own format with a valid checksum (or signature), whatever it holds."""
    return pack(value, secret) if secret else pack(value)


def test_an_entry_that_would_run_code_is_refused_counted_and_recomputed(tmp_path):
    marker = tmp_path / "code-ran"
    cache = LatentCache(tmp_path / "c", LIMITS)
    cache.levels["boundary"].set("k", _forged({"latents": RunsCode(marker)}))
    assert cache.get("boundary", "k") is None
    assert not marker.exists(), "reading a cache entry ran code"
    assert cache.stats()["boundary"]["corrupt"] == 1 and "k" not in cache.levels["boundary"]
    assert cache.get_or_compute("boundary", "k", lambda: {"step": 3}) == ({"step": 3}, False)


def test_a_shared_cache_signs_its_entries(tmp_path):
    signed = LatentCache(tmp_path / "c", LIMITS, secret=b"cluster secret")
    signed.put("embeddings", "mine", torch.ones(2))
    assert torch.equal(signed.get("embeddings", "mine"), torch.ones(2))
    # Written by someone without the secret: a valid checksum is not enough.
    signed.levels["embeddings"].set("theirs", _forged(torch.zeros(2)))
    signed.levels["embeddings"].set("other key", _forged(torch.zeros(2), secret=b"another secret"))
    assert signed.get("embeddings", "theirs") is None and signed.get("embeddings", "other key") is None
    assert signed.stats()["embeddings"]["corrupt"] == 2
    unsigned = LatentCache(tmp_path / "c", LIMITS)  # a replica without the secret refuses signed entries
    assert unsigned.get("embeddings", "mine") is None


def test_the_secret_comes_from_the_settings(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("T2V_CACHE__SECRET", "from the environment")
    cache = LatentCache.from_settings(Settings(cache_dir=tmp_path))
    cache.put("embeddings", "k", torch.ones(1))
    raw = cache.levels["embeddings"].get("k")
    assert raw[5:37] == hmac.digest(b"from the environment", raw[37:], "sha256")
    assert "from the environment" not in repr(Settings())  # a secret, not printed


# -- single flight and eviction -------------------------------------------------------------


def _compute_in_process(directory: str, log: str) -> None:
    cache = LatentCache(directory, LIMITS)

    def slow():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.5)
        return torch.arange(10)

    value, _ = cache.get_or_compute("boundary", "shared", slow)
    assert torch.equal(value, torch.arange(10))


def test_concurrent_requests_compute_once_across_processes(tmp_path):
    log = tmp_path / "computed.log"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_compute_in_process, args=(str(tmp_path / "c"), str(log))) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert len(log.read_text().splitlines()) == 1
    stats = LatentCache(tmp_path / "c", LIMITS).stats()["boundary"]
    assert (stats["misses"], stats["hits"]) == (1, 2)


def test_a_failed_computation_leaves_no_entry_and_frees_the_key(tmp_path):
    cache = LatentCache(tmp_path, LIMITS, lock_seconds=30)
    with pytest.raises(RuntimeError):
        cache.get_or_compute("boundary", "k", lambda: (_ for _ in ()).throw(RuntimeError("cancelled")))
    assert cache.get("boundary", "k") is None
    value, hit = cache.get_or_compute("boundary", "k", lambda: 7)  # not blocked by a stale lock
    assert (value, hit) == (7, False)


def test_threads_of_one_replica_compute_once(tmp_path):
    cache = LatentCache(tmp_path, LIMITS)
    calls = []
    results = []

    def compute():
        calls.append(1)
        time.sleep(0.5)
        return "latent"

    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("boundary", "x", compute)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(hit for _, hit in results) == [False, True, True, True]


def test_eviction_respects_the_size_limit(tmp_path):
    limit = 2_000_000
    cache = LatentCache(tmp_path, {**LIMITS, "result": limit})
    blob = os.urandom(50_000)
    for i in range(80):
        cache.put("result", f"video-{i}", blob + bytes([i]))
        cache.get("result", "video-0")  # kept warm: least recently *used* goes first
        assert cache.levels["result"].volume() <= limit
    stats = cache.stats()["result"]
    assert stats["evictions"] >= 40 and stats["entries"] == 80 - stats["evictions"]
    assert cache.get("result", "video-79") is not None and cache.get("result", "video-0") is not None
    assert cache.get("result", "video-1") is None


def test_cache_cli_stats_and_clear(tmp_path, wan22_dir):
    env = {**os.environ, "T2V_CACHE_DIR": str(tmp_path)}
    cache = LatentCache.from_settings(Settings(cache_dir=tmp_path))
    cache.put("result", "k", b"x" * 100)
    cache.get("result", "k")
    run = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "cache", "stats"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("result")).split()
    assert row[1:3] == ["1", "0"] and row[5] == "1"  # one hit, no miss, one entry
    run = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "cache", "clear"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and cache.get("result", "k") is None


def test_disabled_cache_is_none(tmp_path):
    assert LatentCache.from_settings(Settings(cache_dir=tmp_path, cache=CacheSettings(enabled=False))) is None


def test_closest_template_by_prompt_embedding(settings, checkpoint):
    from stages.text_encoder import TextEncoder

    encoder = TextEncoder(checkpoint)
    registry = settings.templates()
    name, similarity = encoder.closest_template("a brown animal sitting in a room.", registry)
    assert name == "pet_portrait" and similarity > 0.9
    _, unrelated = encoder.closest_template("一只橘猫在草地上奔跑", registry)
    assert unrelated < 0.7
    matched = GenerationRequest.build(settings, prompt="a brown animal sitting in a room.").matched_to(
        registry.get(name)
    )
    assert matched.template_mode and matched.seed == registry.get(name).seed


# -- keys: every input of a cached value -----------------------------------------------------


def _other(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 16
    if isinstance(value, str):
        return value + " (changed)"
    return 0.5 if value is None else None


def test_every_input_of_a_cached_value_is_in_its_key(wan22_dir):
    model = ModelIdentity("m", "r1", "torch.float32")
    request = GenerationRequest.build(Settings(), template="product_showcase", slots={"product": "a mug"}, seed=1)
    levels = {
        "embeddings": lambda m, r: embedding_key(m, "a mug"),
        "boundary": lambda m, r: boundary_key(m, r),
        "result": lambda m, r: result_key(m, r),
    }
    # Of the model and its runtime: which levels each one changes.
    changes = {
        "model": {"embeddings", "boundary", "result"},
        "revision": {"embeddings", "boundary", "result"},
        "dtype": {"embeddings", "boundary", "result"},
        "device": {"embeddings", "boundary", "result"},
        "step_cache": {"boundary", "result"},
        "boundary_ratio": {"boundary", "result"},
        "vae_dtype": {"result"},
        "max_sequence_length": {"embeddings", "result"},
        "template_shared_steps": {"result"},  # the boundary key takes the shared steps themselves
        "quantization": {"boundary", "result"},  # the high-noise expert's weights
        "quantization_2": {"result"},  # the low-noise expert's
    }
    assert set(changes) == {f.name for f in fields(ModelIdentity)}, "a new input needs its place in the keys"
    for name, changed_levels in changes.items():
        other = replace(model, **{name: _other(getattr(model, name))})
        changed = {level for level, key in levels.items() if key(other, request) != key(model, request)}
        assert changed == changed_levels, name
    # Of the request: the high-noise phase's inputs change the boundary key; any field the mp4.
    for name in GenerationRequest.model_fields:
        if name == "lora":  # the high-noise expert's adapters change the boundary; any adapter the mp4
            for experts, boundary in ((["high_noise"], True), (["low_noise"], False)):
                adapter = AdapterRef(name="style", scale=0.8, revision="r1", experts=experts)
                other = request.model_copy(update={"lora": [adapter]})
                assert (boundary_key(model, other) != boundary_key(model, request)) == boundary, experts
                assert result_key(model, other) != result_key(model, request), experts
            continue
        other = request.model_copy(update={name: _other(getattr(request, name))})
        assert (boundary_key(model, other) != boundary_key(model, request)) == (name in BOUNDARY_FIELDS), name
        if name in ("priority", "sampling_from"):  # which pool runs it, where a value came from: the same video
            assert result_key(model, other) == result_key(model, request)
        elif name not in ("preset", "template", "slots"):  # those only through the fields they fill in
            assert result_key(model, other) != result_key(model, request), name
    # And whose it is: one API key's results never answer another's requests.
    assert len({result_key(model, request, owner) for owner in (None, "key-a", "key-b")}) == 3

    # The checkpoint reports what the settings change.
    def identity(**settings) -> ModelIdentity:
        return Checkpoint(wan22_dir, Settings(model=wan22_dir, **settings)).identity

    plain = identity()
    assert plain.device == "cpu" and plain.step_cache == "none"
    assert identity(step_cache=StepCacheSettings(kind="first_block", options={"threshold": 0.05})).step_cache != "none"
    assert identity(step_cache=StepCacheSettings(kind="first_block", options={"threshold": 0.1})) != identity(
        step_cache=StepCacheSettings(kind="first_block", options={"threshold": 0.05})
    )
    assert identity(vae_dtype="bfloat16").vae_dtype != plain.vae_dtype
    assert identity(cache={"template_shared_steps": 2}).template_shared_steps == 2
