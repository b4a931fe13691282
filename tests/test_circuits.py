"""The science of phases 4 and 5 on the real tiny model (built once per session), with SAEs whose
weights are random: each identity below holds for any SAE, so a failure is a bug in the hooks,
the splicing or the bookkeeping, not a property of training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_config

from interp_assets.config import load_config
from interp_assets.core.attribution import EMBEDDING_LAYER, LOGIT, AttributionSettings, attribution_graph
from interp_assets.core.graph_export import graph_json, labels_from, upload_name
from interp_assets.core.influence import cumulative_scores, node_influence, normalize_matrix
from interp_assets.core.behaviours import generate_prompts
from interp_assets.core.hooks import hooked, recording
from interp_assets.core.interventions import ALL_POSITIONS, Experiment, InterventionRunner, SaeCache, plan_experiments
from interp_assets.core.modeling import load_model_and_tokenizer
from interp_assets.core.prompt_pairs import logit_diff, run_logits, tokenize_pairs
from interp_assets.core.sae import SaeSpec, SparseAutoencoder
from interp_assets.artifacts import tiny_model_relpath
from neuronpedia_schema import neuronpedia_graph_problems
from resources.storage import ArtifactStore

HOOK = "mlp_post"
LAYERS = [2, 3, 4]


@pytest.fixture(scope="module")
def lab(tiny_model_storage: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    config = load_config(write_config(tmp_path_factory.mktemp("circuits")))
    model_dir = ArtifactStore(str(tiny_model_storage)).local_dir(tiny_model_relpath(config))
    model, tokenizer = load_model_and_tokenizer(model_dir, "float32", "cpu")
    pairs = _ioi_pairs(tokenizer, 24)
    saes = {layer: _random_sae(model.config.intermediate_size, 2 * model.config.intermediate_size, layer) for layer in LAYERS}
    return model, tokenizer, pairs, saes


def _ioi_pairs(tokenizer, n: int):  # noqa: ANN001, ANN202
    prompts = generate_prompts("ioi", n, seed=5)
    return tokenize_pairs(tokenizer, [p.clean for p in prompts], [p.corrupted for p in prompts],
                          [p.target for p in prompts], [p.foil for p in prompts])


def _random_sae(d_in: int, d_sae: int, seed: int) -> SparseAutoencoder:
    sae = SparseAutoencoder(SaeSpec(d_in=d_in, d_sae=d_sae))
    sae.initialize(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)  # a few features off, as in a trained SAE
    return sae


def _runner(lab, **kwargs) -> InterventionRunner:  # noqa: ANN001
    model, tokenizer, pairs, saes = lab
    return InterventionRunner(model, saes, HOOK, {"test": pairs, "patching": pairs}, tokenizer.pad_token_id,
                              circuit_layers=LAYERS, batch_size=10, **kwargs)


def test_pairs_align_from_the_end_and_the_model_has_the_behaviour(lab) -> None:  # noqa: ANN001
    model, tokenizer, pairs, _ = lab
    assert len(pairs) == 24 and pairs.n_unequal_length == 0
    batch = pairs.batch(range(len(pairs)), "cpu", tokenizer.pad_token_id)
    last = batch.position_of_offset(-1)
    assert torch.equal(last, batch.lengths - 1)
    assert torch.equal(batch.clean_ids[torch.arange(batch.size), last], batch.clean_ids[torch.arange(batch.size), batch.lengths - 1])
    with torch.no_grad():
        clean = logit_diff(run_logits(model, batch.clean_ids, batch), batch)
        corrupt = logit_diff(run_logits(model, batch.corrupted_ids, batch), batch)
    assert (clean > 0).float().mean() > 0.9 and (corrupt < 0).float().mean() > 0.9


def test_patching_controls_recover_exactly_zero_and_one(lab) -> None:  # noqa: ANN001
    runner = _runner(lab)
    ld_clean, ld_corrupt = runner.baseline("patching")
    nothing = runner.run(Experiment("n", "activation_patching", "control_nothing", "patching"))
    everything = runner.run(Experiment("e", "activation_patching", "control_everything", "patching"))
    assert torch.equal(nothing.ld, ld_corrupt)
    torch.testing.assert_close(everything.ld, ld_clean, atol=1e-4, rtol=0)
    assert float(everything.kl.abs().max()) < 1e-5
    # Patching one layer's MLP everywhere restores part of the behaviour, never more than all of it.
    layer_all = runner.run(Experiment("l", "activation_patching", "raw", "patching", layer=1, offset=ALL_POSITIONS))
    recovery = (layer_all.ld.mean() - ld_corrupt.mean()) / (ld_clean.mean() - ld_corrupt.mean())
    assert 0.0 < float(recovery) < 1.0


def test_sae_feature_patching_with_the_clean_error_term_is_raw_patching(lab) -> None:  # noqa: ANN001
    """decode(f_clean) + ε_corrupt at one position: with the SAE's own reconstruction error it is
    not the clean activation, so it must differ from raw patching at that site, but patching
    features AND errors (= raw) must equal raw."""
    runner = _runner(lab)
    raw = runner.run(Experiment("r", "activation_patching", "raw", "patching", layer=2, offset=-1))
    features = runner.run(Experiment("f", "activation_patching", "sae_features", "patching", layer=2, offset=-1))
    assert not torch.allclose(raw.ld, features.ld)
    nothing = runner.run(Experiment("n", "activation_patching", "control_nothing", "patching"))
    assert not torch.allclose(raw.ld, nothing.ld)


def test_a_patching_sweep_reads_each_sae_once_and_holds_one_beyond_the_key_layers(lab) -> None:  # noqa: ANN001
    """The interventions task's SaeCache: key-layer SAEs stay loaded, any other layer's is read
    when the sweep reaches it and dropped for the next; results equal those with every SAE held."""
    model, tokenizer, pairs, saes = lab
    d_in = model.config.intermediate_size
    every = {**saes, 1: _random_sae(d_in, 2 * d_in, 1)}
    reads: list[int] = []

    def load(layer: int) -> SparseAutoencoder:
        reads.append(layer)
        return every[layer]

    cache = SaeCache(load, [1, 2, 3, 4], resident=[3, 4], device="cpu")
    assert reads == [3, 4] and 1 in cache and 2 in cache and reads == [3, 4]  # `in` reads nothing
    sets = {"test": pairs, "patching": pairs}
    lazy = InterventionRunner(model, cache, HOOK, sets, tokenizer.pad_token_id, circuit_layers=[3, 4], batch_size=10)
    eager = InterventionRunner(model, every, HOOK, sets, tokenizer.pad_token_id, circuit_layers=[3, 4], batch_size=10)
    sweep = [e for e in plan_experiments([(3, -1, 0), (4, -1, 1)], [1, 2, 3, 4], pairs.max_length, 1, 2, 2)]
    for experiment in sweep:
        held = {layer for layer in (1, 2) if cache._visitor is not None and cache._visitor[0] == layer}
        assert len(held) <= 1
        torch.testing.assert_close(lazy.run(experiment).ld, eager.run(experiment).ld, atol=1e-5, rtol=0)
    assert sorted(reads) == [1, 2, 3, 4] and cache.loads == 4  # each layer's SAE read once


def test_ablating_a_feature_that_is_never_active_changes_nothing(lab) -> None:  # noqa: ANN001
    model, tokenizer, pairs, saes = lab
    runner = _runner(lab)
    acts = runner._clean_activations("test", 3)
    last = torch.tensor([len(ids) - 1 for ids in pairs.clean])
    features = saes[3].encode(acts[torch.arange(len(pairs)), last])  # [n, d_sae] at offset −1
    silent = int((features.amax(0) == 0).nonzero()[0])
    busy = int(features.mean(0).argmax())
    ld_clean, _ = runner.baseline("test")
    zero_silent = runner.run(Experiment("z", "feature_ablation", "zero", "test", nodes=((3, -1, silent),)))
    assert torch.equal(zero_silent.ld, ld_clean)
    zero_busy = runner.run(Experiment("b", "feature_ablation", "zero", "test", nodes=((3, -1, busy),)))
    assert not torch.equal(zero_busy.ld, ld_clean)


def _layer_gradients_and_deltas(model, batch, layers):  # noqa: ANN001, ANN202
    """∂m/∂x and x_clean − x_corrupt at each layer, straight from autograd on the plain model."""
    with torch.no_grad(), recording(model, layers, HOOK) as corrupt:
        run_logits(model, batch.corrupted_ids, batch)
        corrupt = dict(corrupt)
    captured = {}

    def keep(layer: int, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True) if layer == layers[0] else x
        captured[layer] = x
        return x

    with torch.enable_grad(), hooked(model, layers, HOOK, keep):
        ld = logit_diff(run_logits(model, batch.clean_ids, batch), batch)
        for x in captured.values():
            x.retain_grad()
        ld.sum().backward()
    return {layer: (captured[layer].grad, captured[layer].detach() - corrupt[layer]) for layer in layers}, batch


def test_node_attributions_decompose_each_layer_exactly(lab) -> None:  # noqa: ANN001
    """Σ features + Σ errors at a layer = Δx · ∂m/∂x: the SAE split loses nothing."""
    model, tokenizer, pairs, saes = lab
    settings = AttributionSettings(node_threshold=0.0, edge_threshold=1e9, max_nodes_per_layer=5, batch_size=24)
    graph = attribution_graph(model, saes, pairs, HOOK, settings, tokenizer.pad_token_id)
    batch = pairs.batch(range(len(pairs)), "cpu", tokenizer.pad_token_id)
    layer = LAYERS[0]  # the first key layer: its plain-model gradient sees every later layer
    grads, _ = _layer_gradients_and_deltas(model, batch, [layer])
    grad, delta = grads[layer]
    mask = batch.attention_mask.bool()[..., None]
    expected = float((grad * delta * mask).sum()) / len(pairs)
    assert graph.layer_totals[layer]["total_attribution"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # The threshold keeps no edge, so no feature or error node keeps a link: only embeddings stay.
    assert graph.edges == []
    assert {n.kind for n in graph.nodes} == {"embedding"} and len(graph.nodes) == pairs.max_length


def _finite_difference(model, batch, rows, moved, frozen, read, h: float = 1e-2):  # noqa: ANN001, ANN202
    """Central difference of ``read`` (layer, x → per-prompt value, or None: the metric) when
    ``moved`` = (layer, positions, direction) shifts x there by ±h on prompts ``rows``, with the
    ``frozen`` layers held at their clean activations (so only direct paths move)."""
    move_layer, positions, direction = moved
    clean = {}
    if frozen:
        with torch.no_grad(), recording(model, list(frozen), HOOK) as rec:
            run_logits(model, batch.clean_ids, batch)
            clean = {layer: rec[layer].clone() for layer in frozen}

    def value(step: float) -> torch.Tensor:
        out = {}

        def edit(layer: int, x: torch.Tensor) -> torch.Tensor | None:
            if layer == move_layer:
                x = x.clone()
                x[rows, positions] += step * direction
                return x
            if read[0] == layer:
                out["v"] = read[1](x)
            return clean[layer] if layer in clean else None

        hooks = sorted({move_layer, *frozen, *([read[0]] if read[0] is not None else [])})
        with torch.no_grad(), hooked(model, hooks, HOOK, edit):
            ld = logit_diff(run_logits(model, batch.clean_ids, batch), batch)
        return out["v"] if read[0] is not None else ld[rows]

    return (value(h) - value(-h)) / (2 * h)


def test_edges_across_non_adjacent_layers_and_into_the_logit_match_finite_differences(lab) -> None:  # noqa: ANN001
    """u (layer 2) → d (layer 4) is Δf_u · ∂(w_d f_d)/∂f_u with layer 3 frozen (a direct effect),
    w_d = ∂m/∂f_d; u → logit is Δf_u · ∂m/∂f_u with layers 3 and 4 frozen. Both recomputed by
    moving x_2 along u's decoder row (central finite difference) on the real tiny model."""
    model, tokenizer, pairs, saes = lab
    settings = AttributionSettings(node_threshold=0.0, edge_threshold=0.0, max_nodes_per_layer=4, batch_size=24)
    graph = attribution_graph(model, saes, pairs, HOOK, settings, tokenizer.pad_token_id)
    feature_edges = [e for e in graph.edges if e.target != LOGIT and graph.nodes[e.source].kind == "feature"
                     and graph.nodes[e.target].kind == "feature"]
    edge = max((e for e in feature_edges if graph.nodes[e.source].layer == 2 and graph.nodes[e.target].layer == 4),
               key=lambda e: abs(e.weight))
    up, down = graph.nodes[edge.source], graph.nodes[edge.target]
    batch = pairs.batch(range(len(pairs)), "cpu", tokenizer.pad_token_id)
    grads, _ = _layer_gradients_and_deltas(model, batch, [down.layer])
    g_down = grads[down.layer][0]
    p_up, p_down = batch.position_of_offset(up.offset), batch.position_of_offset(down.offset)
    rows = ((p_up >= 0) & (p_down >= 0)).nonzero(as_tuple=True)[0]
    p_up, p_down = p_up[rows], p_down[rows]
    sae_up, sae_down = saes[up.layer], saes[down.layer]
    with torch.no_grad():
        with recording(model, [up.layer], HOOK) as rec:
            run_logits(model, batch.corrupted_ids, batch)
            f_up_corrupt = sae_up.encode(rec[up.layer][rows, p_up])[:, up.feature]
        with recording(model, [up.layer], HOOK) as rec:
            run_logits(model, batch.clean_ids, batch)
            f_up_clean = sae_up.encode(rec[up.layer][rows, p_up])[:, up.feature]
    w_down = g_down[rows, p_down] @ sae_down.W_dec[down.feature]  # ∂m/∂f_d per prompt, held fixed
    moved = (up.layer, p_up, sae_up.W_dec[up.feature])
    derivative = _finite_difference(model, batch, rows, moved, frozen=[3],
                                    read=(down.layer, lambda x: sae_down.encode(x[rows, p_down])[:, down.feature]))
    expected = float(((f_up_clean - f_up_corrupt) * derivative * w_down).sum()) / len(pairs)
    assert edge.weight == pytest.approx(expected, rel=2e-2, abs=1e-6)
    # Without layer 3 frozen the derivative is the total one, which differs: the edge is direct.
    total = _finite_difference(model, batch, rows, moved, frozen=[],
                               read=(down.layer, lambda x: sae_down.encode(x[rows, p_down])[:, down.feature]))
    assert not torch.allclose(total, derivative, rtol=1e-3, atol=1e-6)

    logit_edge = next(e for e in graph.edges if e.source == edge.source and e.target == LOGIT)
    to_metric = _finite_difference(model, batch, rows, moved, frozen=[3, 4], read=(None, None))
    expected_logit = float(((f_up_clean - f_up_corrupt) * to_metric).sum()) / len(pairs)
    assert logit_edge.weight == pytest.approx(expected_logit, rel=2e-2, abs=1e-6)


def test_a_complete_graph_conserves_attribution_along_its_edges(lab) -> None:  # noqa: ANN001
    """With every node kept (4-latent SAEs, 8 prompts), a node's outgoing weights (to every later
    node and to the logit) sum to its attribution: the direct edges and the frozen-gradient
    weights w_d chain back to the total gradient exactly, for embeddings and features alike."""
    model, tokenizer, _, _ = lab
    pairs = _ioi_pairs(tokenizer, 8)
    d_mlp = model.config.intermediate_size
    saes = {layer: _random_sae(d_mlp, 4, layer) for layer in (2, 4)}
    settings = AttributionSettings(node_threshold=0.0, edge_threshold=0.0, max_nodes_per_layer=10**6, batch_size=8)
    graph = attribution_graph(model, saes, pairs, HOOK, settings, tokenizer.pad_token_id)
    assert len([n for n in graph.nodes if n.layer == 4]) == (4 + 1) * pairs.max_length
    outgoing: dict[int, float] = {}
    for e in graph.edges:
        outgoing[e.source] = outgoing.get(e.source, 0.0) + e.weight
    checked = [i for i, n in enumerate(graph.nodes) if n.layer in (EMBEDDING_LAYER, 2)]
    assert any(abs(graph.nodes[i].attribution) > 0.1 for i in checked if graph.nodes[i].kind == "embedding")
    for i in checked:
        assert outgoing.get(i, 0.0) == pytest.approx(graph.nodes[i].attribution, rel=1e-3, abs=1e-5), graph.nodes[i]


def test_influence_is_circuit_tracers_propagation_through_the_normalised_adjacency() -> None:
    """node_influence = e_logit · ((I − Â)⁻¹ − I) with Â the row-normalised |A|, on a small DAG."""
    edges = [(0, 1, 2.0), (0, 2, -1.0), (1, 2, 3.0), (1, LOGIT, 1.0), (2, LOGIT, -3.0), (0, LOGIT, 0.5), (3, 2, 0.0)]
    influence = node_influence(4, edges)
    adjacency = torch.zeros(5, 5, dtype=torch.float64)
    for source, target, weight in edges:
        adjacency[4 if target == LOGIT else target, source] = weight
    normalized = normalize_matrix(adjacency)
    assert torch.allclose(normalized.sum(1)[[1, 2, 4]], torch.ones(3, dtype=torch.float64))
    expected = (torch.linalg.inv(torch.eye(5, dtype=torch.float64) - normalized) - torch.eye(5, dtype=torch.float64))[4]
    assert influence == pytest.approx(expected[:4].tolist(), rel=1e-12)
    assert influence[3] == 0.0 and influence[2] > 0.5  # a node with no path to the logit has none
    scores = cumulative_scores(influence)
    assert min(scores) == scores[influence.index(max(influence))] and max(scores) == pytest.approx(1.0)


def test_graph_json_passes_neuronpedia_schema_and_upload_rules(lab) -> None:  # noqa: ANN001
    model, tokenizer, pairs, saes = lab
    longest = max(range(len(pairs)), key=lambda i: len(pairs.clean[i]))
    ids = pairs.clean[longest]
    for edge_threshold in (0.0, 1e-3):
        settings = AttributionSettings(node_threshold=0.0, edge_threshold=edge_threshold, max_nodes_per_layer=4, batch_size=24)
        graph = attribution_graph(model, saes, pairs, HOOK, settings, tokenizer.pad_token_id)
        document = graph_json(
            graph, slug=upload_name("tiny ioi/test"), scan=upload_name("interp-assets/tiny-qwen2"), prompt="p",
            prompt_tokens=tokenizer.convert_ids_to_tokens(ids), prompt_token_ids=ids,
            target_token_id=pairs.target_ids[longest], hook_names={k: f"h{k}" for k in LAYERS}, n_model_layers=6,
            metric_label="ld", feature_label=labels_from({(2, graph.nodes[-1].feature): "names"}),
        )
        assert neuronpedia_graph_problems(document) == []
        assert document["metadata"]["scan"] == "interp-assets-tiny-qwen2"
        assert isinstance(document["metadata"]["node_threshold"], float)
        by_type: dict[str, list[dict]] = {}
        for node in document["nodes"]:
            by_type.setdefault(node["feature_type"], []).append(node)
        assert set(by_type) == {"embedding", "cross layer transcoder", "mlp reconstruction error", "logit"}
        assert len(by_type["embedding"]) == pairs.max_length and len(by_type["logit"]) == 1
        logit = by_type["logit"][0]["node_id"]
        layer_of = {n["node_id"]: n["layer"] for n in document["nodes"]}
        pairs_linked = {(layer_of[link["source"]], layer_of[link["target"]]) for link in document["links"]}
        # Embeddings feed the first key layer, layer 2 feeds layer 4 directly, every key layer feeds the logit.
        assert {("E", "2"), ("2", "4"), ("2", "7"), ("3", "7"), ("4", "7")} <= pairs_linked
        assert all(link["target"] == logit or layer_of[link["source"]] == "E" or int(layer_of[link["source"]]) < int(layer_of[link["target"]])
                   for link in document["links"])
        assert all(isinstance(n["influence"], float) and 0 < n["influence"] <= 1 + 1e-9
                   for n in document["nodes"] if n["feature_type"] != "logit")
    with pytest.raises(ValueError, match="upload rule"):
        graph_json(graph, slug="ok", scan="interp-assets/tiny-qwen2", prompt="p", prompt_tokens=[], prompt_token_ids=[],
                   target_token_id=0, hook_names={k: "h" for k in LAYERS}, n_model_layers=6, metric_label="ld")
    # The checker itself can fail: NaN, a bad slug, a dangling link and an unlinked feature node.
    broken = {**document, "metadata": {**document["metadata"], "slug": "a/b", "node_threshold": None}}
    broken["nodes"] = [*document["nodes"], {**by_type["cross layer transcoder"][0], "node_id": "9_9_9", "influence": float("nan")}]
    broken["links"] = [*document["links"], {"source": "nowhere", "target": logit, "weight": 1.0}]
    problems = " | ".join(neuronpedia_graph_problems(broken))
    for expected in ("node_threshold", "slug", "not strict JSON", "dangling", "without a link"):
        assert expected in problems, (expected, problems)


def test_integrated_gradients_layer_total_matches_patching_the_whole_layer(lab) -> None:  # noqa: ANN001
    """IG's completeness: over a layer, Σ attributions → m(clean) − m(layer set to corrupted)."""
    model, tokenizer, pairs, saes = lab
    layer = 3
    settings = AttributionSettings(method="integrated_gradients", ig_steps=16, node_threshold=0.0,
                                   edge_threshold=1e9, max_nodes_per_layer=1, batch_size=24)
    graph = attribution_graph(model, {layer: saes[layer]}, pairs, HOOK, settings, tokenizer.pad_token_id)
    runner = _runner(lab)
    ld_clean, _ = runner.baseline("patching")
    corrupt_acts = {}
    batch = pairs.batch(range(len(pairs)), "cpu", tokenizer.pad_token_id)
    with torch.no_grad(), recording(model, [layer], HOOK) as rec:
        run_logits(model, batch.corrupted_ids, batch)
        corrupt_acts = rec[layer].clone()
    with torch.no_grad(), hooked(model, [layer], HOOK, lambda _, x: corrupt_acts):
        ld_patched = logit_diff(run_logits(model, batch.clean_ids, batch), batch)
    exact = float((ld_clean - ld_patched).mean())
    assert graph.layer_totals[layer]["total_attribution"] == pytest.approx(exact, rel=0.05, abs=1e-3)


def test_resampling_is_seeded_by_the_experiment_and_independent_of_batching(lab) -> None:  # noqa: ANN001
    nodes = ((2, -1, 0), (2, -1, 1), (3, -2, 5))
    experiment = Experiment("resample_ablation/group000", "resample_ablation", "resample", "test", nodes=nodes, samples=4)
    one_per_pass = _runner(lab, max_sequences_per_pass=1).run(experiment)
    stacked = _runner(lab, max_sequences_per_pass=512).run(experiment)
    torch.testing.assert_close(one_per_pass.ld, stacked.ld, atol=1e-4, rtol=0)
    other_seed = _runner(lab).run(Experiment("resample_ablation/group001", "resample_ablation", "resample", "test",
                                             nodes=nodes, samples=4))
    assert not torch.allclose(other_seed.ld, stacked.ld)


def test_faithfulness_cis_cover_the_value_and_agree_across_bootstrap_seeds(lab) -> None:  # noqa: ANN001
    """On real circuit scores: the CI holds the point estimate, a different bootstrap seed gives
    nearly the same interval (each covers the other's midpoint), and the table's rows carry the
    denominator in logits and a random same-size baseline."""
    from interp_assets.core.circuit_stats import active_node_pool, faithfulness_table, ratio_with_ci

    runner = _runner(lab)
    pool = active_node_pool(runner, "test")
    assert pool and all(layer in LAYERS for layer, _, _ in pool)
    circuit = [node for node in pool if node[1] == -1][:40]  # the last position, where the answer is read
    full = runner.sets["test"].ld_clean
    empty = runner.circuit_lds("test", keep=[], ablate=None)
    kept = runner.circuit_lds("test", keep=circuit, ablate=None)
    value, low, high = ratio_with_ci(kept, empty, full, 2000, seed=1)
    value2, low2, high2 = ratio_with_ci(kept, empty, full, 2000, seed=2)
    assert value == value2 and low < value < high and low2 < value < high2
    assert low < (low2 + high2) / 2 < high and low2 < (low + high) / 2 < high2
    assert abs(low - low2) < 0.25 * (high - low) and abs(high - high2) < 0.25 * (high - low)

    rows = faithfulness_table(runner, "test", circuit, [0, 10, 40], bootstrap_samples=200, random_draws=3, seed_name="t")
    assert rows[0]["faithfulness"] == pytest.approx(0.0, abs=1e-9) and rows[0]["random_draws"] == 0
    assert rows[-1]["faithfulness"] == pytest.approx(value, rel=1e-9)
    assert rows[-1]["denominator"] == pytest.approx(float((full - empty).mean()), rel=1e-5)
    assert rows[-1]["denominator_ci_low"] < rows[-1]["denominator"] < rows[-1]["denominator_ci_high"]
    assert rows[-1]["random_draws"] == 3 and rows[-1]["random_faithfulness_std"] > 0


def test_summaries_report_delta_ld_in_logits_beside_recovery() -> None:
    from interp_assets.core.interventions import summarise

    clean = torch.tensor([10.0, 12.0, 14.0, 12.0])
    corrupt = torch.tensor([-10.0, -12.0, -14.0, -12.0])
    ablated = clean - torch.tensor([1.0, 2.0, 3.0, 2.0])
    row = summarise("x", ablated, torch.zeros(4), clean, corrupt, 500)
    assert row["delta_ld"] == pytest.approx(-2.0) and row["delta_ld_ci_low"] < -2.0 < row["delta_ld_ci_high"]
    assert row["recovery"] == pytest.approx((10.0 + 12) / 24)
    patched = summarise("y", corrupt + 3.0, torch.zeros(4), clean, corrupt, 500, delta_from="corrupted")
    assert patched["delta_ld"] == pytest.approx(3.0)
