"""One module per phase; each ``build(config)`` returns that phase's assets (and checks)."""

from interp_assets.assets import (
    activations,
    attribution,
    baselines,
    feature_dashboards,
    interventions,
    language_model,
    prompts,
    resource_plan,
    sae_selection,
    saes,
)

PHASES = (language_model, prompts, baselines, activations, saes, sae_selection, feature_dashboards, attribution,
          interventions, resource_plan)
