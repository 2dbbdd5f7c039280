"""Text encoder stage: prompt and negative prompt -> UMT5 embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cache.keys import embedding_key
from cache.store import LatentCache, MemoryLRU
from contract.templates import TemplateRegistry
from sim.gpu import SimulatedGpu
from stages.checkpoint import Checkpoint
from stages.prompt_text import count_tokens


@dataclass
class PromptEmbeddings:
    prompt: torch.Tensor  # (1, max_sequence_length, text_dim), zero-padded past the prompt's length
    negative: torch.Tensor | None  # None when classifier-free guidance is off
    cache_hit: bool = False  # every text came from the cache


class TextEncoder:
    def __init__(self, checkpoint: Checkpoint, cache: LatentCache | None = None):
        self.checkpoint = checkpoint
        self.tokenizer = checkpoint.tokenizer()
        self.model = checkpoint.text_encoder()
        self.device = checkpoint.device
        self.dtype = checkpoint.dtype  # the experts' dtype: embeddings are their input
        self.max_sequence_length = checkpoint.max_sequence_length
        self.cache = cache
        self.memory = MemoryLRU(checkpoint.settings.cache.memory_embeddings)
        # Simulated: the small model still encodes (its embeddings are real input for the caches),
        # and each encode also takes UMT5-XXL's time on the simulated GPU.
        self.gpu = SimulatedGpu(checkpoint.settings.sim, "encode") if checkpoint.simulated else None
        if self.gpu is not None:
            self.gpu.load("text_encoder")

    def count_tokens(self, text: str) -> int:
        return count_tokens(self.tokenizer, text)

    @torch.no_grad()
    def embed(self, text: str) -> torch.Tensor:
        """As diffusers' `WanPipeline._get_t5_prompt_embeds`, one text per forward as it does."""
        # Imported here, not with this module: it loads transformers' model code, a second of every
        # replica's start-up that the experts, decoder and job store (which import this module) never use.
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        inputs = self.tokenizer(
            [prompt_clean(text)],
            # Simulated: the prompt's own tokens only (the padding's states are zeroed below anyway),
            # so the stand-in work on this host stays far below the control plane's.
            padding="max_length" if self.gpu is None else "longest",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        mask = inputs.attention_mask.to(self.device)
        hidden = self.model(inputs.input_ids.to(self.device), mask).last_hidden_state
        if self.gpu is not None:
            self.gpu.charge(self.gpu.cost.encode_seconds(guidance=False))
            pad = self.max_sequence_length - hidden.shape[1]  # (1, tokens, dim) -> (1, max length, dim)
            hidden = torch.nn.functional.pad(hidden, (0, 0, 0, pad))
            mask = torch.nn.functional.pad(mask, (0, pad))
        # Padding positions still carry encoder output; Wan was trained with them zeroed.
        return (hidden * mask.unsqueeze(-1)).to(self.dtype).cpu()

    def embed_cached(self, text: str, use_cache: bool = True) -> tuple[torch.Tensor, bool]:
        """Per-replica memory, then the node's shared store, then the model."""
        if self.cache is None or not use_cache:
            return self.embed(text), False
        key = embedding_key(self.checkpoint.identity, text)
        embedding = self.memory.get(key)
        if embedding is not None:
            return embedding, True
        embedding, hit = self.cache.get_or_compute("embeddings", key, lambda: self.embed(text))
        self.memory.put(key, embedding)
        return embedding, hit

    def pooled(self, text: str) -> torch.Tensor:
        """One unit vector per text: the mean of its token states (padding excluded)."""
        embedding, _ = self.embed_cached(text)
        tokens = min(self.count_tokens(text), self.max_sequence_length)
        return torch.nn.functional.normalize(embedding[0, :tokens].float().mean(0), dim=0)

    def closest_template(self, prompt: str, templates: TemplateRegistry) -> tuple[str | None, float]:
        """The template whose base prompt is most like `prompt`, and the cosine similarity."""
        if not templates.templates:
            return None, 0.0
        query = self.pooled(prompt)
        scored = [(float(query @ self.pooled(t.base_prompt)), name) for name, t in templates.templates.items()]
        similarity, name = max(scored)
        return name, similarity

    def __call__(
        self, prompt: str, negative_prompt: str = "", guidance: bool = True, use_cache: bool = True
    ) -> PromptEmbeddings:
        positive, hit = self.embed_cached(prompt, use_cache)
        if not guidance:
            return PromptEmbeddings(positive, None, hit)
        negative, negative_hit = self.embed_cached(negative_prompt, use_cache)
        return PromptEmbeddings(positive, negative, hit and negative_hit)
