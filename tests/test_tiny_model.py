"""Fast tests of the behaviours (prompts, corpus) and the tiny-model builder (a 20-step build)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from interp_assets.core.behaviours import (
    BEHAVIOURS,
    CAPITALS,
    COUNTRIES,
    COUNTRY_CAPITALS,
    NAMES,
    PromptPair,
    generate_corpus,
    generate_prompts,
)
from interp_assets.config import TinyModelSection
from interp_assets.core.tiny_model import EOS_TOKEN, build_tiny_model, train_tokenizer

# A build small enough for a unit test; determinism does not depend on the number of steps.
FAST_SPEC = TinyModelSection(train_steps=20, corpus_sentences=4000, seed=0).spec()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_prompts_deterministic_distinct_and_contrastive(behaviour: str) -> None:
    prompts = generate_prompts(behaviour, 100, seed=0)
    assert prompts == generate_prompts(behaviour, 100, seed=0)
    assert prompts != generate_prompts(behaviour, 100, seed=1)
    assert len(prompts) == 100
    assert all(isinstance(p, PromptPair) and p.behaviour == behaviour for p in prompts)
    assert len({p.id for p in prompts}) == 100
    assert len({p.clean for p in prompts}) == 100
    for p in prompts:
        assert p.corrupted != p.clean
        assert p.target != p.foil
        assert p.target.startswith(" ") and p.foil.startswith(" ")
        assert not p.clean.endswith(" ") and not p.corrupted.endswith(" ")


def test_ioi_corrupted_swaps_subject() -> None:
    for p in generate_prompts("ioi", 50, seed=3):
        io, s = p.target.strip(), p.foil.strip()
        assert {io, s} <= set(NAMES)
        # Clean: the subject (foil) is repeated; corrupted: the indirect object (target) is.
        assert p.clean.count(s) == 2 and p.clean.count(io) == 1
        assert p.corrupted.count(io) == 2 and p.corrupted.count(s) == 1


def test_capitals_are_facts() -> None:
    capital_of = dict(COUNTRY_CAPITALS)
    for p in generate_prompts("capitals", 100, seed=0):
        country = next(c for c in COUNTRIES if f" {c}" in p.clean)
        other = next(c for c in COUNTRIES if f" {c}" in p.corrupted)
        assert p.target == " " + capital_of[country] and p.foil == " " + capital_of[other]


def test_unknown_behaviour_and_bad_n_raise() -> None:
    with pytest.raises(ValueError, match="ioi, capitals"):
        generate_prompts("sentiment", 10, seed=0)
    with pytest.raises(ValueError):
        generate_prompts("capitals", 10**6, seed=0)


def test_corpus_deterministic_and_complete_sentences() -> None:
    corpus = generate_corpus(500, seed=0)
    assert corpus == generate_corpus(500, seed=0)
    assert corpus != generate_corpus(500, seed=1)
    assert all(s.endswith(".") for s in corpus)
    assert any("The capital of" in s for s in corpus) and any(" gave a " in s for s in corpus)


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_single_token_vocabulary() -> None:
    spec = TinyModelSection().spec()
    tokenizer = train_tokenizer(spec, generate_corpus(spec.corpus_sentences, spec.seed))
    assert tokenizer.get_vocab_size() <= spec.vocab_size
    for word in NAMES + COUNTRIES + CAPITALS:
        assert len(tokenizer.encode(" " + word).ids) == 1, word
    assert tokenizer.token_to_id(EOS_TOKEN) is not None


# --------------------------------------------------------------------------- build
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tiny") / "a"
    summary = build_tiny_model(FAST_SPEC, out, log=lambda _: None)
    return out, summary


def test_build_loads_like_a_real_qwen2(built: tuple[Path, dict]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, summary = built
    assert {"final_loss", "train_seconds", "n_parameters", "vocab_size"} <= summary.keys()
    assert (out / "model.safetensors").is_file()
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "qwen2"
    assert model.config.tie_word_embeddings
    assert model.config.vocab_size == FAST_SPEC.vocab_size
    assert model.config.num_hidden_layers == FAST_SPEC.num_layers
    assert sum(p.numel() for p in model.parameters()) == summary["n_parameters"]
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == EOS_TOKEN
    assert tokenizer.bos_token is None

    prompt = generate_prompts("ioi", 1, seed=0)[0]
    ids = tokenizer(prompt.clean)["input_ids"]
    assert tokenizer.decode(ids) == prompt.clean
    assert len(tokenizer(prompt.target)["input_ids"]) == 1
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), FAST_SPEC.vocab_size)
    assert torch.isfinite(logits).all()


def test_build_is_deterministic(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = built
    again = tmp_path / "again"
    build_tiny_model(FAST_SPEC, again, log=lambda _: None)
    for name in ("model.safetensors", "tokenizer.json", "vocab.json", "merges.txt", "config.json"):
        assert _sha256(out / name) == _sha256(again / name), name

    other = tmp_path / "other"
    build_tiny_model(dataclasses.replace(FAST_SPEC, seed=1), other, log=lambda _: None)
    assert _sha256(out / "model.safetensors") != _sha256(other / "model.safetensors")


# --------------------------------------------------------------------------- packing
def test_packed_windows_keep_sentences_apart() -> None:
    """Training windows pack sentences with restarting position ids; the model must then treat
    each sentence exactly as if it were alone (transformers' packed-sequence mask)."""
    from transformers import Qwen2ForCausalLM

    from interp_assets.core.tiny_model import make_config, pack_corpus, sample_batch

    spec = dataclasses.replace(FAST_SPEC, num_layers=2)
    sentences = generate_corpus(300, seed=0)
    tokenizer = train_tokenizer(spec, generate_corpus(spec.corpus_sentences, spec.seed))
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    stream, positions, starts = pack_corpus(tokenizer, sentences)
    inputs, position_ids, labels = sample_batch(
        stream, positions, starts, spec.seq_len, 16, eos_id, torch.Generator().manual_seed(0)
    )
    assert inputs.shape == position_ids.shape == labels.shape == (16, spec.seq_len)
    # Labels never cross a sentence boundary: no label at a position whose successor restarts at 0.
    assert ((position_ids[:, 1:] == 0) & (labels[:, :-1] != -100)).sum() == 0

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(make_config(spec, eos_id)).eval()
    row = next(r for r in range(16) if int((position_ids[r] == 0).sum()) >= 3)  # >= 2 sentences + padding
    bounds = (position_ids[row] == 0).nonzero().flatten().tolist()
    with torch.no_grad():
        packed = model(input_ids=inputs[row:row + 1], position_ids=position_ids[row:row + 1], use_cache=False).logits
        for a, b in zip(bounds[:-1], bounds[1:]):
            alone = model(input_ids=inputs[row:row + 1, a:b]).logits
            torch.testing.assert_close(packed[:, a:b], alone, atol=1e-5, rtol=1e-5)
