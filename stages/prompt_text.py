"""A prompt as the text encoder reads it: its token count, without the encoder's model code
(the ingress refuses an over-long prompt before any replica embeds it)."""

from __future__ import annotations


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of `text` as the text encoder sees it (cleaned, with the end token)."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean  # see TextEncoder.embed

    return len(tokenizer(prompt_clean(text), add_special_tokens=True).input_ids)
