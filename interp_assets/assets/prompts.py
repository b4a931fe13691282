"""Phase 0: clean/corrupted prompt pairs with target and foil answers, split train/test."""

# No `from __future__ import annotations`: Dagster reads the context/resource type hints at runtime.
import random

import dagster as dg
import polars as pl

from interp_assets.artifacts import behaviour_seed, prompts_relpath
from interp_assets.config import ExperimentConfig
from interp_assets.core.behaviours import generate_prompts
from interp_assets.assets._common import code_version, tag_run
from interp_assets.partitions import behaviour_partitions
from resources.storage import open_store

LOGIC_VERSION = "1"


def prompts_table(config: ExperimentConfig, behaviour: str) -> pl.DataFrame:
    """n prompts of one behaviour; the train/test split is a seeded shuffle."""
    section = config.prompts
    seed = behaviour_seed(section.seed, behaviour)
    pairs = generate_prompts(behaviour, section.n_per_behaviour, seed)
    order = list(range(len(pairs)))
    random.Random(seed + 1).shuffle(order)
    n_train = round(len(pairs) * section.train_fraction)
    split = ["test"] * len(pairs)
    for index in order[:n_train]:
        split[index] = "train"
    return pl.DataFrame(
        {
            "id": [pair.id for pair in pairs],
            "behaviour": [pair.behaviour for pair in pairs],
            "split": split,
            "clean": [pair.clean for pair in pairs],
            "corrupted": [pair.corrupted for pair in pairs],
            "target": [pair.target for pair in pairs],
            "foil": [pair.foil for pair in pairs],
        }
    )


def _preview(table: pl.DataFrame, rows: int = 5) -> dg.TableMetadataValue:
    columns = ["split", "clean", "corrupted", "target", "foil"]
    return dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in table.head(rows).select(columns).iter_rows(named=True)],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, "string") for name in columns]),
    )


def build(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.asset(
        partitions_def=behaviour_partitions(config),
        code_version=code_version(config, LOGIC_VERSION, "prompts"),
        group_name="study",
        kinds={"polars", "parquet"},
        description=__doc__,
    )
    def prompts(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        # Light and model-free: generated in the Dagster process, no worker needed.
        tag_run(context, config)
        behaviour = context.partition_key
        table = prompts_table(config, behaviour)
        store = open_store(config.storage)
        sha = store.write_parquet(prompts_relpath(behaviour), table)
        return dg.MaterializeResult(
            metadata={
                "path": store.url(prompts_relpath(behaviour)),
                "n_prompts": table.height,
                "n_train": int((table["split"] == "train").sum()),
                "n_test": int((table["split"] == "test").sum()),
                "preview": _preview(table),
                "dagster/row_count": table.height,
            },
            data_version=dg.DataVersion(sha),
        )

    return [prompts]
