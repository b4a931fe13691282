"""Attribution graphs over SAE features (Marks et al. 2024, "Sparse Feature Circuits").

The SAEs of the key layers are spliced into the model at their hook point with their error
terms kept: x = decode(f) + ε, so the spliced model computes exactly what the model computes, and
every activation is split into feature nodes f_i (one per feature and token position) plus one
error node ε per position. The metric m is the logit difference target − foil at the last token.

Node attribution (attribution patching): the first-order estimate of how much m drops when the
node takes its value on the corrupted prompt,
    a(f_i, t) = (f_i^clean − f_i^corrupt)[t] · ∂m/∂f_i[t] = Δf_i[t] · (W_dec[i] · ∂m/∂x[t]),
    a(ε, t)   = (ε^clean − ε^corrupt)[t] · ∂m/∂x[t],
with ∂m/∂x the gradient at the hook point on the clean run: since x = decode(f) + ε, the
gradient with respect to a feature is its decoder row dotted with ∂m/∂x, so one backward pass
gives every node of every key layer. With ``method="integrated_gradients"`` ∂m/∂x at layer L is
averaged over the straight path from the corrupted to the clean activation of that layer.

Edges between successive key layers L1 < L2: how much of a downstream node's attribution flows
through an upstream node, Δf_u · ∂(∂m/∂f_d · f_d)/∂f_u with ∂m/∂f_d held fixed: one backward pass
per kept downstream node, only between kept nodes: the dense all-pairs matrix is never formed.

Attributions are averaged over the prompts, positions aligned from the end (offset −1 is the last
token). Nodes are pruned per layer (|a| ≥ node_threshold, at most max_nodes_per_layer);
edges by |w| ≥ edge_threshold. Plain PyTorch: no dagster.

One module on purpose (about 500 lines): node attribution, edges, the exact-patching check and the
JSON export share the spliced forward pass and its gradients; split, each would re-derive them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from interp_assets.core.hooks import hooked
from interp_assets.core.progress import Progress, tracked
from interp_assets.core.prompt_pairs import PairBatch, PromptPairs, logit_diff, run_logits
from interp_assets.core.sae import SparseAutoencoder

ERROR_FEATURE = -1
"""The ``feature`` index of an error node (circuit-tracer uses the same convention)."""


@dataclass(frozen=True)
class AttributionSettings:
    method: str = "attribution_patching"
    ig_steps: int = 10
    node_threshold: float = 0.01
    edge_threshold: float = 0.01
    max_nodes_per_layer: int = 50
    batch_size: int = 32


@dataclass(frozen=True)
class Node:
    layer: int
    offset: int
    """Token position from the end of the prompt (−1: the last token, where the answer is read)."""
    feature: int
    """SAE feature index, or ERROR_FEATURE for the layer's error term at this position."""
    attribution: float
    activation_clean: float
    activation_corrupted: float

    @property
    def is_error(self) -> bool:
        return self.feature == ERROR_FEATURE


@dataclass(frozen=True)
class Edge:
    source: int
    """Index into AttributionGraph.nodes (the upstream node, at the lower layer)."""
    target: int
    weight: float


@dataclass
class AttributionGraph:
    nodes: list[Node]
    edges: list[Edge]
    key_layers: list[int]
    n_prompts: int
    max_length: int
    mean_logit_diff_clean: float
    mean_logit_diff_corrupted: float
    layer_totals: dict[int, dict[str, float]] = field(default_factory=dict)
    """Per layer: summed feature attribution, summed error attribution, and their total (the
    first-order estimate of patching the whole layer), before pruning."""


# ---------------------------------------------------------------------------------------------
# Forward passes with the key layers exposed


def _corrupted_activations(
    model, batch: PairBatch, layers: Sequence[int], hook_point: str  # noqa: ANN001
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    records: dict[int, torch.Tensor] = {}

    def record(layer: int, activation: torch.Tensor) -> None:
        records[layer] = activation.detach().float()

    with torch.no_grad(), hooked(model, layers, hook_point, record):
        ld = logit_diff(run_logits(model, batch.corrupted_ids, batch), batch)
    return records, ld


def _clean_pass_with_grad(
    model,  # noqa: ANN001
    batch: PairBatch,
    layers: Sequence[int],
    hook_point: str,
    replace: Mapping[int, torch.Tensor] | None = None,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor]:
    """Clean forward pass with a zero leaf added at each key layer's hook point.

    Returns (activations kept in the graph, the leaves, LD [B]). The gradient of anything with
    respect to a leaf is the gradient at that hook point, through every later layer.
    ``replace`` swaps a layer's activation for a given tensor (integrated gradients' path).
    """
    activations: dict[int, torch.Tensor] = {}
    leaves: dict[int, torch.Tensor] = {}

    def splice(layer: int, activation: torch.Tensor) -> torch.Tensor:
        if replace is not None and layer in replace:
            activation = replace[layer].to(activation.dtype)
        leaf = torch.zeros_like(activation, dtype=torch.float32, requires_grad=True)
        leaves[layer] = leaf
        activations[layer] = activation.float()
        return (activation.float() + leaf).to(activation.dtype)

    with torch.enable_grad(), hooked(model, layers, hook_point, splice):
        ld = logit_diff(run_logits(model, batch.clean_ids, batch), batch)
    return activations, leaves, ld


def _aligned_index(batch: PairBatch, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid [B, T] real-token mask, slot [B, T] in 0..max_length−1 for offset −max_length..−1)."""
    offsets = batch.offsets()
    valid = batch.attention_mask.bool()
    return valid, (offsets + max_length).clamp(0, max_length - 1)


# ---------------------------------------------------------------------------------------------
# Nodes


@dataclass
class _LayerSums:
    feature_attr: torch.Tensor  # [P, d_sae]
    error_attr: torch.Tensor  # [P]
    act_clean: torch.Tensor  # [P, d_sae]
    act_corrupt: torch.Tensor  # [P, d_sae]
    error_norm_clean: torch.Tensor  # [P]
    error_norm_corrupt: torch.Tensor  # [P]


def _ig_gradients(
    model, batch: PairBatch, layers: Sequence[int], hook_point: str,  # noqa: ANN001
    clean: Mapping[int, torch.Tensor], corrupt: Mapping[int, torch.Tensor], steps: int,
) -> dict[int, torch.Tensor]:
    """∂m/∂x at each layer averaged over x = x_corrupt + α (x_clean − x_corrupt), α at midpoints."""
    gradients = {}
    for layer in layers:
        total = torch.zeros_like(clean[layer])
        for k in range(steps):
            alpha = (k + 0.5) / steps
            path = corrupt[layer] + alpha * (clean[layer] - corrupt[layer])
            _, leaves, ld = _clean_pass_with_grad(model, batch, [layer], hook_point, replace={layer: path})
            (grad,) = torch.autograd.grad(ld.sum(), [leaves[layer]])
            total += grad
        gradients[layer] = total / steps
    return gradients


def _node_sums(
    model,  # noqa: ANN001
    saes: Mapping[int, SparseAutoencoder],
    pairs: PromptPairs,
    hook_point: str,
    settings: AttributionSettings,
    device: torch.device,
    pad_token_id: int,
    progress: Progress | None = None,
) -> tuple[dict[int, _LayerSums], float, float]:
    layers = sorted(saes)
    width = pairs.max_length
    sums = {
        layer: _LayerSums(
            feature_attr=torch.zeros(width, saes[layer].spec.d_sae, device=device),
            error_attr=torch.zeros(width, device=device),
            act_clean=torch.zeros(width, saes[layer].spec.d_sae, device=device),
            act_corrupt=torch.zeros(width, saes[layer].spec.d_sae, device=device),
            error_norm_clean=torch.zeros(width, device=device),
            error_norm_corrupt=torch.zeros(width, device=device),
        )
        for layer in layers
    }
    ld_clean_total = ld_corrupt_total = 0.0
    for batch in tracked(pairs.batches(settings.batch_size, device, pad_token_id), progress):
        corrupt, ld_corrupt = _corrupted_activations(model, batch, layers, hook_point)
        clean, leaves, ld = _clean_pass_with_grad(model, batch, layers, hook_point)
        ld_clean_total += float(ld.detach().sum())
        ld_corrupt_total += float(ld_corrupt.sum())
        if settings.method == "integrated_gradients":
            detached = {layer: clean[layer].detach() for layer in layers}
            gradients = _ig_gradients(model, batch, layers, hook_point, detached, corrupt, settings.ig_steps)
        else:
            grads = torch.autograd.grad(ld.sum(), [leaves[layer] for layer in layers])
            gradients = dict(zip(layers, grads, strict=True))
        valid, slot = _aligned_index(batch, width)
        index = slot[valid]
        with torch.no_grad():
            for layer in layers:
                sae, acc = saes[layer], sums[layer]
                x_clean, x_corrupt, grad = clean[layer].detach()[valid], corrupt[layer][valid], gradients[layer][valid]
                f_clean, f_corrupt = sae.encode(x_clean), sae.encode(x_corrupt)  # [N, d_sae]
                err_clean, err_corrupt = x_clean - sae.decode(f_clean), x_corrupt - sae.decode(f_corrupt)
                acc.feature_attr.index_add_(0, index, (f_clean - f_corrupt) * (grad @ sae.W_dec.T))
                acc.error_attr.index_add_(0, index, ((err_clean - err_corrupt) * grad).sum(-1))
                acc.act_clean.index_add_(0, index, f_clean)
                acc.act_corrupt.index_add_(0, index, f_corrupt)
                acc.error_norm_clean.index_add_(0, index, err_clean.norm(dim=-1))
                acc.error_norm_corrupt.index_add_(0, index, err_corrupt.norm(dim=-1))
    return sums, ld_clean_total, ld_corrupt_total


def _select_nodes(sums: Mapping[int, _LayerSums], n_prompts: int, width: int, settings: AttributionSettings) -> list[Node]:
    """Per layer, the nodes (features and error terms) with the largest |attribution|."""
    nodes: list[Node] = []
    for layer in sorted(sums):
        acc = sums[layer]
        d_sae = acc.feature_attr.shape[1]
        # Error terms compete with features: a layer the SAE explains badly shows as big errors.
        scores = torch.cat([acc.feature_attr.reshape(-1), acc.error_attr]) / n_prompts
        order = scores.abs().argsort(descending=True)[: settings.max_nodes_per_layer]
        for flat in order.tolist():
            score = float(scores[flat])
            if abs(score) < settings.node_threshold:
                break
            if flat < width * d_sae:
                position, feature = divmod(flat, d_sae)
                act_clean = float(acc.act_clean[position, feature]) / n_prompts
                act_corrupt = float(acc.act_corrupt[position, feature]) / n_prompts
            else:
                position, feature = flat - width * d_sae, ERROR_FEATURE
                act_clean = float(acc.error_norm_clean[position]) / n_prompts
                act_corrupt = float(acc.error_norm_corrupt[position]) / n_prompts
            nodes.append(Node(layer, position - width, feature, score, act_clean, act_corrupt))
    return nodes


# ---------------------------------------------------------------------------------------------
# Edges


def _edges(
    model,  # noqa: ANN001
    saes: Mapping[int, SparseAutoencoder],
    pairs: PromptPairs,
    nodes: Sequence[Node],
    hook_point: str,
    settings: AttributionSettings,
    device: torch.device,
    pad_token_id: int,
    progress: Progress | None = None,
) -> list[Edge]:
    layers = sorted(saes)
    by_layer: dict[int, list[int]] = {layer: [] for layer in layers}
    for index, node in enumerate(nodes):
        by_layer[node.layer].append(index)
    weights: dict[tuple[int, int], float] = {}
    n = len(pairs)
    for batch in tracked(pairs.batches(settings.batch_size, device, pad_token_id), progress):
        corrupt, _ = _corrupted_activations(model, batch, layers, hook_point)
        clean, leaves, ld = _clean_pass_with_grad(model, batch, layers, hook_point)
        grads = dict(zip(layers, torch.autograd.grad(ld.sum(), [leaves[l] for l in layers], retain_graph=True), strict=True))
        rows = torch.arange(batch.size, device=device)
        for upstream, downstream in zip(layers, layers[1:]):
            up_nodes, down_nodes = by_layer[upstream], by_layer[downstream]
            if not up_nodes or not down_nodes:
                continue
            up_sae, down_sae = saes[upstream], saes[downstream]
            with torch.no_grad():
                x_up_clean = clean[upstream].detach()
                f_up_clean, f_up_corrupt = up_sae.encode(x_up_clean), up_sae.encode(corrupt[upstream])
                err_up_delta = (x_up_clean - up_sae.decode(f_up_clean)) - (corrupt[upstream] - up_sae.decode(f_up_corrupt))
                delta_f_up = f_up_clean - f_up_corrupt  # [B, T, d_sae]
            for target in down_nodes:
                node = nodes[target]
                positions = batch.position_of_offset(node.offset)
                present = positions >= 0
                if not bool(present.any()):
                    continue
                r, p = rows[present], positions[present]
                x_down = clean[downstream][r, p]  # in the graph: depends on the upstream leaf
                g_down = grads[downstream][r, p].detach()
                if node.is_error:
                    value = x_down - down_sae.decode(down_sae.encode(x_down))
                    scalar = (value * g_down).sum()
                else:
                    w = g_down @ down_sae.W_dec[node.feature]  # ∂m/∂f_d, held fixed
                    scalar = (down_sae.encode(x_down)[:, node.feature] * w).sum()
                if not scalar.requires_grad:
                    continue  # the node is off on every prompt of this batch: no flow through it
                (g_up,) = torch.autograd.grad(scalar, [leaves[upstream]], retain_graph=True)
                with torch.no_grad():
                    for source in up_nodes:
                        up = nodes[source]
                        up_positions = batch.position_of_offset(up.offset)
                        ok = up_positions >= 0
                        if not bool(ok.any()):
                            continue
                        rr, pp = rows[ok], up_positions[ok]
                        if up.is_error:
                            contribution = (err_up_delta[rr, pp] * g_up[rr, pp]).sum()
                        else:
                            contribution = (delta_f_up[rr, pp, up.feature] * (g_up[rr, pp] @ up_sae.W_dec[up.feature])).sum()
                        weights[(source, target)] = weights.get((source, target), 0.0) + float(contribution)
    edges = [Edge(s, t, w / n) for (s, t), w in sorted(weights.items()) if abs(w / n) >= settings.edge_threshold]
    return edges


# ---------------------------------------------------------------------------------------------
# The graph


def attribution_graph(
    model,  # noqa: ANN001
    saes: Mapping[int, SparseAutoencoder],
    pairs: PromptPairs,
    hook_point: str,
    settings: AttributionSettings,
    pad_token_id: int,
    log: Callable[[str], None] = lambda _: None,
) -> AttributionGraph:
    """Nodes and edges of the pruned attribution graph, averaged over ``pairs``."""
    if len(pairs) == 0:
        raise ValueError("no usable prompt pairs (each clean prompt must tokenize to its corrupted twin's length)")
    device = next(model.parameters()).device
    saes = {layer: sae.to(device).float().eval().requires_grad_(False) for layer, sae in saes.items()}
    n, width = len(pairs), pairs.max_length
    n_batches = -(-n // settings.batch_size)
    sums, ld_clean, ld_corrupt = _node_sums(model, saes, pairs, hook_point, settings, device, pad_token_id,
                                            Progress(n_batches, log, label="attribution: nodes", unit="batch"))
    totals = {
        layer: {
            "feature_attribution": float(acc.feature_attr.sum()) / n,
            "error_attribution": float(acc.error_attr.sum()) / n,
            "total_attribution": float(acc.feature_attr.sum() + acc.error_attr.sum()) / n,
        }
        for layer, acc in sums.items()
    }
    nodes = _select_nodes(sums, n, width, settings)
    del sums
    log(f"attribution: {len(nodes)} nodes kept over layers {sorted(saes)} from {n} prompt pairs")
    edges = _edges(model, saes, pairs, nodes, hook_point, settings, device, pad_token_id,
                   Progress(n_batches, log, label="attribution: edges", unit="batch"))
    log(f"attribution: {len(edges)} edges kept (|w| ≥ {settings.edge_threshold})")
    return AttributionGraph(
        nodes=nodes,
        edges=edges,
        key_layers=sorted(saes),
        n_prompts=n,
        max_length=width,
        mean_logit_diff_clean=ld_clean / n,
        mean_logit_diff_corrupted=ld_corrupt / n,
        layer_totals=totals,
    )


# ---------------------------------------------------------------------------------------------
# Checking the linear estimate against the real intervention


@torch.no_grad()
def exact_patch_effects(
    model,  # noqa: ANN001
    saes: Mapping[int, SparseAutoencoder],
    pairs: PromptPairs,
    nodes: Sequence[Node],
    hook_point: str,
    pad_token_id: int,
    batch_size: int = 32,
) -> list[float]:
    """For each feature node: mean over prompts of m(clean) − m(clean with that one feature set
    to its corrupted value at its position), the quantity its attribution estimates to first order."""
    device = next(model.parameters()).device
    layers = sorted(saes)
    effects = [0.0] * len(nodes)
    for batch in pairs.batches(batch_size, device, pad_token_id):
        corrupt, _ = _corrupted_activations(model, batch, layers, hook_point)
        ld_clean = logit_diff(run_logits(model, batch.clean_ids, batch), batch)
        rows = torch.arange(batch.size, device=device)
        for index, node in enumerate(nodes):
            if node.is_error:
                continue
            sae = saes[node.layer].to(device)
            positions = batch.position_of_offset(node.offset)
            present = positions >= 0
            r, p = rows[present], positions[present]
            f_corrupt = sae.encode(corrupt[node.layer][r, p])[:, node.feature]

            def patch(layer: int, activation: torch.Tensor, r=r, p=p, f_corrupt=f_corrupt, node=node, sae=sae) -> torch.Tensor:
                x = activation.float().clone()
                f_clean = sae.encode(x[r, p])[:, node.feature]
                x[r, p] += (f_corrupt - f_clean)[:, None] * sae.W_dec[node.feature]
                return x.to(activation.dtype)

            with hooked(model, [node.layer], hook_point, patch):
                ld = logit_diff(run_logits(model, batch.clean_ids, batch), batch)
            effects[index] += float((ld_clean - ld).sum())
    return [effect / len(pairs) for effect in effects]


def rank_agreement(estimates: Sequence[float], exact: Sequence[float]) -> dict[str, float]:
    """Sign agreement and Spearman rank correlation between attributions and exact effects."""
    if not estimates:
        return {"n_nodes": 0, "sign_agreement": float("nan"), "spearman": float("nan")}
    est, ex = torch.tensor(list(estimates), dtype=torch.float64), torch.tensor(list(exact), dtype=torch.float64)
    sign = float((torch.sign(est) == torch.sign(ex)).double().mean())

    def ranks(values: torch.Tensor) -> torch.Tensor:
        return values.argsort().argsort().double()

    if len(est) < 2:
        return {"n_nodes": len(est), "sign_agreement": sign, "spearman": float("nan")}
    re_, rx = ranks(est), ranks(ex)
    re_, rx = re_ - re_.mean(), rx - rx.mean()
    spearman = float((re_ * rx).sum() / (re_.norm() * rx.norm()).clamp_min(1e-12))
    return {"n_nodes": len(est), "sign_agreement": sign, "spearman": spearman}


# ---------------------------------------------------------------------------------------------
# Export: the circuit-tracer / Neuronpedia graph JSON


def node_id(node: Node, max_length: int) -> str:
    """circuit-tracer's node ids: ``{layer}_{feature}_{ctx_idx}``, feature −1 for error nodes."""
    return f"{node.layer}_{node.feature}_{max_length + node.offset}"


def graph_json(
    graph: AttributionGraph,
    *,
    slug: str,
    scan: str,
    prompt: str,
    prompt_tokens: Sequence[str],
    hook_names: Mapping[int, str],
    n_model_layers: int,
    metric_label: str,
) -> dict:
    """The graph in the schema circuit-tracer's frontend and Neuronpedia load
    (``metadata, qParams, nodes, links``). Positions (ctx_idx) are those of ``prompt_tokens``,
    the longest prompt, right-aligned with every other prompt.

    The metric (logit difference) is one logit node; links into it come from the last key layer's
    nodes, weighted by their attribution (their total effect on the metric)."""
    width = graph.max_length
    nodes = []
    for node in graph.nodes:
        ctx_idx = width + node.offset
        if node.is_error:
            nodes.append({
                "node_id": node_id(node, width), "feature": ERROR_FEATURE, "layer": str(node.layer), "ctx_idx": ctx_idx,
                "feature_type": "mlp reconstruction error", "jsNodeId": f"{node.layer}_-1-{ctx_idx}",
                "clerp": f"L{node.layer} SAE error @{node.offset}", "influence": node.attribution,
                "activation": node.activation_clean, "reverse_ctx_idx": -node.offset - 1,
            })
        else:
            nodes.append({
                "node_id": node_id(node, width), "feature": node.feature, "layer": str(node.layer), "ctx_idx": ctx_idx,
                # The viewers key node styling on circuit-tracer's type strings; ours are SAE
                # features, named by hook point in metadata.transcoder_list.
                "feature_type": "cross layer transcoder",
                "jsNodeId": f"{node.layer}_{node.feature}-0",
                "clerp": f"{hook_names[node.layer]} f{node.feature} @{node.offset}", "influence": node.attribution,
                "activation": node.activation_clean, "reverse_ctx_idx": -node.offset - 1,
            })
    logit_layer = str(n_model_layers + 1)
    logit = {
        "node_id": f"{logit_layer}_0_{width - 1}", "feature": 0, "layer": logit_layer, "ctx_idx": width - 1,
        "feature_type": "logit", "jsNodeId": f"L_0-{width - 1}", "clerp": metric_label, "is_target_logit": True,
        "token_prob": 0.0, "influence": graph.mean_logit_diff_clean - graph.mean_logit_diff_corrupted,
        "activation": graph.mean_logit_diff_clean, "reverse_ctx_idx": 0,
    }
    nodes.append(logit)
    links = [{"source": nodes[e.source]["node_id"], "target": nodes[e.target]["node_id"], "weight": e.weight}
             for e in graph.edges]
    last = max(graph.key_layers)
    links += [{"source": node_id(n, width), "target": logit["node_id"], "weight": n.attribution}
              for n in graph.nodes if n.layer == last]
    return {
        "metadata": {
            "slug": slug, "scan": scan, "transcoder_list": [hook_names[layer] for layer in graph.key_layers],
            "prompt_tokens": list(prompt_tokens), "prompt": prompt, "schema_version": 1,
            "node_threshold": None, "n_prompts": graph.n_prompts,
            "mean_logit_diff_clean": graph.mean_logit_diff_clean,
            "mean_logit_diff_corrupted": graph.mean_logit_diff_corrupted,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }
