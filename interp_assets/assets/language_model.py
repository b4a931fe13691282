"""The language model every phase reads: the tiny Qwen2 built and trained by the project, or a
pretrained HF causal LM on disk (fingerprinted, never downloaded)."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import dagster as dg

from interp_assets.assets._common import code_version, run_worker
from interp_assets.config import ExperimentConfig
from resources.compute import ComputeResource

LOGIC_VERSION = "1"


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        code_version=code_version(config, LOGIC_VERSION, "model"),
        group_name="study",
        kinds={"pytorch", "safetensors"},
        pool=config.pool("language_model"),
        description=__doc__,
    )
    def language_model(context: dg.AssetExecutionContext, compute: ComputeResource) -> dg.MaterializeResult:
        return run_worker(context, compute, task="language_model", config=config)

    return [language_model]
