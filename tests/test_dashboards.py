"""Feature dashboards on the real tiny model (built once per session) with a random-weight SAE,
so each property is one of the code: the streamed top-k contexts are exactly a brute-force sort of
every activation, the state's size does not grow with the tokens, the logit tables follow the
decoder direction through down_proj, the final norm and the unembedding, and the layer's JSON has
the fields of SAEDashboard's Neuronpedia feature format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_config

from interp_assets.artifacts import tiny_model_relpath
from interp_assets.config import load_config
from interp_assets.core.dashboard_export import NEURONPEDIA_FEATURE_FIELDS, neuronpedia_batch
from interp_assets.core.dashboards import (
    ACTIVATION_HISTOGRAM_EDGES, LOGIT_HISTOGRAM_BINS, DashboardSettings, TopContexts, _stable_top_k, collect_top_contexts, context_rows,
    decoder_logit_effects, density_histogram, feature_label, final_norm_weight, latent_rows,
)
from interp_assets.core.hooks import forward_until_recorded, hook_module, recording
from interp_assets.core.modeling import load_model_and_tokenizer
from interp_assets.core.sae import SaeSpec, SparseAutoencoder
from interp_assets.tasks.feature_dashboards import dashboard_windows, features_markdown, inconsistent_contexts

LAYER, HOOK = 2, "mlp_post"
SETTINGS = DashboardSettings(top_k=6, context_before=4, context_after=2, n_logit_tokens=5, logit_chunk=100)


@pytest.fixture(scope="module")
def tiny(tiny_model_storage: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    config = load_config(write_config(tmp_path_factory.mktemp("dash"), {"dashboards": {"n_texts": 48, "batch_size": 16}}))
    model, tokenizer = load_model_and_tokenizer(tiny_model_storage / tiny_model_relpath(config), "float32", "cpu")
    d_in = model.config.intermediate_size
    sae = SparseAutoencoder(SaeSpec(d_in=d_in, d_sae=4 * d_in))
    sae.initialize(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)  # sparser than a bare random projection: some latents fire rarely
    return config, model, tokenizer, sae


def _dense_activations(model, sae, batches):  # noqa: ANN001, ANN202
    """Brute force: every real token's SAE activations [n_tokens, d_sae] in stream order, with its
    (window, position), computed batch by batch exactly as the dashboards compute them."""
    rows, where, window = [], [], 0
    with torch.no_grad(), recording(model, [LAYER], HOOK, stop_after_deepest=True) as records:
        for ids, mask in batches:
            forward_until_recorded(model, input_ids=ids, attention_mask=mask, use_cache=False)
            x = records[LAYER].float()
            acts = sae.encode(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)
            for b in range(ids.shape[0]):
                for t in range(ids.shape[1]):
                    if mask[b, t]:
                        rows.append(acts[b, t])
                        where.append((window + b, t))
            window += ids.shape[0]
    return torch.stack(rows), where


def test_top_contexts_are_exactly_the_brute_force_top_activations(tiny) -> None:  # noqa: ANN001
    config, model, tokenizer, sae = tiny
    text = dashboard_windows(config, tokenizer)
    assert len(text.batches) == 3 and text.n_windows == 48
    state = collect_top_contexts(model, sae, LAYER, HOOK, text.batches, SETTINGS)
    dense, where = _dense_activations(model, sae, text.batches)
    tokens_by_place = {}
    windows = [(row, mask_row) for ids, mask in text.batches for row, mask_row in zip(ids, mask, strict=True)]
    for window, (ids, mask) in enumerate(windows):
        for t in range(len(ids)):
            if mask[t]:
                tokens_by_place[(window, t)] = int(ids[t])
    assert state.n_tokens == dense.shape[0] == len(where)
    row_of = {place: i for i, place in enumerate(where)}
    assert torch.equal(state.fire_count, (dense > 0).sum(dim=0))
    n_ties = 0
    for latent in range(dense.shape[1]):
        column = dense[:, latent]
        order = torch.sort(column, descending=True, stable=True).indices  # ties: the earlier token first
        expected = [int(i) for i in order[: SETTINGS.top_k] if column[i] > 0]
        kept = int((state.window[latent] >= 0).sum())
        assert kept == len(expected), latent
        got_places = list(zip(state.window[latent, :kept].tolist(), state.position[latent, :kept].tolist(), strict=True))
        assert got_places == [where[i] for i in expected], latent
        assert torch.equal(state.values[latent, :kept], column[expected]), latent
        n_ties += len(set(column[expected].tolist())) < kept
        # Each context holds this latent's activation on every token around the max, in its window.
        for rank, i in enumerate(expected):
            window, position = where[i]
            for offset in range(-SETTINGS.context_before, SETTINGS.context_after + 1):
                slot = SETTINGS.context_before + offset
                place = (window, position + offset)
                if place in tokens_by_place:
                    assert int(state.context_tokens[latent, rank, slot]) == tokens_by_place[place]
                    assert float(state.context_acts[latent, rank, slot]) == float(dense[row_of[place], latent])
                else:
                    assert int(state.context_tokens[latent, rank, slot]) == -1
        if kept:
            assert state.activation_sum[latent].item() == pytest.approx(column.double().sum().item(), rel=1e-9)
        # Its histogram of firing activations: numpy's over the same log10 edges, outer bins open.
        firing = column[column > 0].log10().numpy()
        edges = np.array([-np.inf, *ACTIVATION_HISTOGRAM_EDGES[1:-1], np.inf])
        assert state.activation_histogram[latent].tolist() == np.histogram(firing, bins=edges)[0].tolist(), latent
    assert n_ties > 0, "the generated corpus repeats sentence openings: some top-k must hold ties"


def test_ties_go_to_the_earlier_token() -> None:
    flat = torch.tensor([[1.0, 0.0], [3.0, 2.0], [3.0, 2.0], [3.0, 0.0], [2.0, 2.0]])
    values, index = _stable_top_k(flat, 2)
    assert index.tolist() == [[1, 2], [1, 2]] and values.tolist() == [[3.0, 3.0], [2.0, 2.0]]
    state = TopContexts(2, DashboardSettings(top_k=2, context_before=0, context_after=0))
    for _ in range(3):  # the same batch three times: the first window keeps both places
        state.update(flat[None], torch.arange(5)[None, :])  # [1 window, 5 tokens, 2 latents]
    assert state.window.tolist() == [[0, 0], [0, 0]] and state.position.tolist() == [[1, 2], [1, 2]]


def test_state_size_is_d_sae_by_k_whatever_the_number_of_tokens(tiny) -> None:  # noqa: ANN001
    config, model, tokenizer, sae = tiny
    batches = dashboard_windows(config, tokenizer).batches
    small = collect_top_contexts(model, sae, LAYER, HOOK, batches[:1], SETTINGS)
    large = collect_top_contexts(model, sae, LAYER, HOOK, batches * 4, SETTINGS)
    assert large.n_tokens == 4 * sum(int(mask.sum()) for _, mask in batches) > 4 * small.n_tokens
    d_sae, k, width = sae.spec.d_sae, SETTINGS.top_k, SETTINGS.context_width
    expected = {"values": (d_sae, k), "window": (d_sae, k), "position": (d_sae, k), "context_tokens": (d_sae, k, width),
                "context_acts": (d_sae, k, width), "fire_count": (d_sae,), "activation_sum": (d_sae,),
                "activation_histogram": (d_sae, len(ACTIVATION_HISTOGRAM_EDGES) - 1)}
    assert small.state_shapes() == large.state_shapes() == expected


def test_logit_tables_follow_the_decoder_through_down_proj_norm_and_unembedding(tiny) -> None:  # noqa: ANN001
    _, model, _, sae = tiny
    tables = decoder_logit_effects(model, sae, LAYER, HOOK, SETTINGS)
    assert tables["promoted_ids"].shape == (sae.spec.d_sae, SETTINGS.n_logit_tokens)
    # The reference for a few latents: what the decoder row adds to the residual stream when it is
    # written into down_proj's input, scaled by the final norm's weight, read by the unembedding.
    down = hook_module(model, LAYER, HOOK)
    unembed = model.get_output_embeddings().weight
    for latent in (0, 17, sae.spec.d_sae - 1):
        with torch.no_grad():
            residual = down(sae.W_dec[latent]) - down(torch.zeros_like(sae.W_dec[latent]))
            logits = unembed @ (residual * final_norm_weight(model))
        top, bottom = logits.topk(SETTINGS.n_logit_tokens), logits.topk(SETTINGS.n_logit_tokens, largest=False)
        assert tables["promoted_ids"][latent].tolist() == top.indices.tolist()
        assert tables["suppressed_ids"][latent].tolist() == bottom.indices.tolist()
        torch.testing.assert_close(tables["promoted_logits"][latent], top.values, rtol=1e-5, atol=1e-5)
        # The histogram of the effect over the vocabulary: numpy's, up to a value on a bin edge.
        heights, edges = np.histogram(logits.double().numpy(), bins=LOGIT_HISTOGRAM_BINS)
        assert int(tables["histogram_heights"][latent].sum()) == unembed.shape[0]
        assert np.abs(tables["histogram_heights"][latent].numpy() - heights).sum() <= 2
        np.testing.assert_allclose(tables["histogram_values"][latent].numpy(), (edges[:-1] + edges[1:]) / 2,
                                   rtol=1e-4, atol=1e-4)
    assert (tables["promoted_logits"][:, 0] > tables["suppressed_logits"][:, 0]).all()
    # dashboards.logit_latents: the same tables for the chosen latents only, the others marked empty.
    some = decoder_logit_effects(model, sae, LAYER, HOOK, SETTINGS, latents=torch.tensor([17, 3, 17]))
    assert some["has_logits"].nonzero().flatten().tolist() == [3, 17] and tables["has_logits"].all()
    for key in ("promoted_ids", "suppressed_ids", "histogram_heights"):
        assert torch.equal(some[key][[3, 17]], tables[key][[3, 17]]) and not some[key][0].any(), key


def test_layer_json_has_the_neuronpedia_feature_fields_and_labels_read_well(tiny) -> None:  # noqa: ANN001
    config, model, tokenizer, sae = tiny
    text = dashboard_windows(config, tokenizer)
    state = collect_top_contexts(model, sae, LAYER, HOOK, text.batches, SETTINGS)
    decode = lambda token: tokenizer.decode([token])  # noqa: E731
    latents = latent_rows(state, decoder_logit_effects(model, sae, LAYER, HOOK, SETTINGS), decode)
    contexts = context_rows(state, decode)
    assert inconsistent_contexts(latents, contexts, SETTINGS.top_k) == 0
    document = neuronpedia_batch(latents, contexts, model_id="tiny-qwen2", layer=LAYER, sae_set="mlp-post-test",
                                 n_prompts_total=text.n_windows, n_tokens_in_prompt=text.seq_len, dataset=text.description)
    loaded = json.loads(json.dumps(document, allow_nan=False))
    assert set(loaded) == {"model_id", "layer", "sae_set", "features"}
    assert len(loaded["features"]) == sae.spec.d_sae
    firing = next(f for f, row in zip(loaded["features"], latents, strict=True) if row["n_firing"] >= SETTINGS.top_k)
    assert set(firing) == set(NEURONPEDIA_FEATURE_FIELDS)
    assert len(firing["activations"]) == SETTINGS.top_k and len(firing["pos_str"]) == SETTINGS.n_logit_tokens
    top = firing["activations"][0]
    assert set(top) == {"bin_min", "bin_max", "bin_contains", "tokens", "values"}
    assert len(top["tokens"]) == len(top["values"]) and max(top["values"]) == top["bin_max"]
    assert 0 < firing["frac_nonzero"] <= 1
    assert sum(firing["freq_hist_data_bar_heights"]) == latents[firing["feature_index"]]["n_firing"]
    assert firing["freq_hist_data_bar_values"] == sorted(firing["freq_hist_data_bar_values"])
    assert all(height > 0 for height in firing["freq_hist_data_bar_heights"])
    assert sum(firing["logits_hist_data_bar_heights"]) == model.get_output_embeddings().weight.shape[0]
    assert len(firing["logits_hist_data_bar_values"]) == LOGIT_HISTOGRAM_BINS
    row = latents[firing["feature_index"]]
    label = feature_label(row)
    assert label.startswith(repr(row["top_activating_tokens"][0])) and repr(row["promoted_tokens"][0]) in label
    assert feature_label({**row, "n_firing": 0}) == "dead"
    table = features_markdown(latents, contexts, [row["latent"]])
    assert table.splitlines()[2].startswith(f"| {row['latent']} |") and "**[" in table
    histogram = density_histogram([r["n_firing"] for r in latents], state.n_tokens)
    assert sum(histogram["counts"]) + histogram["dead"] == sae.spec.d_sae


def test_dashboards_read_the_held_out_windows_and_no_training_window(tiny, tmp_path: Path) -> None:  # noqa: ANN001
    from interp_assets.tasks.common import corpus_windows

    _, _, tokenizer, _ = tiny
    config = load_config(write_config(tmp_path, {"dashboards": {"n_texts": 5000}}))
    text = dashboard_windows(config, tokenizer)
    held = corpus_windows(config, tokenizer, held_out=True)
    assert text.n_windows == len(held) < 5000  # "at most n_texts": all the held-out windows there are
    ids = torch.cat([batch_ids for batch_ids, _ in text.batches])
    mask = torch.cat([batch_mask for _, batch_mask in text.batches]).bool()
    assert torch.equal(mask, held >= 0) and torch.equal(ids[mask], held[held >= 0].long())
    trained = {tuple(row[row >= 0].tolist()) for row in corpus_windows(config, tokenizer, held_out=False)}
    assert not trained & {tuple(row[row >= 0].tolist()) for row in held}
