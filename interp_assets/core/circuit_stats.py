"""Faithfulness and completeness of a graph's circuits, with the numbers a reader needs to trust
them (Marks et al. 2024, §3):

- F(C): mean LD with everything at the key layers OUTSIDE circuit C mean-ablated; F(∅) with
  everything ablated; F(M) the model's own (clean) LD; F(M∖C) with only C ablated.
- faithfulness = (F(C) − F(∅)) / (F(M) − F(∅)); completeness = 1 − (F(M∖C) − F(∅)) / (F(M) − F(∅))
  (1: removing C takes everything the key layers do).
- every ratio comes with its percentile-bootstrap 95 % CI over prompts (the prompts resampled
  jointly for numerator and denominator), and the denominator F(M) − F(∅) is reported beside it in
  logits: a ratio over a denominator of a logit or so is noise, whatever its value.
- a baseline: random circuits of the same size, drawn from the key layers' active nodes (features
  active at that position on some prompt, and error terms), scored the same way: mean and standard
  deviation over draws. An attributed circuit is only informative where it beats them.

Deterministic: bootstrap and random draws are seeded from their names. Plain PyTorch: no dagster.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interp_assets.core.interventions import InterventionRunner, NodeRef, seed_of

CI = (0.025, 0.975)


def ratio_with_ci(
    numerator: torch.Tensor, empty: torch.Tensor, full: torch.Tensor, bootstrap_samples: int, seed: int,
) -> tuple[float, float, float]:
    """(mean(numerator) − mean(empty)) / (mean(full) − mean(empty)) over per-prompt LDs, and its
    percentile-bootstrap CI with the prompts resampled jointly."""
    numerator, empty, full = (t.double().cpu() for t in (numerator, empty, full))
    n = numerator.shape[0]
    draws = torch.randint(0, n, (bootstrap_samples, n), generator=torch.Generator().manual_seed(seed))

    def ratio(idx: torch.Tensor | slice) -> torch.Tensor:
        base = empty[idx].mean(-1)
        return (numerator[idx].mean(-1) - base) / (full[idx].mean(-1) - base)

    boot = ratio(draws)
    return float(ratio(slice(None))), float(boot.nanquantile(CI[0])), float(boot.nanquantile(CI[1]))


def mean_with_ci(values: torch.Tensor, bootstrap_samples: int, seed: int) -> tuple[float, float, float]:
    values = values.double().cpu()
    n = values.shape[0]
    draws = torch.randint(0, n, (bootstrap_samples, n), generator=torch.Generator().manual_seed(seed))
    boot = values[draws].mean(-1)
    return float(values.mean()), float(boot.quantile(CI[0])), float(boot.quantile(CI[1]))


def active_node_pool(runner: InterventionRunner, prompt_set: str) -> list[NodeRef]:
    """Every key-layer node a random circuit may hold: each feature whose mean activation at a
    position (offset from the end) is positive over the set's prompts, and each error term."""
    pool: list[NodeRef] = []
    for layer in runner.circuit_layers:
        mean_f, _ = runner.feature_means(prompt_set, layer)  # [P, d_sae]
        width = mean_f.shape[0]
        for slot, feature in (mean_f > 0).nonzero().tolist():
            pool.append((layer, slot - width, feature))
        pool.extend((layer, slot - width, -1) for slot in range(width))
    return pool


def faithfulness_table(
    runner: InterventionRunner,
    prompt_set: str,
    ranked_nodes: Sequence[NodeRef],
    sizes: Sequence[int],
    bootstrap_samples: int,
    random_draws: int,
    seed_name: str,
) -> list[dict[str, float]]:
    """One row per circuit size n: the top-n circuit's faithfulness and completeness with CIs, the
    denominator in logits with its CI, and the random same-size circuits' faithfulness."""
    full = runner.sets[prompt_set].ld_clean
    empty = runner.circuit_lds(prompt_set, keep=[], ablate=None)
    pool = active_node_pool(runner, prompt_set)
    seed = seed_of(f"faithfulness:{seed_name}")
    denominator, denominator_low, denominator_high = mean_with_ci(full - empty, bootstrap_samples, seed)
    rows = []
    for size in sizes:
        circuit = list(ranked_nodes[:size])
        f_circuit = runner.circuit_lds(prompt_set, keep=circuit, ablate=None)
        f_complement = runner.circuit_lds(prompt_set, keep=None, ablate=circuit)
        faithfulness = ratio_with_ci(f_circuit, empty, full, bootstrap_samples, seed)
        complement = ratio_with_ci(f_complement, empty, full, bootstrap_samples, seed)
        random_scores = []
        generator = torch.Generator().manual_seed(seed_of(f"random-circuits:{seed_name}:{size}"))
        for _ in range(random_draws if 0 < size <= len(pool) else 0):
            chosen = torch.randperm(len(pool), generator=generator)[:size].tolist()
            lds = runner.circuit_lds(prompt_set, keep=[pool[i] for i in chosen], ablate=None)
            random_scores.append(float((lds.mean() - empty.mean()) / (full.mean() - empty.mean())))
        random_tensor = torch.tensor(random_scores, dtype=torch.float64)
        rows.append({
            "circuit_size": size,
            "f_circuit": float(f_circuit.mean()),
            "f_complement": float(f_complement.mean()),
            "f_empty": float(empty.mean()),
            "f_model": float(full.mean()),
            "denominator": denominator,
            "denominator_ci_low": denominator_low,
            "denominator_ci_high": denominator_high,
            "faithfulness": faithfulness[0],
            "faithfulness_ci_low": faithfulness[1],
            "faithfulness_ci_high": faithfulness[2],
            "complement_faithfulness": complement[0],
            "completeness": 1.0 - complement[0],
            "completeness_ci_low": 1.0 - complement[2],
            "completeness_ci_high": 1.0 - complement[1],
            "random_faithfulness_mean": float(random_tensor.mean()) if random_scores else float("nan"),
            "random_faithfulness_std": float(random_tensor.std()) if len(random_scores) > 1 else float("nan"),
            "random_draws": len(random_scores),
        })
    return rows
