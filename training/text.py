"""The text encoder, pretrained on the world's captions before the experts train (then frozen, as Wan freezes umT5).

A randomly initialised encoder gives "red" a different state in every sentence it appears in
(its attention mixes in the filler words), and nothing ties "red" to "红色". umT5 arrives
pretrained, so the experts can rely on its states meaning the same across phrasings and
languages; ours gets the same property here, from a classification task: the mean of its
token states must name the clip's colour, object, motion, setting and camera, in every
phrasing and in both languages. The heads are thrown away afterwards.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from tqdm import tqdm

from world.captions import training_captions
from world.vocabulary import CAMERAS, COLORS, MOTIONS, OBJECTS, SETTINGS

ATTRIBUTES = {
    "color": list(COLORS),
    "object": list(OBJECTS),
    "motion": list(MOTIONS),
    "setting": list(SETTINGS),
    "camera": list(CAMERAS),
}


def caption_table(combos: list[dict[str, str]]) -> tuple[list[str], torch.Tensor, list[list[int]]]:
    """Unique captions, their attribute labels (n, 5), and for each combination its caption indices."""
    captions, labels, index, per_combo = [], [], {}, []
    for attrs in combos:
        ids = []
        for text in training_captions(attrs):
            if text not in index:
                index[text] = len(captions)
                captions.append(text)
                labels.append([ATTRIBUTES[k].index(attrs[k]) for k in ATTRIBUTES])
            ids.append(index[text])
        per_combo.append(ids)
    return captions, torch.tensor(labels), per_combo


def tokenize(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = tokenizer(
        [prompt_clean(t) for t in texts],
        padding="longest",
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return inputs.input_ids, inputs.attention_mask


def pooled(encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = encoder(ids, mask).last_hidden_state
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def pretrain_text_encoder(encoder, tokenizer, combos, steps: int, seed: int, batch: int = 64, lr: float = 2e-3) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    captions, labels, _ = caption_table(combos)
    dim = encoder.config.d_model
    heads = torch.nn.ModuleList(torch.nn.Linear(dim, len(v)) for v in ATTRIBUTES.values())
    params = list(encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 30) * 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    encoder.train()
    recent = []
    bar = tqdm(range(steps), desc="text encoder", unit="step")
    for _ in bar:
        pick = rng.integers(len(captions), size=batch)
        ids, mask = tokenize(tokenizer, [captions[i] for i in pick])
        feats = pooled(encoder, ids, mask)
        target = labels[pick]
        loss = sum(torch.nn.functional.cross_entropy(h(feats), target[:, k]) for k, h in enumerate(heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        recent = (recent + [loss.item()])[-50:]
        bar.set_postfix(loss=f"{np.mean(recent):.4f}")
    encoder.eval()
    return {"text_loss": float(np.mean(recent)), "heads": heads}


@torch.no_grad()
def attribute_accuracy(encoder, tokenizer, heads, texts: list[str], labels: torch.Tensor) -> float:
    """Fraction of attributes the pretraining heads read right (all five must be right for a text to count)."""
    ids, mask = tokenize(tokenizer, texts)
    feats = pooled(encoder, ids, mask)
    right = torch.stack([h(feats).argmax(-1) == labels[:, k] for k, h in enumerate(heads)], 1)
    return float(right.all(1).float().mean())


@torch.no_grad()
def embed_captions(encoder, tokenizer, captions: list[str], batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states as the text encoder stage computes them (padding zeroed), unpadded: (n, L, dim), lengths (n,).

    Attention masks out the padding, so the states of the real tokens are the same as with
    the stage's padding to max_sequence_length.
    """
    ids, mask = tokenize(tokenizer, captions)
    states = []
    for i in range(0, len(captions), batch):
        hidden = encoder(ids[i : i + batch], mask[i : i + batch]).last_hidden_state
        states.append(hidden * mask[i : i + batch, :, None])
    return torch.cat(states), mask.sum(1)
