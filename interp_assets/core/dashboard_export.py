"""A layer's feature dashboards in SAEDashboard's Neuronpedia batch format: the document that
SAEDashboard's NeuronpediaRunner writes and Neuronpedia imports, filled from the rows of
``core.dashboards`` (``latent_rows`` and ``context_rows``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from interp_assets.core.dashboards import activation_histogram_centres, contexts_by_latent

NEURONPEDIA_FEATURE_FIELDS = (
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
    "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations",
)
"""The keys of SAEDashboard's ``NeuronpediaDashboardFeature.to_dict()`` (jbloomAus/SAEDashboard,
sae_dashboard/neuronpedia/neuronpedia_dashboard.py at 03a615f7): the per-feature record of the
batch files its NeuronpediaRunner writes and Neuronpedia imports. Its constructor takes exactly
these keys, so a feature with any other key would not load with that class."""


def neuronpedia_batch(latents: Sequence[dict[str, Any]], contexts: dict[str, list[Any]], *, model_id: str,
                      layer: int, sae_set: str, n_prompts_total: int, n_tokens_in_prompt: int,
                      dataset: str) -> dict[str, Any]:
    """The layer's dashboards as ONE SAEDashboard / Neuronpedia batch document:
    ``{model_id, layer, sae_set, features: [...]}`` with every key of
    ``NEURONPEDIA_FEATURE_FIELDS`` per feature. The activation histogram (``freq_hist_*``) is
    over log-spaced bins (its ``bar_values`` their geometric centres, empty bins left out), the
    logit histogram (``logits_hist_*``) over equal bins of the vocabulary's effects, as
    SAEDashboard gives bar heights and bin centres. What we do not compute (neuron alignment,
    correlations, decoder weight distribution) is an empty list, as SAEDashboard writes it when a
    component is switched off. Each top context is a
    ``TOP ACTIVATIONS`` entry: ``bin_min`` −1, ``bin_max`` the latent's max activation,
    ``bin_contains`` −1 (what SAEDashboard's converter gives that group), ``tokens`` and ``values``."""
    by_latent = contexts_by_latent(contexts)
    rounded = contexts.get("rounded") or [_rounded(values) for values in contexts["activations"]]
    centres = activation_histogram_centres()
    features = []
    for row in latents:
        filled = [(centre, count) for centre, count in zip(centres, row["activation_histogram"], strict=True) if count]
        features.append({
            "feature_index": row["latent"],
            **{key: [] for key in NEURONPEDIA_FEATURE_FIELDS if key.startswith(("neuron_alignment", "correlated"))},
            "neg_str": row["suppressed_tokens"],
            "neg_values": _rounded(row["suppressed_logits"]),
            "pos_str": row["promoted_tokens"],
            "pos_values": _rounded(row["promoted_logits"]),
            "frac_nonzero": row["density"],
            "freq_hist_data_bar_values": _rounded([centre for centre, _ in filled]),
            "freq_hist_data_bar_heights": [count for _, count in filled],
            "logits_hist_data_bar_heights": row["logit_histogram_heights"],
            "logits_hist_data_bar_values": _rounded(row["logit_histogram_values"]),
            "n_prompts_total": n_prompts_total,
            "n_tokens_in_prompt": n_tokens_in_prompt,
            "dataset": dataset,
            "decoder_weights_dist": [],
            "activations": [
                {"bin_min": -1, "bin_max": _rounded([row["max_activation"]])[0], "bin_contains": -1,
                 "tokens": contexts["tokens"][i], "values": rounded[i]}
                for i in by_latent.get(row["latent"], [])
            ],
        })
    return {"model_id": model_id, "layer": layer, "sae_set": sae_set, "features": features}


def _rounded(values: Sequence[float]) -> list[float]:
    # SAEDashboard rounds to 3 decimals; so do we (it keeps the file a third of its size).
    return [round(float(value), 3) for value in values]
