"""The science of phases 4 and 5 on the real tiny model (built once per session), with SAEs whose
weights are random: each identity below holds for any SAE, so a failure is a bug in the hooks,
the splicing or the bookkeeping, not a property of training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_config

from interp_assets.config import load_config
from interp_assets.core.attribution import (
    AttributionSettings, attribution_graph, graph_json, node_id,
)
from interp_assets.core.behaviours import generate_prompts
from interp_assets.core.hooks import hooked, recording
from interp_assets.core.interventions import ALL_POSITIONS, Experiment, InterventionRunner
from interp_assets.core.modeling import load_model_and_tokenizer
from interp_assets.core.prompt_pairs import logit_diff, run_logits, tokenize_pairs
from interp_assets.core.sae import SaeSpec, SparseAutoencoder
from interp_assets.artifacts import tiny_model_relpath
from resources.storage import ArtifactStore

HOOK = "mlp_post"
LAYERS = [2, 3, 4]


@pytest.fixture(scope="module")
def lab(tiny_model_storage: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    config = load_config(write_config(tmp_path_factory.mktemp("circuits")))
    model_dir = ArtifactStore(str(tiny_model_storage)).local_dir(tiny_model_relpath(config))
    model, tokenizer = load_model_and_tokenizer(model_dir, "float32", "cpu")
    prompts = generate_prompts("ioi", 24, seed=5)
    pairs = tokenize_pairs(tokenizer, [p.clean for p in prompts], [p.corrupted for p in prompts],
                           [p.target for p in prompts], [p.foil for p in prompts])
    d_mlp = model.config.intermediate_size
    saes = {}
    for layer in LAYERS:
        sae = SparseAutoencoder(SaeSpec(d_in=d_mlp, d_sae=2 * d_mlp))
        sae.initialize(torch.Generator().manual_seed(layer))
        with torch.no_grad():
            sae.b_enc.fill_(-0.05)  # a few features off, as in a trained SAE
        saes[layer] = sae
    return model, tokenizer, pairs, saes


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
    assert len([n for n in graph.nodes if n.layer == layer]) == 5
    assert graph.edges == []  # the threshold keeps none


def test_edge_weight_matches_a_directional_derivative(lab) -> None:  # noqa: ANN001
    """An edge u→d is Δf_u · ∂(w_d f_d)/∂f_u. Recompute one by moving x_L1 along u's decoder row
    (central finite difference, float64-free but tiny step) and compare."""
    model, tokenizer, pairs, saes = lab
    settings = AttributionSettings(node_threshold=0.0, edge_threshold=0.0, max_nodes_per_layer=4, batch_size=24)
    graph = attribution_graph(model, saes, pairs, HOOK, settings, tokenizer.pad_token_id)
    edge = max((e for e in graph.edges if not graph.nodes[e.source].is_error and not graph.nodes[e.target].is_error),
               key=lambda e: abs(e.weight))
    up, down = graph.nodes[edge.source], graph.nodes[edge.target]
    batch = pairs.batch(range(len(pairs)), "cpu", tokenizer.pad_token_id)
    grads, _ = _layer_gradients_and_deltas(model, batch, [down.layer])
    g_down = grads[down.layer][0]
    p_up, p_down = batch.position_of_offset(up.offset), batch.position_of_offset(down.offset)
    rows = ((p_up >= 0) & (p_down >= 0)).nonzero(as_tuple=True)[0]  # prompts that have both positions
    p_up, p_down = p_up[rows], p_down[rows]
    sae_up, sae_down = saes[up.layer], saes[down.layer]
    with torch.no_grad(), recording(model, [up.layer], HOOK) as rec:
        run_logits(model, batch.corrupted_ids, batch)
        f_up_corrupt = sae_up.encode(rec[up.layer][rows, p_up])[:, up.feature]
    w_down = (g_down[rows, p_down] @ sae_down.W_dec[down.feature])  # ∂m/∂f_d per prompt, held fixed

    def downstream_value(eps: torch.Tensor) -> torch.Tensor:
        """Per prompt f_d with f_u moved by eps (per prompt) at its position."""
        out = {}

        def nudge(layer: int, x: torch.Tensor) -> torch.Tensor | None:
            if layer == up.layer:
                x = x.clone()
                x[rows, p_up] += eps[:, None] * sae_up.W_dec[up.feature]
                return x
            out[layer] = sae_down.encode(x[rows, p_down])[:, down.feature]
            return None

        with torch.no_grad(), hooked(model, [up.layer, down.layer], HOOK, nudge):
            run_logits(model, batch.clean_ids, batch)
        return out[down.layer]

    with torch.no_grad(), recording(model, [up.layer], HOOK) as rec:
        run_logits(model, batch.clean_ids, batch)
        f_up_clean = sae_up.encode(rec[up.layer][rows, p_up])[:, up.feature]
    h = 1e-2
    ones = torch.ones(len(rows))
    derivative = (downstream_value(h * ones) - downstream_value(-h * ones)) / (2 * h)
    expected = float(((f_up_clean - f_up_corrupt) * derivative * w_down).sum()) / len(pairs)
    assert edge.weight == pytest.approx(expected, rel=2e-2, abs=1e-6)


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


def test_graph_json_has_the_circuit_tracer_schema(lab) -> None:  # noqa: ANN001
    from pydantic import BaseModel, ConfigDict

    class Metadata(BaseModel):
        slug: str
        scan: str
        transcoder_list: list[str]
        prompt_tokens: list[str]
        prompt: str

    class QParams(BaseModel):
        pinnedIds: list[str]  # noqa: N815
        supernodes: list[list[str]]
        linkType: str  # noqa: N815
        clickedId: str  # noqa: N815
        sg_pos: str

    class Node(BaseModel):
        model_config = ConfigDict(extra="allow")
        node_id: str
        feature: int
        layer: str
        ctx_idx: int
        feature_type: str
        jsNodeId: str  # noqa: N815
        clerp: str
        influence: float | None
        activation: float | None

    class Link(BaseModel):
        source: str
        target: str
        weight: float

    class Graph(BaseModel):
        metadata: Metadata
        qParams: QParams  # noqa: N815
        nodes: list[Node]
        links: list[Link]

    model, tokenizer, pairs, saes = lab
    settings = AttributionSettings(node_threshold=0.0, edge_threshold=0.0, max_nodes_per_layer=4, batch_size=24)
    graph = attribution_graph(model, saes, pairs, HOOK, settings, tokenizer.pad_token_id)
    tokens = tokenizer.convert_ids_to_tokens(max(pairs.clean, key=len))
    document = Graph.model_validate(graph_json(
        graph, slug="t", scan="tiny", prompt="p", prompt_tokens=tokens, hook_names={k: f"h{k}" for k in LAYERS},
        n_model_layers=6, metric_label="ld",
    ))
    ids = [n.node_id for n in document.nodes]
    assert len(ids) == len(set(ids)) == len(graph.nodes) + 1
    assert {link.source for link in document.links} | {link.target for link in document.links} <= set(ids)
    assert all(0 <= n.ctx_idx < len(tokens) for n in document.nodes)
    assert {n.feature_type for n in document.nodes} <= {"cross layer transcoder", "mlp reconstruction error", "logit"}
    assert node_id(graph.nodes[0], graph.max_length) == ids[0]


def test_resampling_is_seeded_by_the_experiment_and_independent_of_batching(lab) -> None:  # noqa: ANN001
    nodes = ((2, -1, 0), (2, -1, 1), (3, -2, 5))
    experiment = Experiment("resample_ablation/group000", "resample_ablation", "resample", "test", nodes=nodes, samples=4)
    one_per_pass = _runner(lab, max_sequences_per_pass=1).run(experiment)
    stacked = _runner(lab, max_sequences_per_pass=512).run(experiment)
    torch.testing.assert_close(one_per_pass.ld, stacked.ld, atol=1e-4, rtol=0)
    other_seed = _runner(lab).run(Experiment("resample_ablation/group001", "resample_ablation", "resample", "test",
                                             nodes=nodes, samples=4))
    assert not torch.allclose(other_seed.ld, stacked.ld)
