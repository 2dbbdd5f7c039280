"""Text encoder stage: prompt and negative prompt -> UMT5 embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

from deployments.checkpoint import Checkpoint


@dataclass
class PromptEmbeddings:
    prompt: torch.Tensor  # (B, max_sequence_length, text_dim), zero-padded past each prompt's length
    negative: torch.Tensor | None  # None when classifier-free guidance is off


class TextEncoder:
    def __init__(self, checkpoint: Checkpoint):
        self.tokenizer = checkpoint.tokenizer()
        self.model = checkpoint.text_encoder()
        self.device = checkpoint.device
        self.dtype = checkpoint.dtype  # the experts' dtype: embeddings are their input
        self.max_sequence_length = checkpoint.settings.max_sequence_length

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(prompt_clean(text), add_special_tokens=True).input_ids)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """As diffusers' `WanPipeline._get_t5_prompt_embeds`, so both give identical embeddings."""
        inputs = self.tokenizer(
            [prompt_clean(t) for t in texts],
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        mask = inputs.attention_mask.to(self.device)
        hidden = self.model(inputs.input_ids.to(self.device), mask).last_hidden_state
        # Padding positions still carry encoder output; Wan was trained with them zeroed.
        return (hidden * mask.unsqueeze(-1)).to(self.dtype).cpu()

    def __call__(self, prompt: str, negative_prompt: str = "", guidance: bool = True) -> PromptEmbeddings:
        if not guidance:
            return PromptEmbeddings(self.embed([prompt]), None)
        both = self.embed([prompt, negative_prompt])  # one forward for both halves of CFG
        return PromptEmbeddings(both[:1], both[1:])
