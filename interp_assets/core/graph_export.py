"""The attribution graph as circuit-tracer / Neuronpedia graph JSON (``metadata, qParams, nodes,
links``), valid against Neuronpedia's published draft-07 schema (a copy lives in
tests/data/neuronpedia/) and its upload rules: ``scan`` and ``slug`` match ``^[a-zA-Z0-9_.-]+$``,
no NaN or Infinity, every link joins two nodes of the file.

Node conventions follow circuit-tracer's ``frontend/graph_models.py``: embedding nodes
``E_{token id}_{ctx_idx}`` (layer "E", feature_type "embedding"), feature nodes
``{layer}_{feature}_{ctx_idx}`` ("cross layer transcoder": the viewers style nodes by these
strings; ours are per-layer SAE latents, named by hook point in ``metadata.transcoder_list``),
error nodes ``{layer}_-1_{ctx_idx}`` ("mlp reconstruction error"), and one logit node at layer
n_layers + 1 ("logit") for the metric. ``influence`` is circuit-tracer's cumulative score, which
the viewer prunes with ``metadata.node_threshold``. No dagster.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from interp_assets.core.attribution import EMBEDDING_LAYER, ERROR_FEATURE, LOGIT, AttributionGraph, Node
from interp_assets.core.influence import cumulative_scores

UPLOAD_NAME = re.compile(r"^[a-zA-Z0-9_.-]+$")
"""What Neuronpedia's graph save route accepts for ``metadata.scan`` and ``metadata.slug``."""

VIEWER_NODE_THRESHOLD = 0.8
"""``metadata.node_threshold``: the viewer first shows the nodes holding this fraction of the total
influence (circuit-tracer's default); its slider shows the rest."""

FeatureLabel = Callable[[int, int], str]
"""(layer, feature) → the node's ``clerp`` (its human-readable label)."""


def default_feature_label(layer: int, feature: int) -> str:
    """Until a feature dashboard gives a better label: the feature's id."""
    return f"L{layer} f{feature}"


def labels_from(mapping: Mapping[tuple[int, int], str], fallback: FeatureLabel = default_feature_label) -> FeatureLabel:
    """A FeatureLabel reading ``mapping[(layer, feature)]`` (e.g. a dashboard's top tokens), else ``fallback``."""
    return lambda layer, feature: mapping.get((layer, feature)) or fallback(layer, feature)


def upload_name(text: str) -> str:
    """``text`` with every character Neuronpedia's upload rule refuses replaced by "-"."""
    name = re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-")
    if not name:
        raise ValueError(f"{text!r} has no character Neuronpedia accepts in a scan or slug (a-z A-Z 0-9 _ . -)")
    return name


def node_id(node: Node, max_length: int, token_id: int = 0) -> str:
    """circuit-tracer's node ids: ``{layer}_{feature}_{ctx_idx}`` (feature −1 for error nodes),
    ``E_{token_id}_{ctx_idx}`` for embedding nodes."""
    ctx_idx = max_length + node.offset
    if node.layer == EMBEDDING_LAYER:
        return f"E_{token_id}_{ctx_idx}"
    return f"{node.layer}_{node.feature}_{ctx_idx}"


def node_ids(graph: AttributionGraph, prompt_token_ids: Sequence[int]) -> list[str]:
    """Every node's id; embedding nodes take the token of ``prompt_token_ids`` (the displayed,
    longest prompt, right-aligned with the others) at their position."""
    width = graph.max_length
    padded = [0] * (width - len(prompt_token_ids)) + list(prompt_token_ids)
    return [node_id(n, width, padded[width + n.offset]) for n in graph.nodes]


def logit_node_id(graph: AttributionGraph, n_model_layers: int, target_token_id: int) -> str:
    return f"{n_model_layers + 1}_{target_token_id}_{graph.max_length - 1}"


def graph_json(
    graph: AttributionGraph,
    *,
    slug: str,
    scan: str,
    prompt: str,
    prompt_tokens: Sequence[str],
    prompt_token_ids: Sequence[int],
    target_token_id: int,
    hook_names: Mapping[int, str],
    n_model_layers: int,
    metric_label: str,
    feature_label: FeatureLabel = default_feature_label,
    node_threshold: float = VIEWER_NODE_THRESHOLD,
) -> dict:
    """The graph in the schema Neuronpedia and circuit-tracer's frontend load. Positions (ctx_idx)
    are those of ``prompt_tokens``, the longest prompt, right-aligned with every other prompt.
    ``scan`` and ``slug`` must already pass the upload rule (see ``upload_name``)."""
    for field, value in (("scan", scan), ("slug", slug)):
        if not UPLOAD_NAME.match(value):
            raise ValueError(f"metadata.{field} {value!r} breaks Neuronpedia's upload rule ^[a-zA-Z0-9_.-]+$; "
                             f"pass upload_name({value!r}) = {upload_name(value)!r}")
    width = graph.max_length
    ids = node_ids(graph, prompt_token_ids)
    scores = cumulative_scores(list(graph.influence)) if graph.influence else [None] * len(graph.nodes)
    nodes = []
    for node, nid, score in zip(graph.nodes, ids, scores, strict=True):
        ctx_idx = width + node.offset
        common = {"node_id": nid, "ctx_idx": ctx_idx, "influence": score, "activation": node.activation_clean,
                  "reverse_ctx_idx": -node.offset - 1, "attribution": node.attribution}
        if node.layer == EMBEDDING_LAYER:
            token = prompt_tokens[ctx_idx - (width - len(prompt_tokens))] if ctx_idx >= width - len(prompt_tokens) else ""
            token_id = nid.split("_")[1]
            nodes.append({**common, "feature": ctx_idx, "layer": "E", "feature_type": "embedding",
                          "jsNodeId": f"E_{token_id}-{ctx_idx}", "clerp": f"Emb: {token!r}"})
        elif node.feature == ERROR_FEATURE:
            nodes.append({**common, "feature": ERROR_FEATURE, "layer": str(node.layer),
                          "feature_type": "mlp reconstruction error", "jsNodeId": f"{node.layer}_-1-{ctx_idx}",
                          "clerp": f"L{node.layer} SAE error @{node.offset}"})
        else:
            nodes.append({**common, "feature": node.feature, "layer": str(node.layer),
                          "feature_type": "cross layer transcoder", "jsNodeId": f"{node.layer}_{node.feature}-0",
                          "clerp": feature_label(node.layer, node.feature)})
    logit_layer = str(n_model_layers + 1)
    logit = {
        "node_id": logit_node_id(graph, n_model_layers, target_token_id), "feature": target_token_id,
        "layer": logit_layer, "ctx_idx": width - 1, "feature_type": "logit",
        "jsNodeId": f"L_{target_token_id}-{width - 1}", "clerp": metric_label, "is_target_logit": True,
        "token_prob": 0.0, "influence": None, "activation": graph.mean_logit_diff_clean, "reverse_ctx_idx": 0,
        "attribution": graph.mean_logit_diff_clean - graph.mean_logit_diff_corrupted,
    }
    nodes.append(logit)
    links = [{"source": ids[e.source], "target": logit["node_id"] if e.target == LOGIT else ids[e.target],
              "weight": e.weight} for e in graph.edges]
    return {
        "metadata": {
            "slug": slug, "scan": scan, "transcoder_list": [hook_names[layer] for layer in graph.key_layers],
            "prompt_tokens": list(prompt_tokens), "prompt": prompt, "schema_version": 1,
            "node_threshold": node_threshold, "n_prompts": graph.n_prompts,
            "mean_logit_diff_clean": graph.mean_logit_diff_clean,
            "mean_logit_diff_corrupted": graph.mean_logit_diff_corrupted,
            "info": {"description": f"Attribution graph of {metric_label}, averaged over {graph.n_prompts} prompt pairs "
                                    f"(node attribution Δf·∂m/∂f; links are direct effects between kept nodes).",
                     "generator": {"name": "interp_assets"}},
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }
