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

Graph structure (circuit-tracer's): embedding nodes (one per token position: Δe = embedding of
the clean token − of the corrupted one), feature and error nodes at every key layer, and the
metric's logit node. Edges go from every kept node to every kept node downstream of it (any later
key layer, and the logit), as DIRECT effects: the gradient from a downstream node to an upstream
one is taken with the key layers in between frozen, so a path through them is its own chain of
edges. The weight of u → d is Δ_u · ∂(w_d · f_d)/∂u|direct with w_d = ∂m/∂f_d (the total
gradient, held fixed): how much of d's attribution flows directly from u; u → logit is
Δ_u · ∂m/∂u|direct. By the chain rule a node's attribution is the sum of ALL its outgoing weights
(to every downstream node, kept or not, and the logit). One backward pass per kept downstream
node, batched over the prompts: the dense all-pairs matrix over all latents is never formed.
Each node's influence is propagated from the logit through the row-normalised |adjacency|, as
circuit-tracer's ``compute_node_influence`` does.

Attributions are averaged over the prompts, positions aligned from the end (offset −1 is the last
token). Nodes are pruned per layer (|a| ≥ node_threshold, at most max_nodes_per_layer);
edges by |w| ≥ edge_threshold; then a feature or error node left with no outgoing link is dropped.
Plain PyTorch: no dagster. The circuit-tracer / Neuronpedia JSON is written by graph_export.py.

One module on purpose (about 500 lines): node attribution and edges share the spliced forward
passes and their gradients; split, each would re-derive them. The exact-patching check lives in
attribution_checks.py, influence in influence.py, the JSON export in graph_export.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from interp_assets.core.hooks import hooked
from interp_assets.core.influence import node_influence
from interp_assets.core.progress import Progress, tracked
from interp_assets.core.prompt_pairs import PairBatch, PromptPairs, logit_diff, run_logits
from interp_assets.core.sae import SparseAutoencoder

ERROR_FEATURE = -1
"""The ``feature`` index of an error node (circuit-tracer uses the same convention)."""
EMBEDDING_LAYER = -1
"""The ``layer`` of a token-embedding node (one per position, below every key layer)."""
EMBEDDING_FEATURE = -2
"""The ``feature`` index of a token-embedding node."""
LOGIT = -1
"""``Edge.target`` of a link into the metric's logit node."""


@dataclass(frozen=True)
class AttributionSettings:
    method: str = "attribution_patching"
    ig_steps: int = 10
    node_threshold: float = 0.01
    edge_threshold: float = 0.01
    max_nodes_per_layer: int = 50
    batch_size: int = 32
    max_sequences_per_pass: int = 1024
    """Edges: targets share a forward/backward pass, the batch stacked once per target, up to this many sequences."""


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

    @property
    def kind(self) -> str:
        """"embedding", "error" or "feature"."""
        return "embedding" if self.layer == EMBEDDING_LAYER else "error" if self.is_error else "feature"


@dataclass(frozen=True)
class Edge:
    source: int
    """Index into AttributionGraph.nodes (the upstream node, at the lower layer)."""
    target: int
    """Index into AttributionGraph.nodes (a node at a later key layer), or LOGIT."""
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
    influence: list[float] = field(default_factory=list)
    """Per node: its influence on the logit through the normalised adjacency (node_influence)."""


# ---------------------------------------------------------------------------------------------
# Forward passes with the key layers exposed


def corrupted_activations(
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
        corrupt, ld_corrupt = corrupted_activations(model, batch, layers, hook_point)
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
# Edges: direct effects between kept nodes, every pair upstream → downstream, and into the logit


@dataclass
class _Sources:
    """The kept nodes of one source layer (the embedding or a key layer) in one batch: the
    contribution of source s to a target whose gradient at this layer is g is
    Σ_b present[s, b] · g[b, position[s, b]] · direction[s, b]."""
    indices: list[int]
    position: torch.Tensor  # [S, B]
    present: torch.Tensor  # [S, B]
    direction: torch.Tensor  # [S, B, d]: Δf · W_dec[i] (feature), Δε (error), Δembedding (token)

    def contributions(self, gradient: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(gradient.shape[0], device=gradient.device)
        at = gradient[rows[None, :], self.position.clamp_min(0)]  # [S, B, d]
        return ((at * self.direction).sum(-1) * self.present).sum(-1)


def _spliced_pass(
    model, batch: PairBatch, layers: Sequence[int], hook_point: str, *, direct: bool,  # noqa: ANN001
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor]:
    """Clean forward pass with a zero leaf added to the token embeddings (key EMBEDDING_LAYER)
    and at each key layer's hook point. Returns (activations, leaves, LD [B]).

    ``direct``: each key layer passes on ``activation.detach() + leaf``, so a gradient with
    respect to an upstream leaf reaches a downstream key layer (or the metric) only through paths
    that avoid every key layer in between: the direct effects circuit-tracer's adjacency holds.
    The returned activations keep their graph to the upstream leaves."""
    activations: dict[int, torch.Tensor] = {}
    leaves: dict[int, torch.Tensor] = {}

    def splice(layer: int, activation: torch.Tensor) -> torch.Tensor:
        value = activation.float()
        leaf = torch.zeros_like(value, requires_grad=True)
        leaves[layer], activations[layer] = leaf, value
        return ((value.detach() if direct else value) + leaf).to(activation.dtype)

    def embed_hook(module, args, output):  # noqa: ANN001, ANN202
        return splice(EMBEDDING_LAYER, output)

    handle = model.get_input_embeddings().register_forward_hook(embed_hook)
    try:
        with torch.enable_grad(), hooked(model, layers, hook_point, splice):
            ld = logit_diff(run_logits(model, batch.clean_ids, batch), batch)
    finally:
        handle.remove()
    return activations, leaves, ld


@torch.no_grad()
def _corrupted_embeddings(model, batch: PairBatch) -> torch.Tensor:  # noqa: ANN001
    return model.get_input_embeddings()(batch.corrupted_ids).float()


def _edge_sums(
    model,  # noqa: ANN001
    saes: Mapping[int, SparseAutoencoder],
    pairs: PromptPairs,
    nodes: Sequence[Node],
    hook_point: str,
    settings: AttributionSettings,
    device: torch.device,
    pad_token_id: int,
    progress: Progress | None = None,
) -> tuple[dict[tuple[int, int], float], dict[int, float]]:
    """Summed over prompts: {(source, target or LOGIT): weight} for every kept source upstream of
    every kept target, and the embedding nodes' attributions {node index: Σ Δe · ∂m/∂e}.

    Per batch: one clean pass with total gradients (∂m/∂f_d, held fixed as w_d), then "direct"
    passes (see _spliced_pass) with the batch stacked once per kept target node (up to
    max_sequences_per_pass sequences), whose backward pass gives each target's gradient at every
    layer below it: the weight of u → d is Δ_u · ∂(w_d · f_d)/∂u|direct, and of u → logit is
    Δ_u · ∂m/∂u|direct. Cost: (kept nodes + 1) × batch sequences forward and backward; the
    all-pairs matrix over all latents is never formed."""
    layers = sorted(saes)
    source_layers = [EMBEDDING_LAYER, *layers]
    by_layer: dict[int, list[int]] = {layer: [] for layer in source_layers}
    for index, node in enumerate(nodes):
        by_layer[node.layer].append(index)
    weights: dict[tuple[int, int], float] = {}
    embedding_attr: dict[int, float] = {}

    def add(target: int, sources: _Sources, gradient: torch.Tensor | None) -> None:
        if gradient is None:
            return
        for source, value in zip(sources.indices, sources.contributions(gradient).tolist(), strict=True):
            weights[(source, target)] = weights.get((source, target), 0.0) + value

    for batch in tracked(pairs.batches(settings.batch_size, device, pad_token_id), progress):
        corrupt, _ = corrupted_activations(model, batch, layers, hook_point)
        corrupt[EMBEDDING_LAYER] = _corrupted_embeddings(model, batch)
        clean, total_leaves, ld = _spliced_pass(model, batch, layers, hook_point, direct=False)
        total = dict(zip(source_layers, torch.autograd.grad(ld.sum(), [total_leaves[l] for l in source_layers]), strict=True))
        del total_leaves, ld
        sources = {layer: _sources(nodes, by_layer[layer], layer, batch, saes, clean, corrupt) for layer in source_layers}
        for index, value in zip(sources[EMBEDDING_LAYER].indices,
                                sources[EMBEDDING_LAYER].contributions(total[EMBEDDING_LAYER]).tolist(), strict=True):
            embedding_attr[index] = embedding_attr.get(index, 0.0) + value

        # Targets in chunks of k: the batch stacked k times (copy c carries target c's scalar), so
        # one forward and ONE backward pass give k targets' gradients at every layer below them.
        rows = torch.arange(batch.size, device=device)
        jobs: list[int | None] = [None]  # None: the logit
        jobs += [t for layer in layers for t in by_layer[layer]]
        per_pass = max(1, settings.max_sequences_per_pass // batch.size)
        for first in range(0, len(jobs), per_pass):
            chunk = jobs[first : first + per_pass]
            k = len(chunk)
            stacked = batch.repeat(k)
            acts, leaves, ld = _spliced_pass(model, stacked, layers, hook_point, direct=True)
            scalars = []
            encoded: dict[int, torch.Tensor] = {}
            for c, target in enumerate(chunk):
                block = slice(c * batch.size, (c + 1) * batch.size)
                if target is None:
                    scalars.append(ld[block].sum())
                    continue
                node = nodes[target]
                sae, x = saes[node.layer], acts[node.layer][block]
                positions = batch.position_of_offset(node.offset)
                present = positions >= 0
                r, p = rows[present], positions[present]
                g_total = total[node.layer][r, p]
                if node.is_error:
                    x_at = x[r, p]
                    scalars.append(((x_at - sae.decode(sae.encode(x_at))) * g_total).sum())
                else:
                    if node.layer not in encoded:  # in the graph: depends on the upstream leaves
                        encoded[node.layer] = sae.encode(acts[node.layer]).unflatten(0, (k, batch.size))
                    scalars.append((encoded[node.layer][c][r, p, node.feature] * (g_total @ sae.W_dec[node.feature])).sum())
            total_scalar = torch.stack(scalars).sum()
            if not total_scalar.requires_grad:
                continue  # every target of the chunk is off on every prompt: no flow through them
            grads = torch.autograd.grad(total_scalar, [leaves[l] for l in source_layers], allow_unused=True)
            for layer, gradient in zip(source_layers, grads, strict=True):
                if gradient is None or not sources[layer].indices:
                    continue
                gradient = gradient.unflatten(0, (k, batch.size))
                for c, target in enumerate(chunk):
                    if target is None or layer < nodes[target].layer:
                        add(LOGIT if target is None else target, sources[layer], gradient[c])
    return weights, embedding_attr


@torch.no_grad()
def _sources(
    nodes: Sequence[Node], indices: list[int], layer: int, batch: PairBatch,
    saes: Mapping[int, SparseAutoencoder], clean: Mapping[int, torch.Tensor], corrupt: Mapping[int, torch.Tensor],
) -> _Sources:
    x_clean, x_corrupt = clean[layer].detach(), corrupt[layer]
    width = x_clean.shape[-1]
    if not indices:
        empty = torch.zeros(0, batch.size, dtype=torch.long, device=x_clean.device)
        return _Sources([], empty, empty.bool(), torch.zeros(0, batch.size, width, device=x_clean.device))
    position = torch.stack([batch.position_of_offset(nodes[i].offset) for i in indices])  # [S, B]
    present = position >= 0
    rows = torch.arange(batch.size, device=x_clean.device)[None, :].expand_as(position)
    at_clean, at_corrupt = x_clean[rows, position.clamp_min(0)], x_corrupt[rows, position.clamp_min(0)]  # [S, B, d]
    if layer == EMBEDDING_LAYER:
        direction = at_clean - at_corrupt
    else:
        sae = saes[layer]
        f_clean, f_corrupt = sae.encode(at_clean), sae.encode(at_corrupt)  # [S, B, d_sae]
        err_delta = (at_clean - sae.decode(f_clean)) - (at_corrupt - sae.decode(f_corrupt))
        direction = torch.empty_like(at_clean)
        for s, index in enumerate(indices):
            feature = nodes[index].feature
            if feature == ERROR_FEATURE:
                direction[s] = err_delta[s]
            else:
                direction[s] = (f_clean[s, :, feature] - f_corrupt[s, :, feature])[:, None] * sae.W_dec[feature]
    return _Sources(indices, position, present, direction * present[..., None])


def _prune_unlinked(nodes: list[Node], edges: list[Edge]) -> tuple[list[Node], list[Edge]]:
    """Drop feature and error nodes with no outgoing kept link, until none is left (a drop can
    strand its sources), as circuit-tracer's pruning does; embedding nodes always stay."""
    alive = set(range(len(nodes)))
    while True:
        has_out = {e.source for e in edges if e.source in alive and (e.target == LOGIT or e.target in alive)}
        stranded = {i for i in alive if nodes[i].layer != EMBEDDING_LAYER and i not in has_out}
        if not stranded:
            break
        alive -= stranded
    order = sorted(alive)
    new_index = {old: new for new, old in enumerate(order)}
    kept_edges = [Edge(new_index[e.source], LOGIT if e.target == LOGIT else new_index[e.target], e.weight)
                  for e in edges if e.source in alive and (e.target == LOGIT or e.target in alive)]
    return [nodes[i] for i in order], kept_edges


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
    """Nodes, edges and influence of the pruned attribution graph, averaged over ``pairs``."""
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
    selected = _select_nodes(sums, n, width, settings)
    del sums
    # One embedding node per position of the (right-aligned) prompts; attributions come with the edges.
    embeddings = [Node(EMBEDDING_LAYER, offset, EMBEDDING_FEATURE, 0.0, 0.0, 0.0) for offset in range(-width, 0)]
    nodes = embeddings + selected
    log(f"attribution: {len(selected)} nodes kept over layers {sorted(saes)} from {n} prompt pairs")
    sums_by_edge, embedding_attr = _edge_sums(model, saes, pairs, nodes, hook_point, settings, device, pad_token_id,
                                              Progress(n_batches, log, label="attribution: edges", unit="batch"))
    nodes = [replace(node, attribution=embedding_attr.get(i, 0.0) / n) if node.layer == EMBEDDING_LAYER else node
             for i, node in enumerate(nodes)]
    edges = [Edge(s, t, w / n) for (s, t), w in sorted(sums_by_edge.items()) if abs(w / n) >= settings.edge_threshold]
    nodes, edges = _prune_unlinked(nodes, edges)
    log(f"attribution: {len(edges)} edges kept (|w| ≥ {settings.edge_threshold}), "
        f"{sum(n.layer != EMBEDDING_LAYER for n in nodes)} feature and error nodes with a link")
    return AttributionGraph(
        nodes=nodes,
        edges=edges,
        key_layers=sorted(saes),
        n_prompts=n,
        max_length=width,
        mean_logit_diff_clean=ld_clean / n,
        mean_logit_diff_corrupted=ld_corrupt / n,
        layer_totals=totals,
        influence=node_influence(len(nodes), [(e.source, e.target, e.weight) for e in edges]),
    )
