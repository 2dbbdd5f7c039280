"""The embedded default model: Wan2.2-T2V-A14B's architecture at toy size.

No weights can be downloaded here. The default is trained on this repository's small
physical world (`world/`, recipe in `training/`) and ships in the real diffusers layout
(`model_index.json`, `tokenizer/`, `text_encoder/`, `transformer/`, `transformer_2/`,
`vae/`, `scheduler/`) under `stages/weights/`; everything loads it through the same
`from_pretrained` code path as a real checkpoint. `build_default_pipeline` gives the same
architecture with seeded random weights: the training recipe starts from it, and tests
that compare against diffusers use it, as its files are identical on every machine.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from world.captions import words as world_words

DEFAULT_MODEL_NAME = "t2v-tiny-wan2.2-a14b"
TRAINED_MODEL_DIR = Path(__file__).parent / "weights" / "t2v-world-wan2.2-a14b"
# Bump when anything below changes: it names the cache directory of the built random model.
DEFAULT_MODEL_REVISION = "4"
SEED = 20250728  # Wan2.2's release date
TEXT_DIM = 64
# Text tokens the prompt is padded to. Wan's cross-attention takes no mask, so every padding
# position is a key the words compete with (padded to 512, the trained experts put 9-27 % of their
# attention on the words). The world's captions are at most 27 tokens, the shipped templates
# filled with their defaults under 40 (words outside the vocabulary cost a token a letter).
MAX_SEQUENCE_LENGTH = 64
DECODER_BASE_DIM = 8

logger = logging.getLogger(__name__)

# Words common in video prompts get their own token; everything else falls back to
# letters, then to UTF-8 bytes, so Chinese or Cyrillic never becomes <unk>.
_WORDS = """a an the and of in on at with to from by over under into through near
cat dog bird fish horse car ball boy girl man woman person people child robot city street
forest grass field sea ocean beach river lake mountain sky cloud sun moon rain snow water
fire tree flower house room table kitchen road bridge night day morning evening light
red orange yellow green blue purple black white gold silver bright dark golden
run runs running walk walks walking jump jumps fly flies flying swim dance falls rolling
bouncing playing sitting standing moving slowly fast camera shot close up wide aerial
view pan zoom tracking cinematic realistic style video scene product showcase
""".split()


def _build_tokenizer():
    """A T5-style Unigram tokenizer with byte fallback, built in code."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]  # T5's ids: pad 0, eos 1, unk 2
    vocab = [(s, 0.0) for s in specials]
    vocab += [(f"<0x{b:02X}>", -20.0) for b in range(256)]
    chars = [chr(c) for c in range(33, 127)]
    vocab += [("\u2581", -6.0)] + [(c, -8.0) for c in chars] + [("\u2581" + c, -7.5) for c in chars]
    en, zh = world_words()
    vocab += [("\u2581" + w, -4.0) for w in dict.fromkeys(_WORDS + en)]
    # Chinese has no spaces: its words and characters are pieces of their own, as in umT5's vocabulary.
    vocab += [(w, -3.0) for w in zh] + [(c, -8.0) for c in sorted({c for w in zh for c in w} - set(zh))]

    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="\u2581")])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_SEQUENCE_LENGTH,
    )


def build_default_pipeline(two_experts: bool = True):
    """The tiny WanPipeline, in memory. `two_experts=False` gives a Wan2.1-style checkpoint."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _build_tokenizer()
    text_dim = TEXT_DIM

    torch.manual_seed(SEED)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=text_dim,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
    ).eval()

    def expert(seed: int) -> WanTransformer3DModel:
        torch.manual_seed(seed)
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=6,
            attention_head_dim=32,
            in_channels=16,
            out_channels=16,
            text_dim=text_dim,
            freq_dim=256,
            ffn_dim=768,
            num_layers=4,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            rope_max_seq_len=1024,
        ).eval()

    high_noise = expert(SEED + 1)
    low_noise = expert(SEED + 2) if two_experts else None

    # Wan's 4x8x8 compression to 16 channels. Encoder base width 16: at 8 the full-resolution stage
    # (8 channels, RMS-normalised per pixel) learns colour too slowly when both halves train. The
    # decoder is half as wide (trained against the finished encoder, training/decoder.py), so that
    # decoding costs a CPU a share of a video near what it costs the real model on a GPU.
    torch.manual_seed(SEED + 3)
    vae = AutoencoderKLWan(
        base_dim=16,
        decoder_base_dim=DECODER_BASE_DIM,
        z_dim=16,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()

    # Wan2.2 A14B's scheduler: UniPC with flow prediction, shift 12 as in the official T2V config.
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=12.0,
        solver_order=2,
        solver_type="bh2",
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="linspace",
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=high_noise,
        transformer_2=low_noise,
        boundary_ratio=0.875 if two_experts else None,
    )


def save_pipeline(pipe, out: str | Path, name: str) -> Path:
    """Write `pipe` in diffusers layout to `out` (atomically: a half-written dir never appears)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        index = json.loads((tmp / "model_index.json").read_text())
        index["_name_or_path"] = name
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:
            # Another process (a replica starting beside us) finished first: its copy is identical.
            if not (out / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_default_model(out: str | Path, two_experts: bool = True) -> Path:
    """Write the architecture with seeded random weights to `out`."""
    return save_pipeline(build_default_pipeline(two_experts), out, DEFAULT_MODEL_NAME)


def default_model_dir(cache_dir: str | Path) -> Path:
    """The embedded default model: the trained weights shipped with the code when they are
    there (`t2v model train --out stages/weights/t2v-world-wan2.2-a14b`), else the seeded
    random model, built in the cache on first use."""
    if (TRAINED_MODEL_DIR / "model_index.json").exists():
        return TRAINED_MODEL_DIR
    import torch  # only for the random model: finding the trained one loads no model code

    path = Path(cache_dir) / "models" / f"{DEFAULT_MODEL_NAME}-r{DEFAULT_MODEL_REVISION}-torch{torch.__version__}"
    if not (path / "model_index.json").exists():
        logger.info("no trained weights at %s: building the seeded random model", TRAINED_MODEL_DIR)
        write_default_model(path)
    return path
