"""The text's padded length is the checkpoint's own (its tokenizer's `model_max_length`), so that the
pipeline, the text encoder, the cache keys, the prompt limit and diffusers' WanPipeline agree;
a setting overrides it; the default model reads 64 tokens, a Wan2.2 checkpoint keeps 512."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from diffusers import WanPipeline

from cache.keys import embedding_key
from cluster.pipeline import Pipeline, wan_pipeline_arguments
from contract.errors import RequestInvalid
from contract.request import GenerationRequest
from contract.settings import Settings
from stages.checkpoint import Checkpoint
from stages.default_model import MAX_SEQUENCE_LENGTH
from stages.text_encoder import TextEncoder
from stages.validation import RequestValidator


def with_tokenizer_limit(model, root, limit):
    """A copy of `model` whose tokenizer says `limit`."""
    copy = root / "model"
    shutil.copytree(model, copy)
    config = copy / "tokenizer" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": limit}))
    return copy


def test_the_length_is_the_tokenizer_s_unless_set(wan22_dir, tmp_path_factory):
    assert MAX_SEQUENCE_LENGTH == 64
    assert Checkpoint(wan22_dir, Settings(model=wan22_dir)).max_sequence_length == 64
    assert Checkpoint(wan22_dir, Settings(model=wan22_dir, max_sequence_length=128)).max_sequence_length == 128
    # as a real Wan2.2 checkpoint's umT5 tokenizer says
    wan = with_tokenizer_limit(wan22_dir, tmp_path_factory.mktemp("wan"), 512)
    assert Checkpoint(wan, Settings(model=wan)).max_sequence_length == 512
    # a tokenizer with no limit stores transformers' huge sentinel: WanPipeline's 512 then
    unlimited = with_tokenizer_limit(wan22_dir, tmp_path_factory.mktemp("unlimited"), int(1e30))
    assert Checkpoint(unlimited, Settings(model=unlimited)).max_sequence_length == 512


def test_the_default_model_pads_to_its_length_and_makes_what_wan_pipeline_makes(wan22_dir, tmp_path):
    settings = Settings(model=wan22_dir, cache_dir=tmp_path / "cache")
    checkpoint = Checkpoint.from_settings(settings)
    assert TextEncoder(checkpoint).embed("a red ball bouncing").shape[1] == 64

    request = GenerationRequest.build(settings, prompt="a red ball bouncing on a table", seed=7, steps=4)
    frames = Pipeline(checkpoint).generate_frames(request)
    pipe = WanPipeline.from_pretrained(wan22_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(**wan_pipeline_arguments(request, checkpoint)).frames[0]
    assert np.abs(frames - expected).max() <= 1e-4

    # the cache keys of embeddings made at another length never meet
    long = Checkpoint(wan22_dir, settings.model_copy(update={"max_sequence_length": 512}))
    assert embedding_key(checkpoint.identity, "a red ball") != embedding_key(long.identity, "a red ball")


def test_a_prompt_longer_than_the_model_reads_is_refused_by_name(wan22_dir, tmp_path):
    settings = Settings(model=wan22_dir, cache_dir=tmp_path / "cache")
    validator = RequestValidator(settings, Checkpoint.from_settings(settings))
    assert validator.request(prompt="a red ball bouncing").prompt == "a red ball bouncing"
    with pytest.raises(RequestInvalid, match="prompt must be at most 64 tokens"):
        validator.request(prompt=" ".join(["a red ball bouncing on a wooden table"] * 8))
