"""The study's resource plan, kept beside the study in the UI: per phase FLOPs, bytes moved, peak
memory, predicted wall time and storage, and GPU-hours / CD3 service units for the whole study,
on each target device (``python -m interp_assets.plan`` prints the same). Pure arithmetic on the
config and the model's config.json: it runs in the Dagster process, no compute backend."""

# No `from __future__ import annotations`: Dagster reads the context type hints at runtime.
import hashlib
import json
import os

import dagster as dg

from interp_assets.assets._common import code_version
from interp_assets.config import ExperimentConfig

LOGIC_VERSION = "1"
DEVICE_ENV_VAR = "INTERP_ASSETS_PLAN_DEVICE"
"""The device whose full table the asset shows (default a100-80gb); every device gets a summary row."""


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        # Every section sizes some phase, and so does the number of layers (which the other assets'
        # code versions leave out: a layer is a partition to them, a job to the plan).
        code_version=code_version(config, LOGIC_VERSION, "model", "prompts", "baselines", "activations", "sae",
                                  "attribution", "interventions") + f"+layers{len(config.activations.layers)}",
        group_name="study",
        kinds={"python"},
        description=__doc__,
    )
    def resource_plan(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        from interp_assets.core.resource_model import DEVICES, human_bytes, human_seconds
        from interp_assets.plan import markdown, plan_for

        primary = os.environ.get(DEVICE_ENV_VAR, "a100-80gb")
        plans = {name: plan_for(config, name) for name in DEVICES}
        rows = ["| device | GPU-hours | service units | SAE job | study job time | largest device peak |",
                "|---|---:|---:|---:|---:|---:|"]
        for name, plan in plans.items():
            peak = max(p.device_peak_bytes for p in plan.phases)
            rows.append(f"| {name} | {plan.gpu_hours:.2f} | {plan.service_units:.2f} | "
                        f"{human_seconds(plan.phase('saes').seconds)} | "
                        f"{human_seconds(sum(p.total_seconds for p in plan.phases))} | {human_bytes(peak)} |")
        summary = {name: plan.to_json() for name, plan in plans.items()}
        context.log.info(f"resource plan on {primary}: {plans[primary].gpu_hours:.2f} GPU-hours")
        return dg.MaterializeResult(
            metadata={
                "plan": dg.MetadataValue.md(markdown(plans[primary])),
                "devices": dg.MetadataValue.md("\n".join(rows)),
                "gpu_hours": plans[primary].gpu_hours,
                "service_units": plans[primary].service_units,
                "device": primary,
                "figures": dg.MetadataValue.json(summary),
            },
            data_version=dg.DataVersion(hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()),
        )

    return [resource_plan]
