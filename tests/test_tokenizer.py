"""The default model's tokenizer handles any language (byte fallback, never all-<unk>)."""

from __future__ import annotations

import pytest

from stages.checkpoint import Checkpoint


@pytest.fixture(scope="module")
def tokenizer(wan22_dir):
    return Checkpoint(wan22_dir).tokenizer()


@pytest.mark.parametrize(
    "prompt",
    ["a cat runs on the grass", "一只橘猫在草地上奔跑", "Кошка бежит по траве", "猫が草の上を走る 🐈", "قطة تجري"],
)
def test_no_unknown_tokens_and_lossless(tokenizer, prompt):
    ids = tokenizer(prompt).input_ids
    assert tokenizer.unk_token_id not in ids
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == prompt


def test_different_prompts_differ(tokenizer):
    assert tokenizer("一只橘猫").input_ids != tokenizer("一只黑猫").input_ids
