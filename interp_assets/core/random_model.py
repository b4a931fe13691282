"""A Qwen2 of a real architecture (e.g. Qwen2.5-3B's: 36 layers, d_model 2048, d_mlp 11008,
16 / 2 heads, 151,936 vocabulary rows, tied embeddings) with random weights from a seed, and no
training: it rehearses a study's memory, time and bytes at the real widths on a machine that has
no copy of the real weights. Its tokenizer is the tiny model's byte-level BPE (trained on the
behaviour corpus, so every name and city is one token); embedding rows above it are never read.

Plain PyTorch + transformers: never imports dagster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from interp_assets.core.behaviours import generate_corpus
from interp_assets.core.tiny_model import EOS_TOKEN, TinyModelSpec, save_tokenizer, train_tokenizer


@dataclass(frozen=True)
class RandomModelSpec:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tokenizer_vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    init_std: float
    seed: int


def make_config(spec: RandomModelSpec, eos_id: int, dtype: str):  # noqa: ANN201 - transformers.Qwen2Config
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings, rope_theta=spec.rope_theta, rms_norm_eps=spec.rms_norm_eps,
        initializer_range=spec.init_std, attention_dropout=0.0,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, dtype=dtype,
    )


def build_random_model(spec: RandomModelSpec, out_dir: str | Path, dtype: str = "bfloat16",
                       log: Callable[[str], None] = print) -> dict:
    """Tokenizer + seeded random Qwen2 saved to ``out_dir`` in ``dtype``; returns a summary.

    The weights are drawn layer by layer directly in ``dtype`` (``torch.set_default_dtype`` would
    not cover BF16 init of every module): the peak is one copy of the model in its dtype, not an
    FP32 copy beside it, which for 3B parameters is 12 GB this machine does not spare."""
    from transformers import Qwen2ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tiny = TinyModelSpec(hidden_size=64, intermediate_size=256, num_layers=1, num_heads=4, num_kv_heads=2,
                         vocab_size=spec.tokenizer_vocab_size, seq_len=18, train_steps=1, batch_size=1, lr=1e-3,
                         warmup_steps=0, weight_decay=0.0, init_std=0.1, corpus_sentences=5000, seed=spec.seed)
    tokenizer = train_tokenizer(tiny, generate_corpus(tiny.corpus_sentences, spec.seed))
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    config = make_config(spec, eos_id, dtype)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        previous = torch.get_default_dtype()
        # Modules are created in the target dtype and initialised in place by transformers' _init_weights.
        torch.set_default_dtype(torch_dtype)
        try:
            model = Qwen2ForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    model = model.to(torch_dtype).eval()
    n_parameters = sum(p.numel() for p in model.parameters())
    log(f"random Qwen2: {spec.num_layers} layers, d_model {spec.hidden_size}, d_mlp {spec.intermediate_size}, "
        f"vocab {spec.vocab_size}, {n_parameters / 1e6:.1f}M parameters in {dtype}")
    model.save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir, model_max_length=spec.max_position_embeddings)
    (out_dir / "random_model_spec.json").write_text(json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n")
    seconds = time.perf_counter() - t0
    log(f"saved to {out_dir} in {seconds:.1f}s")
    return {"n_parameters": n_parameters, "build_seconds": seconds, "vocab_size": spec.vocab_size,
            "tokenizer_vocab_size": tokenizer.get_vocab_size(), "dtype": dtype}
