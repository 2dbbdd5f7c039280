"""The prompt filter: categories in English and Chinese, before any compute, for every entry point."""

from __future__ import annotations

import pytest

from contract.errors import RequestInvalid
from contract.settings import SafetySettings, Settings
from deployments.checkpoint import Checkpoint
from deployments.http import ApiError
from deployments.safety import ContentFilter
from deployments.validation import RequestValidator


@pytest.fixture(scope="module")
def content_filter(settings) -> ContentFilter:
    return ContentFilter.from_settings(settings)


def validator(settings: Settings) -> RequestValidator:
    return RequestValidator(settings, Checkpoint.from_settings(settings))


@pytest.mark.parametrize(
    "prompt, category",
    [
        ("a BEHEADING in the town square", "graphic_violence"),
        ("ｂｅｈｅａｄｉｎｇ scene", "graphic_violence"),  # full-width letters fold to ASCII
        ("一个人被斩首的场景", "graphic_violence"),
        ("step-by-step bomb-making at home", "terrorism"),
        ("教程：制造炸弹", "terrorism"),
        ("child porn", "sexual_minors"),
    ],
)
def test_blocked_prompts_name_their_category(content_filter, prompt, category):
    assert content_filter.category(prompt) == category


@pytest.mark.parametrize(
    "prompt",
    [
        "a red ball bouncing",
        "bombastic making of a film",
        "一只橘猫在草地上奔跑",
        "a decapitated... no: a capitated statue",
    ],
)
def test_ordinary_prompts_pass(content_filter, prompt):
    assert content_filter.category(prompt) is None


def test_rejection_reaches_the_api_with_its_code(settings):
    with pytest.raises(RequestInvalid) as info:
        validator(settings).body({"prompt": "a beheading"})
    error = ApiError.invalid(info.value)
    assert (error.status, error.code, error.param) == (400, "content_policy_violation", "prompt")
    assert "graphic_violence" in error.message


def test_template_slots_are_filtered_too(settings):
    with pytest.raises(RequestInvalid) as info:
        validator(settings).request(template="product_showcase", slots={"product": "a beheading"})
    assert info.value.code == "content_policy_violation"


def test_filter_can_be_switched_off(settings):
    relaxed = settings.model_copy(update={"safety": SafetySettings(enabled=False)})
    assert validator(relaxed).request(prompt="a beheading").prompt == "a beheading"


def test_custom_block_list(tmp_path, wan22_dir):
    blocklist = tmp_path / "blocklist.yaml"
    blocklist.write_text("categories:\n  brand: {en: [acme corp], zh: [某品牌]}\n", encoding="utf-8")
    settings = Settings(model=wan22_dir, safety=SafetySettings(blocklist_file=blocklist))
    with pytest.raises(RequestInvalid, match="category: brand"):
        validator(settings).request(prompt="an ACME Corp logo")
    with pytest.raises(RequestInvalid, match="category: brand"):
        validator(settings).request(prompt="某品牌的广告")
