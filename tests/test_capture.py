"""Activation capture: one forward pass per batch whatever the number of layers, shards bounded
in size, and shard contents equal to what the hooks see directly."""

from __future__ import annotations


import pytest
import safetensors.torch
import torch

from interp_assets.core.behaviours import generate_corpus, generate_prompts
from interp_assets.core.capture import CaptureSource, capture_activations
from interp_assets.core.hooks import recording
from interp_assets.core.modeling import load_model_and_tokenizer, tokenize_batches
from interp_assets.config import TinyModelSection
from interp_assets.core.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def briefly_trained(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A tiny model trained for a few steps: real weights and tokenizer, built in seconds."""
    out = tmp_path_factory.mktemp("tiny-brief")
    build_tiny_model(TinyModelSection(train_steps=5, corpus_sentences=3000).spec(), out, log=lambda m: None)
    return load_model_and_tokenizer(out, "float32", "cpu")


def _capture(model, tokenizer, layers, sources, shard_max_vectors=50, dtype=torch.float32):  # noqa: ANN001, ANN202
    written: dict[tuple[int, str], list[dict[str, torch.Tensor]]] = {}

    def write_shard(layer: int, source: str, index: int, tensors: dict[str, torch.Tensor]) -> dict:
        # Round-trip through safetensors bytes, as the worker stores them.
        tensors = safetensors.torch.load(safetensors.torch.save(tensors))
        written.setdefault((layer, source), []).append(tensors)
        assert index == len(written[(layer, source)]) - 1
        return {"n_vectors": tensors["activations"].shape[0]}

    records = capture_activations(
        model, tokenizer, layers, "mlp_post", sources, batch_size=8, dtype=dtype,
        shard_max_vectors=shard_max_vectors, write_shard=write_shard,
    )
    return records, written


def _count_forward_calls(model) -> list[int]:  # noqa: ANN001
    calls = [0]
    model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_k_layers_cost_one_forward_pass_per_batch(briefly_trained) -> None:  # noqa: ANN001
    model, tokenizer = briefly_trained
    texts = generate_corpus(20, seed=1)  # 20 texts, batch 8 -> 3 batches
    calls = _count_forward_calls(model)
    for layers in ([2], [0, 1, 2, 3, 4, 5]):
        calls[0] = 0
        _capture(model, tokenizer, layers, [CaptureSource("corpus", texts)])
        assert calls[0] == 3, f"{len(layers)} layers took {calls[0]} forward passes for 3 batches"


def test_shards_are_bounded_and_hold_exactly_what_the_hooks_see(briefly_trained) -> None:  # noqa: ANN001
    model, tokenizer = briefly_trained
    prompts = [p.clean for p in generate_prompts("ioi", 12, seed=3)]
    corpus = generate_corpus(10, seed=2)
    layers = [1, 3]
    sources = [CaptureSource("corpus", corpus, max_tokens=9), CaptureSource("prompts", prompts, last_n_tokens=5)]
    records, written = _capture(model, tokenizer, layers, sources, shard_max_vectors=16)

    # Reference: the same texts one at a time, straight from the hooks.
    for layer in layers:
        for source in sources:
            shards = written[(layer, source.name)]
            assert all(s["activations"].shape[0] <= 16 for s in shards)
            assert all(s["activations"].shape[0] == 16 for s in shards[:-1])
            assert [r["n_vectors"] for r in records[layer][source.name]] == [s["activations"].shape[0] for s in shards]
            merged = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
            expected_vectors, expected_tokens = [], []
            for batch in tokenize_batches(tokenizer, source.texts, 1, torch.device("cpu"), source.max_tokens):
                with torch.no_grad(), recording(model, [layer], "mlp_post") as direct:
                    model(input_ids=batch.input_ids)
                keep = slice(-source.last_n_tokens, None) if source.last_n_tokens else slice(None)
                expected_vectors.append(direct[layer][0, keep])
                expected_tokens.append(batch.input_ids[0, keep])
            torch.testing.assert_close(merged["activations"], torch.cat(expected_vectors), rtol=1e-4, atol=1e-5)
            assert torch.equal(merged["token_ids"].long(), torch.cat(expected_tokens))
            assert merged["activations"].shape[1] == model.config.intermediate_size
    n_prompt_vectors = sum(s["activations"].shape[0] for s in written[(1, "prompts")])
    assert n_prompt_vectors == 5 * len(prompts)


def test_bf16_storage(briefly_trained) -> None:  # noqa: ANN001
    model, tokenizer = briefly_trained
    _, written = _capture(model, tokenizer, [0], [CaptureSource("corpus", generate_corpus(4, 0))], dtype=torch.bfloat16)
    assert written[(0, "corpus")][0]["activations"].dtype == torch.bfloat16


def test_peak_buffer_is_one_shard_not_the_dataset(briefly_trained, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Rows held in memory between flushes never exceed shard size + one batch, whatever the total."""
    model, tokenizer = briefly_trained
    import interp_assets.core.capture as capture

    peak = [0]
    original = capture._Buffer

    class Watched(original):  # type: ignore[misc, valid-type]
        def __setattr__(self, name: str, value: object) -> None:
            super().__setattr__(name, value)
            if name == "rows":
                peak[0] = max(peak[0], int(value))  # type: ignore[arg-type]

    monkeypatch.setattr(capture, "_Buffer", Watched)
    texts = generate_corpus(64, seed=5)
    records, _ = _capture(model, tokenizer, [0], [CaptureSource("corpus", texts, max_tokens=12)], shard_max_vectors=32)
    total = sum(r["n_vectors"] for r in records[0]["corpus"])
    assert total > 10 * 32
    assert peak[0] < 32 + 8 * 12  # one shard + one batch (8 texts x 12 tokens)


def test_shards_waiting_for_the_writer_thread_are_bounded_and_every_checkpoint_follows_its_shards(
    briefly_trained, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    """Shards are written on a background thread while the next batches run: however slow the
    storage, at most (layers + 1) writes wait in memory, and a checkpoint is saved only once every
    shard it lists is written."""
    import threading
    import time

    import interp_assets.core.capture as capture

    model, tokenizer = briefly_trained
    layers, lock = [0, 1, 2], threading.Lock()
    counts = {"queued": 0, "done": 0, "peak": 0}
    original_submit = capture._ShardWriter.submit

    def counting_submit(self, task):  # noqa: ANN001, ANN202
        def counted() -> None:
            task()
            with lock:
                counts["done"] += 1

        original_submit(self, counted)
        with lock:
            counts["queued"] += 1
            counts["peak"] = max(counts["peak"], counts["queued"] - counts["done"])

    monkeypatch.setattr(capture._ShardWriter, "submit", counting_submit)
    written: set[tuple[int, str, int]] = set()
    checkpoints_ok: list[bool] = []

    def slow_write(layer: int, source: str, index: int, tensors: dict[str, torch.Tensor]) -> dict:
        time.sleep(0.02)  # storage far slower than the forward pass
        written.add((layer, source, index))
        return {"index": index, "n_vectors": int(tensors["activations"].shape[0])}

    def on_progress(progress) -> None:  # noqa: ANN001
        listed = {(layer, source, record["index"]) for layer, by_source in progress.shards.items()
                  for source, records in by_source.items() for record in records}
        checkpoints_ok.append(listed <= written)

    capture_activations(model, tokenizer, layers, "mlp_post", [CaptureSource("corpus", generate_corpus(64, seed=5),
                        max_tokens=12)], batch_size=8, dtype=torch.float32, shard_max_vectors=16,
                        write_shard=slow_write, on_progress=on_progress)
    assert len(written) > 10 * len(layers) and len(checkpoints_ok) >= 8  # a checkpoint per batch
    assert all(checkpoints_ok)
    assert 2 <= counts["peak"] <= len(layers) + 1, counts  # the writer did lag behind, within its bound


def test_a_failed_shard_write_stops_capture_with_that_error_and_no_later_checkpoint(briefly_trained) -> None:  # noqa: ANN001
    model, tokenizer = briefly_trained
    written: list[int] = []
    checkpoints: list = []

    def failing_write(layer: int, source: str, index: int, tensors: dict[str, torch.Tensor]) -> dict:
        if len(written) == 30:
            raise OSError(28, "No space left on device")
        written.append(index)
        return {"index": index, "n_vectors": int(tensors["activations"].shape[0])}

    with pytest.raises(OSError, match="No space left on device"):
        capture_activations(model, tokenizer, [0, 1], "mlp_post", [CaptureSource("corpus", generate_corpus(64, seed=5),
                            max_tokens=12)], batch_size=8, dtype=torch.float32, shard_max_vectors=16,
                            write_shard=failing_write, on_progress=checkpoints.append)
    assert len(written) == 30
    listed = [sum(len(records) for by_source in p.shards.values() for records in by_source.values()) for p in checkpoints]
    assert listed and max(listed) <= 30  # no checkpoint names the shard that failed, or any after it


def test_a_capture_resumed_from_any_checkpoint_writes_the_same_shards(briefly_trained) -> None:  # noqa: ANN001
    """Resuming from a progress point (mid-batch, end of batch, end of a source) re-reads only
    from there and ends with exactly the shards of an uninterrupted capture."""
    import random

    from interp_assets.core.capture import CaptureProgress

    model, tokenizer = briefly_trained
    sources = [CaptureSource("corpus", generate_corpus(40, seed=4), max_tokens=9),
               CaptureSource("prompts", [p.clean for p in generate_prompts("ioi", 20, seed=6)], last_n_tokens=5)]
    layers = [0, 2]

    def run(resume_from: CaptureProgress | None = None):  # noqa: ANN202
        shards: dict[tuple[int, str, int], bytes] = {}
        points: list[CaptureProgress] = []

        def write_shard(layer: int, source: str, index: int, tensors: dict[str, torch.Tensor]) -> dict:
            shards[(layer, source, index)] = safetensors.torch.save(tensors)
            return {"index": index, "n_vectors": int(tensors["activations"].shape[0])}

        calls = _count_forward_calls(model)
        records = capture_activations(model, tokenizer, layers, "mlp_post", sources, batch_size=8,
                                      dtype=torch.float32, shard_max_vectors=28, write_shard=write_shard,
                                      resume_from=resume_from, on_progress=points.append)
        return records, shards, points, calls[0]

    reference, reference_shards, points, full_passes = run()
    assert any(p.rows_written > 0 for p in points) and points[-1].source == len(sources)
    for point in [points[0], *random.Random(0).sample(points[1:-1], 4), points[-1]]:
        records, shards, _, passes = run(CaptureProgress.from_json(point.to_json()))
        assert records == reference
        written_before = {(layer, name, r["index"]) for layer, by_source in point.shards.items()
                          for name, recs in by_source.items() for r in recs}
        assert set(shards) == set(reference_shards) - written_before  # nothing written twice
        assert all(shards[key] == reference_shards[key] for key in shards)  # byte for byte
        assert passes < full_passes or point is points[0]
