"""Build a tiny Qwen2 that really does IOI and capital recall, small enough to train in CI.

The result is an ordinary Hugging Face checkpoint directory: ``AutoTokenizer.from_pretrained`` and
``AutoModelForCausalLM.from_pretrained`` load it exactly as they load a real Qwen2, so every later
phase (hooks, activations, SAEs, attribution, interventions) runs the same code on the tiny model
and on Qwen2.5-3B.

Steps, top to bottom:
1. generate the corpus (``behaviours.generate_corpus``): IOI, capitals and filler sentences;
2. train a byte-level BPE tokenizer on it with Qwen2's pre-tokenizer, so transformers' Qwen2
   tokenizer class (picked from the model type) reproduces it from vocab.json + merges.txt;
3. train a ``Qwen2ForCausalLM`` from scratch with AdamW on packed sentence sequences;
4. save model + tokenizer and check that AutoTokenizer gives the same ids as our tokenizer.

Deterministic: the same spec gives a byte-identical ``model.safetensors`` on the same machine
(seeded init under a forked RNG, a private ``torch.Generator`` for batches, no dropout).
Plain PyTorch + transformers: never imports dagster.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from interp_assets.core.behaviours import (
    BEHAVIOURS,
    CAPITALS,
    COUNTRIES,
    NAMES,
    OBJECTS,
    PLACES,
    generate_corpus,
    generate_prompts,
)
from interp_assets.core.progress import Progress

# Qwen2's pre-tokenizer regex, verbatim from transformers' Qwen2Tokenizer: our tokenizer must split
# text exactly as the class that AutoTokenizer will rebuild from vocab.json + merges.txt.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
EOS_TOKEN = "<|endoftext|>"  # Qwen2's end-of-text: also its pad token; Qwen2 adds no BOS.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class TinyModelSpec:
    """Everything that determines the tiny model; the same spec builds the same bytes. No defaults
    here: the experiment config's ``model.tiny`` section is their one home (with the reasons for
    each value), and ``TinyModelSection.spec()`` builds this."""

    hidden_size: int  # d_model
    intermediate_size: int  # d_mlp: width of the MLP post-activation (input of down_proj)
    num_layers: int
    num_heads: int  # query heads
    num_kv_heads: int  # grouped-query attention, as in Qwen2.5
    vocab_size: int
    seq_len: int
    train_steps: int
    batch_size: int  # sequences per step
    lr: float  # AdamW peak learning rate
    warmup_steps: int  # linear warm-up, then cosine decay to lr / 10
    weight_decay: float
    init_std: float  # init std of every weight matrix (Qwen2Config.initializer_range)
    corpus_sentences: int  # sentences generated for training (and later the SAE corpus)
    seed: int  # corpus, tokenizer, init and batch order all derive from it

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")


# --------------------------------------------------------------------------- tokenizer
def train_tokenizer(spec: TinyModelSpec, sentences: Sequence[str]) -> Tokenizer:
    """A byte-level BPE trained on ``sentences`` with Qwen2's normalizer, pre-tokenizer and decoder.

    Raises ValueError if a name, country or capital (with its leading space) is not a single token,
    since the behaviours read logits of one target and one foil token.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=[EOS_TOKEN],
        # All 256 byte symbols, like Qwen2: any text encodes, not only the corpus's characters.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sentences, trainer)

    split = [w for w in NAMES + COUNTRIES + CAPITALS + PLACES + OBJECTS if len(tokenizer.encode(" " + w).ids) != 1]
    if split:
        raise ValueError(
            f"vocab_size={spec.vocab_size} leaves {len(split)} vocabulary words split into several "
            f"tokens (e.g. {split[:5]}); raise TinyModelSpec.vocab_size"
        )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | Path, model_max_length: int) -> None:
    """Write the files a real Qwen2 checkpoint ships: vocab.json, merges.txt, tokenizer.json and
    tokenizer_config.json (transformers 5 rebuilds the tokenizer from vocab + merges with the Qwen2
    class chosen by the model type, so those must be right; the config names eos/pad)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.model.save(str(out_dir))  # vocab.json + merges.txt
    tokenizer.save(str(out_dir / "tokenizer.json"))
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": model_max_length,
        "split_special_tokens": False,
        "added_tokens_decoder": {
            str(eos_id): {
                "content": EOS_TOKEN, "lstrip": False, "normalized": False, "rstrip": False,
                "single_word": False, "special": True,
            }
        },
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# --------------------------------------------------------------------------- data
def pack_corpus(tokenizer: Tokenizer, sentences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate the sentences, each followed by EOS, into one token stream.

    Returns ``(stream [N], positions [N], starts [S+1])``: ``positions`` counts from 0 within each
    sentence, ``starts[i]`` is where sentence i begins and ``starts[S] == N``, so a training window
    can begin at any sentence and end at one.
    """
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    ids = [enc.ids + [eos_id] for enc in tokenizer.encode_batch(list(sentences))]
    stream = torch.tensor([t for x in ids for t in x], dtype=torch.long)
    positions = torch.tensor([i for x in ids for i in range(len(x))], dtype=torch.long)
    lengths = torch.tensor([len(x) for x in ids])
    starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    return stream, positions, starts


def sample_batch(
    stream: torch.Tensor, positions: torch.Tensor, starts: torch.Tensor, seq_len: int, batch_size: int,
    pad_id: int, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random windows that begin at a sentence start and hold whole sentences only.

    Returns ``(inputs, position_ids, labels)``, each ``[B, T]``. Position ids restart at 0 with
    every sentence: transformers then builds a block-diagonal causal mask (its packed-sequence
    format), so a sentence never attends to its neighbours and sees the same positions as an
    evaluation prompt, which starts at 0 with no context. Otherwise the names of the previous
    sentence would be "duplicates" that confuse IOI. Tokens after the last whole sentence are
    padding with label IGNORE_INDEX.
    """
    n_sentences = starts.numel() - 1
    first = torch.randint(0, n_sentences, (batch_size,), generator=generator)
    begin = starts[first]  # [B]
    # The last sentence boundary within seq_len tokens of the start (always past the first
    # sentence, because every sentence + EOS is at most seq_len tokens).
    end = starts[torch.searchsorted(starts, begin + seq_len, right=True) - 1]  # [B]
    length = (end - begin).unsqueeze(1)  # [B, 1]
    offsets = torch.arange(seq_len + 1)  # [T+1]
    index = (begin.unsqueeze(1) + offsets).clamp(max=stream.numel() - 1)  # [B, T+1]
    window, window_pos = stream[index], positions[index]  # [B, T+1] each
    inside = offsets[:-1] < length  # [B, T]
    inputs = torch.where(inside, window[:, :-1], pad_id)
    # Padding is one more "sentence" counting from 0, so it too is masked off from the real ones.
    position_ids = torch.where(inside, window_pos[:, :-1], offsets[:-1] - length)
    # Predict the next token only within a sentence: the label at a sentence's EOS would be the
    # first token of an unrelated sentence it cannot see.
    same_sentence = (offsets[1:] < length) & (window_pos[:, 1:] != 0)  # [B, T]
    labels = torch.where(same_sentence, window[:, 1:], IGNORE_INDEX)
    return inputs, position_ids, labels


def _lr_at(step: int, spec: TinyModelSpec) -> float:
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.train_steps - spec.warmup_steps)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------- model
def make_config(spec: TinyModelSpec, eos_id: int):
    """The ``Qwen2Config`` of the tiny model (tied embeddings, float32, no dropout)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=max(128, spec.seq_len),
        tie_word_embeddings=True,
        attention_dropout=0.0,
        initializer_range=spec.init_std,
        bos_token_id=eos_id,  # Qwen2 convention: one end-of-text token, no BOS ever prepended
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        dtype="float32",
    )


def build_tiny_model(
    spec: TinyModelSpec, out_dir: str | Path, log: Callable[[str], None] = print,
) -> dict:
    """Generate the corpus, train tokenizer and model, save them to ``out_dir``; return a summary
    ``{final_loss, train_seconds, n_parameters, vocab_size, tokenizer_vocab_size, corpus_tokens}``.

    ``final_loss`` is the mean training loss (nats/token) over the last logging window (<= 100
    steps). Raises ValueError when the spec cannot hold the corpus (vocabulary words split into
    several tokens, a sentence longer than ``seq_len``) and RuntimeError when transformers'
    AutoTokenizer would tokenize differently from the trained tokenizer.
    """
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # ---- data
    sentences = generate_corpus(spec.corpus_sentences, spec.seed)
    tokenizer = train_tokenizer(spec, sentences)
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    stream, positions, starts = pack_corpus(tokenizer, sentences)
    longest = int((starts[1:] - starts[:-1]).max())
    if longest > spec.seq_len:
        raise ValueError(f"a sentence has {longest} tokens with EOS, more than seq_len={spec.seq_len}")
    log(f"corpus: {len(sentences)} sentences, {stream.numel()} tokens, "
        f"tokenizer vocab {tokenizer.get_vocab_size()} (model rows {spec.vocab_size})")

    # ---- model: init under a forked RNG so the caller's global torch RNG is left as it was
    config = make_config(spec, eos_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Qwen2ForCausalLM(config)
    model.train()
    n_parameters = sum(p.numel() for p in model.parameters())  # tied: embedding counted once
    log(f"model: Qwen2 {spec.num_layers} layers, d_model {spec.hidden_size}, "
        f"{n_parameters / 1e3:.0f}k parameters")

    # Weight decay on matrices only: norms and biases keep their scale (nanoGPT's split).
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        # fused: one kernel for all parameters, ~3 ms/step less than foreach here (~5 % of a step).
        lr=spec.lr, betas=(0.9, 0.95), fused=True,
    )
    generator = torch.Generator().manual_seed(spec.seed)

    # ---- train
    log_every = 100
    t0 = time.perf_counter()
    t_last, tokens_since, steps_since = t0, 0, 0
    loss_sum = torch.zeros(())  # summed without .item() so the loop never waits on a sync
    final_loss = float("nan")
    progress = Progress(spec.train_steps, log)
    for step in range(spec.train_steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, spec)
        inputs, position_ids, labels = sample_batch(
            stream, positions, starts, spec.seq_len, spec.batch_size, eos_id, generator
        )
        # use_cache=False: with a KV cache transformers ignores the packed position ids (and
        # would let sentences attend to each other).
        hidden = model.model(input_ids=inputs, position_ids=position_ids, use_cache=False).last_hidden_state
        # Project to the vocabulary only where a label exists (not padding, not a sentence's EOS).
        keep = labels != IGNORE_INDEX  # [B, T]
        logits = model.lm_head(hidden[keep])  # [n_kept, V]
        loss = F.cross_entropy(logits, labels[keep])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens_since += logits.size(0)
        steps_since += 1
        loss_sum += loss.detach()

        if (step + 1) % log_every == 0 or step == spec.train_steps - 1:
            # Mean over the steps since the last line: one batch's loss is too noisy to compare.
            final_loss = loss_sum.item() / steps_since
            now = time.perf_counter()
            progress.update(step + 1, f"loss {final_loss:.4f} lr {_lr_at(step, spec):.2e} "
                                      f"{tokens_since / (now - t_last):.0f} tok/s", force=True)
            t_last, tokens_since, steps_since = now, 0, 0
            loss_sum.zero_()
    train_seconds = time.perf_counter() - t0

    # ---- save (transformers 5 always writes safetensors: model.safetensors + config.json)
    model.eval()
    model.save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir, model_max_length=config.max_position_embeddings)
    (out_dir / "tiny_model_spec.json").write_text(json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n")

    # ---- check: AutoTokenizer (rebuilt by transformers from the files) must give our ids
    auto = AutoTokenizer.from_pretrained(out_dir)
    probes = [text for b in BEHAVIOURS for p in generate_prompts(b, 20, spec.seed) for text in (p.clean, p.corrupted)]
    probes += sentences[:50]
    for text in probes:
        ours, theirs = tokenizer.encode(text).ids, auto(text)["input_ids"]
        if ours != theirs:
            raise RuntimeError(f"AutoTokenizer does not round-trip {text!r}: {theirs} != {ours}")
    log(f"saved to {out_dir} in {train_seconds:.1f}s of training, final loss {final_loss:.4f}")

    return {
        "final_loss": final_loss,
        "train_seconds": train_seconds,
        "n_parameters": n_parameters,
        "vocab_size": spec.vocab_size,
        "tokenizer_vocab_size": tokenizer.get_vocab_size(),
        "corpus_tokens": int(stream.numel()),
    }
