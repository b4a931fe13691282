"""Node influence on the logit by propagation through the normalised adjacency matrix, as
circuit-tracer computes it (``circuit_tracer/graph.py``: normalize_matrix, compute_influence,
compute_node_influence), and the cumulative scores its graph files and Neuronpedia's viewer prune
with (``node_threshold``). Plain PyTorch, no dependency on how the graph was built."""

from __future__ import annotations

from collections.abc import Iterable

import torch

def normalize_matrix(adjacency: torch.Tensor) -> torch.Tensor:
    """|A| with each row (a target's incoming weights) scaled to sum to 1."""
    magnitude = adjacency.abs()
    return magnitude / magnitude.sum(dim=1, keepdim=True).clamp(min=1e-10)


def propagate_influence(normalized: torch.Tensor, logit_weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """logit_weights · (Â + Â² + …): each node's share of the logit's incoming weight, through all
    paths. Â is nilpotent on a DAG, so the series ends after at most (depth) terms."""
    current = logit_weights @ normalized
    influence = current.clone()
    for _ in range(max_iter):
        if not bool(current.any()):
            return influence
        current = current @ normalized
        influence += current
    raise RuntimeError(f"influence did not converge in {max_iter} steps: the graph has a cycle")


def node_influence(n_nodes: int, edges: Iterable[tuple[int, int, float]]) -> list[float]:
    """Influence of each of ``n_nodes`` nodes on the logit, by propagation through the normalised
    adjacency (rows: targets, columns: sources). ``edges``: (source, target, weight), target −1
    for the logit (the adjacency's last row)."""
    adjacency = torch.zeros(n_nodes + 1, n_nodes + 1, dtype=torch.float64)
    for source, target, weight in edges:
        adjacency[n_nodes if target < 0 else target, source] += weight
    logit_weights = torch.zeros(n_nodes + 1, dtype=torch.float64)
    logit_weights[n_nodes] = 1.0
    return propagate_influence(normalize_matrix(adjacency), logit_weights)[:n_nodes].tolist()


def cumulative_scores(influence: list[float]) -> list[float]:
    """Per node: the fraction of the total influence held by the nodes at least as influential
    as it (circuit-tracer's ``cumulative_scores``, written to graph files as ``influence``): the
    strongest node has the smallest value, and a viewer keeps nodes with score ≤ node_threshold."""
    if not influence:
        return []
    values = torch.tensor(influence, dtype=torch.float64)
    order = values.argsort(descending=True, stable=True)
    running = values[order].cumsum(0) / values.sum().clamp_min(1e-300)
    scores = torch.empty_like(values)
    scores[order] = running
    return scores.tolist()
