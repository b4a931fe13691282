"""The SAE corpus (core/corpus.py): the same documents read from text, JSONL, Parquet and a
``datasets`` folder give exactly the documented windows; held-out documents never reach training,
cached or streamed; the corpus's bytes decide the staleness of exactly activations and saes; and
every bad input is a clear error before anything trains or is published."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import torch
from helpers import asset_key, in_experiment, save_text_dataset, seed_tiny_model, write_config

from interp_assets.config import ConfigError, corpus_spec, load_config
from interp_assets.core.corpus import CorpusError, CorpusSpec, is_held_out, read_windows, split_documents
from interp_assets.definitions import build_definitions

N_DOCS = 400
FILLER = ["the", "cat", "sat", "on", "mat", "and", "a", "dog", "ran", "far"]


def _documents() -> list[str]:
    """Documents of 3–12 words, each opened by its own marker word ``docN``, so a window's ids say
    which documents it holds."""
    return [" ".join([f"doc{i}"] + [FILLER[(i * 7 + j) % len(FILLER)] for j in range(3 + i % 10)])
            for i in range(N_DOCS)]


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    """A word-level tokenizer with an end-of-text token: every word one id, known in advance."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<eos>", "<unk>", *FILLER, *(f"doc{i}" for i in range(N_DOCS))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")


def _write_sources(folder: Path, docs: list[str]) -> dict[str, dict]:
    """The same documents as each kind of source, as a lab has them on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text("\n\n".join(d.replace(" and ", " and\n") for d in docs) + "\n")
    (folder / "lines.txt").write_text("\n".join(docs) + "\n")
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(docs)))
    pl.DataFrame({"id": list(range(len(docs))), "body": docs}).write_parquet(folder / "corpus.parquet",
                                                                            row_group_size=50)
    save_text_dataset(folder / "dataset", docs, column="body")
    return {
        "text-paragraph": {"source": "text", "path": str(folder / "corpus.txt")},
        "text-line": {"source": "text", "path": str(folder / "lines.txt"), "text_documents": "line"},
        "jsonl": {"source": "jsonl", "path": str(folder / "corpus.jsonl"), "text_column": "body"},
        "parquet": {"source": "parquet", "path": str(folder / "corpus.parquet"), "text_column": "body"},
        "dataset": {"source": "dataset", "path": str(folder / "dataset"), "text_column": "body"},
    }


def _spec(source: dict, **settings: object) -> CorpusSpec:
    return CorpusSpec(**{"seq_len": 16, "max_tokens": 16 * 40, "eval_tokens": 16 * 8, "held_out_fraction": 0.2,
                         **source, **settings})


def _expected_windows(tokenizer, docs: list[str], held_out: bool, spec: CorpusSpec) -> torch.Tensor:  # noqa: ANN001
    """The documented packing, spelled out: each side's documents in order, each + <eos>, cut."""
    stream: list[int] = []
    for doc in docs:
        if is_held_out(doc, spec.held_out_fraction) == held_out:
            stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n = (spec.eval_windows if held_out else spec.train_windows)
    return torch.tensor(stream[: n * spec.seq_len], dtype=torch.int32).reshape(n, spec.seq_len)


def test_every_source_packs_the_same_documents_into_exactly_the_documented_windows(tmp_path: Path, tokenizer) -> None:  # noqa: ANN001
    docs = _documents()
    for name, source in _write_sources(tmp_path, docs).items():
        spec = _spec(source)
        # A paragraph keeps its line breaks: that is its text, for the split's hash too.
        as_read = [d.replace(" and ", " and\n") for d in docs] if name == "text-paragraph" else docs
        for held_out in (False, True):
            got = read_windows(spec, tokenizer, held_out=held_out)
            assert got.dtype == torch.int32 and got.shape[1] == 16, name
            assert torch.equal(got, _expected_windows(tokenizer, as_read, held_out, spec)), (name, held_out)
        # A document straddles windows and <eos> separates documents, as documented.
        flat = read_windows(spec, tokenizer, held_out=False).flatten().tolist()
        assert flat.count(tokenizer.eos_token_id) >= 30 and flat[0] != tokenizer.eos_token_id


def test_document_packing_puts_each_document_alone_in_a_padded_window_within_the_budget(tmp_path: Path,
                                                                                         tokenizer) -> None:  # noqa: ANN001
    from interp_assets.core.corpus import PAD

    docs = _documents()
    spec = _spec(_write_sources(tmp_path, docs)["jsonl"], packing="document", seq_len=8, max_tokens=300)
    got = read_windows(spec, tokenizer, held_out=False)
    train = [d for d in docs if not is_held_out(d, 0.2)]
    expected, tokens = [], 0
    for doc in train:
        window = (tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:8]
        if tokens + len(window) > 300:
            break
        expected.append(window + [PAD] * (8 - len(window)))
        tokens += len(window)
    assert got.tolist() == expected
    assert 300 - 8 < int((got != PAD).sum()) <= 300
    # Padding is never a token the model sees: it becomes the pad id behind a zero attention mask.
    from interp_assets.core.modeling import tokenize_batches

    batch = next(tokenize_batches(tokenizer, got[:4], 4, torch.device("cpu")))
    assert torch.equal(batch.attention_mask.bool(), got[:4] >= 0)
    assert torch.equal(batch.input_ids[batch.attention_mask.bool()], got[:4][got[:4] >= 0].long())


def test_held_out_documents_never_reach_the_training_windows(tmp_path: Path, tokenizer) -> None:  # noqa: ANN001
    docs = _documents()
    spec = _spec(_write_sources(tmp_path, docs)["jsonl"], max_tokens=10**6, eval_tokens=16)
    held = {tokenizer.convert_tokens_to_ids(d.split()[0]) for d in docs if is_held_out(d, 0.2)}
    assert 40 <= len(held) <= 120  # about a fifth of 400, chosen by the documents' text
    # The whole corpus, not a budget's worth: every training window of every document.
    with pytest.raises(CorpusError, match="corpus.max_tokens: the training documents of .* fill only"):
        read_windows(spec, tokenizer, held_out=False)
    train_markers = {t for t in read_windows(spec, tokenizer, held_out=False, n_windows=100).flatten().tolist()}
    assert not held & train_markers
    eval_markers = set(read_windows(spec, tokenizer, held_out=True, n_windows=10).flatten().tolist())
    assert eval_markers & held and not eval_markers & (train_markers - set(range(2 + len(FILLER))))
    # The split depends on the text alone: another order of the same documents splits them alike.
    reordered = _spec(_write_sources(tmp_path / "reversed", docs[::-1])["parquet"])
    assert set(split_documents(reordered, True)) == {d for d in docs if is_held_out(d, 0.2)}


def _random_qwen(vocab_size: int):  # noqa: ANN202
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).eval()


def test_cached_and_streamed_training_see_only_training_documents(tmp_path: Path, tokenizer) -> None:  # noqa: ANN001
    """The ids the model is fed while capturing (cached) and while streaming SAE batches, against
    the held-out documents' markers."""
    from interp_assets.core.capture import CaptureSource, capture_activations
    from interp_assets.core.sae_stream import ActivationStream, Lockstep, plan_stream

    docs = _documents()
    spec = _spec(_write_sources(tmp_path, docs)["dataset"], exclude_first_positions=1)
    held = {tokenizer.convert_tokens_to_ids(d.split()[0]) for d in docs if is_held_out(d, 0.2)}
    model = _random_qwen(len(tokenizer))
    fed: list[int] = []
    model.model.embed_tokens.register_forward_pre_hook(lambda module, args: fed.extend(args[0].flatten().tolist()))
    windows = read_windows(spec, tokenizer, held_out=False)

    shards = capture_activations(model, tokenizer, [0, 1], "mlp_post",
                                 [CaptureSource("corpus", windows, skip_first_positions=1)], batch_size=8,
                                 dtype=torch.float32, shard_max_vectors=10**6,
                                 write_shard=lambda layer, source, index, tensors: {"tensors": tensors})
    stored = shards[0]["corpus"][0]["tensors"]
    assert stored["activations"].shape[0] == windows.shape[0] * 15  # position 0 of each window fed, not kept
    assert not (stored["position"] == 0).any()
    assert torch.equal(stored["token_ids"], windows[:, 1:].flatten())
    assert fed and not held & set(fed)

    fed.clear()
    stream = ActivationStream(model, tokenizer, [0, 1], "mlp_post", plan_stream(windows, 64, skip_first=1),
                              forward_batch_size=8, dtype=torch.float32, seed=0)
    lockstep = Lockstep(stream, batch_size=32)
    for epoch, chunk in ((0, 0), (0, 3), (1, 2)):
        stream.chunk(epoch, chunk)
    lockstep.head(0, 100)
    assert fed and not held & set(fed)


def _text_study(tmp_path: Path, corpus_file: Path, **corpus: object) -> Path:
    return write_config(tmp_path, {"corpus": {"source": "text", "path": str(corpus_file), "text_documents": "line",
                                              "seq_len": 16, "max_tokens": 512, "eval_tokens": 64, **corpus}},
                        name=f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml")


def test_the_corpus_bytes_decide_the_staleness_of_exactly_the_assets_that_read_it(tmp_path: Path) -> None:
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n".join(_documents()) + "\n")

    def versions() -> dict[str, str]:
        graph = build_definitions(_text_study(tmp_path, corpus_file)).resolve_asset_graph()
        return {k.path[-1]: graph.get(k).code_version for k in graph.get_all_asset_keys()}

    before = versions()
    assert versions() == before  # reading it again changes nothing
    corpus_file.write_text(corpus_file.read_text().replace("doc7 ", "doc7 cat ", 1))
    after = versions()
    # The readers of the corpus: capture, the SAEs (judged on its held-out windows) and the
    # dashboards (drawn from those windows); nothing upstream, nothing that reads prompts.
    assert {name for name in before if before[name] != after[name]} == {"activations", "saes", "feature_dashboards"}
    # Streamed SAEs read the corpus themselves: still exactly those two.
    stream = build_definitions(write_config(tmp_path, {"sae": {"data_source": "stream"}, "corpus": {
        "source": "text", "path": str(corpus_file), "text_documents": "line", "seq_len": 16, "max_tokens": 512,
        "eval_tokens": 64}}, name="s.yaml")).resolve_asset_graph()
    assert "+corpus." in stream.get(asset_key("saes")).code_version


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: {"source": "text", "path": str(d / "missing.txt")},
         r"corpus\.path: .*missing\.txt does not exist"),
        (lambda d: {"source": "jsonl", "path": str(_jsonl(d)), "text_column": "txt"},
         r"corpus\.text_column: .*has no column 'txt'; its columns are \['id', 'text'\]"),
        (lambda d: {"source": "parquet", "path": str(_parquet(d)), "text_column": "txt"},
         r"corpus\.text_column: .*has no column 'txt'; its columns are \['id', 'text'\]"),
        (lambda d: {"source": "dataset", "path": str(save_text_dataset(d / "ds", ["a b"])), "text_column": "txt"},
         r"corpus\.text_column: .*has no column 'txt'; its columns are \['text'\]"),
        (lambda d: {"source": "text", "path": str(_latin1(d))},
         r"corpus\.path: .*latin1\.txt line 2 is not UTF-8 .*convert the file to UTF-8"),
        (lambda d: {"source": "dataset", "path": str(_not_a_dataset(d))},
         r"corpus\.path: the datasets library cannot open .*save_to_disk"),
        (lambda d: {"source": "parquet", "path": str(_latin1(d).rename(d / "bad.parquet"))},
         r"corpus\.path: .*bad\.parquet is not a Parquet file"),
        (lambda d: {"source": "generated", "path": str(d)}, r"corpus: path is for a file-based source"),
        (lambda d: {"source": "text"}, r"corpus: source: text needs path"),
    ],
)
def test_a_bad_corpus_is_named_when_the_config_loads(tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, {"corpus": make(tmp_path)}))


def _jsonl(folder: Path) -> Path:
    (folder / "c.jsonl").write_text('{"id": 1, "text": "a b"}\n')
    return folder / "c.jsonl"


def _parquet(folder: Path) -> Path:
    pl.DataFrame({"id": [1], "text": ["a b"]}).write_parquet(folder / "c.parquet")
    return folder / "c.parquet"


def _latin1(folder: Path) -> Path:
    (folder / "latin1.txt").write_bytes("first line\nsecond caf\xe9 line\n".encode("latin-1"))
    return folder / "latin1.txt"


def _not_a_dataset(folder: Path) -> Path:
    (folder / "notds").mkdir()
    (folder / "notds" / "readme.txt").write_text("not a dataset")
    return folder / "notds"


def test_moved_keys_and_a_pretrained_model_on_generated_text_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"activations\.corpus_seq_len has moved: write corpus\.seq_len"):
        load_config(write_config(tmp_path, {"activations": {"corpus_seq_len": 24}}))
    with pytest.raises(ConfigError, match=r"sae\.ce_eval_texts has moved: .*corpus\.eval_tokens"):
        load_config(write_config(tmp_path, {"sae": {"ce_eval_texts": 8}}))
    from interp_assets.config import parse_config
    from helpers import tiny_config_dict

    data = tiny_config_dict()
    data["model"] = {"source": "pretrained", "name": "Qwen/Qwen2.5-3B-Instruct", "path": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"corpus\.source: generated is the tiny model's template sentences.*"
                                          r"corpus\.allow_generated_with_pretrained: true"):
        parse_config(data)
    data["corpus"] = {"allow_generated_with_pretrained": True}
    assert parse_config(data).corpus.source == "generated"


@pytest.mark.slow
def test_a_corpus_too_small_for_its_budget_fails_before_anything_is_written(tmp_path: Path,
                                                                             tiny_model_storage: Path) -> None:
    """Cached (activations) and streamed (saes): the run fails naming the budget and the fix,
    and neither activations nor an SAE folder exists afterwards."""
    corpus_file = tmp_path / "small.txt"
    corpus_file.write_text("Mary gave a drink to John.\nParis is the capital of France.\n" * 20)
    for data_source in ("cached", "stream"):
        root = tmp_path / data_source
        root.mkdir()
        config_path = write_config(root, {"sae": {"data_source": data_source}, "corpus": {
            "source": "text", "path": str(corpus_file), "text_documents": "line", "seq_len": 16,
            "max_tokens": 1_000_000, "eval_tokens": 64, "held_out_fraction": 0.5}})
        config = load_config(config_path)
        seed_tiny_model(config.storage.location, tiny_model_storage)
        defs = build_definitions(config_path)
        selection = ["activations"] if data_source == "cached" else ["saes"]
        with dg.instance_for_test() as instance:
            result = dg.materialize(list(defs.assets or []), selection=in_experiment(selection), instance=instance,
                                    resources=dict(defs.resources or {}), raise_on_error=False,
                                    tags={"dagster/asset_partition_range_start": "1",
                                          "dagster/asset_partition_range_end": "2"})
            assert not result.success
            # The worker's exception, as the UI shows it on the run's event log.
            logs = "\n".join(entry.dagster_event.engine_event_data.error.message
                             for entry in instance.all_logs(result.run_id)
                             if entry.dagster_event and entry.dagster_event.is_engine_event
                             and entry.dagster_event.engine_event_data.error)
        assert "corpus.max_tokens: the training documents of" in logs and "lower corpus.max_tokens or add text" in logs
        storage = Path(config.storage.location)
        assert not (storage / "activations").exists() or not list((storage / "activations").rglob("manifest.json"))
        assert not (storage / "saes").exists() or not list((storage / "saes").rglob("sae_weights.safetensors"))
        assert corpus_spec(config).max_tokens == 1_000_000
