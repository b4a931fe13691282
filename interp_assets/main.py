"""The main job: materialize the whole study on the configured model with local compute.

``python -m interp_assets.main`` (README command 1 runs it with DAGSTER_HOME=dagster_home), so
every run lands in the embedded SQLite instance that ``dagster dev`` then shows. Order: the
language model, then per behaviour its prompts and baselines (with their checks), then ALL layer
partitions of activations as one run (one forward pass per batch), then the SAEs and their
feature dashboards (each a layer range in one run), then the circuit phases.
"""

from __future__ import annotations

import argparse
import sys
import time

import dagster as dg

from interp_assets.config import load_config
from interp_assets.definitions import build_definitions

def _root_cause(error) -> str:  # noqa: ANN001
    # Dagster wraps user errors ("Error occurred while executing op ..."); the cause says what broke.
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def _failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    return [
        f"{event.step_key}: {_root_cause(event.event_specific_data.error)}"
        for event in result.all_events
        if event.event_type_value == "STEP_FAILURE" and event.event_specific_data.error
    ]


def materialize_study(config_path: str | None, instance: dg.DagsterInstance) -> list[str]:
    """Materialize every phase in order; returns what failed (independent phases still run)."""
    config = load_config(config_path)
    defs = build_definitions(config_path)
    assets = list(defs.assets or [])
    resources = dict(defs.resources or {})
    failures: list[str] = []

    def run(selection: list[str], what: str, **kwargs: object) -> None:
        started = time.perf_counter()
        print(f"[main] {what} ...", flush=True)
        result = dg.materialize(
            assets, selection=[config.asset_key(name) for name in selection], instance=instance, resources=resources, raise_on_error=False, **kwargs
        )
        print(f"[main] {what}: {'ok' if result.success else 'FAILED'} in {time.perf_counter() - started:.1f}s "
              f"(run {result.run_id})", flush=True)
        for message in _failure_messages(result):
            print(f"[main]   {message}", flush=True)
            failures.append(f"{what}: {message}")

    run(["language_model"], "language_model")
    for behaviour in config.prompts.behaviours:
        run(["prompts", "baselines"], f"prompts + baselines [{behaviour}]", partition_key=behaviour)
    def one_run_of(keys: list[str]) -> dict[str, str]:
        return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}

    first, last = config.layer_keys[0], config.layer_keys[-1]
    range_tags = one_run_of(config.layer_keys)
    if config.sae.data_source == "cached":  # stream: the SAE worker runs the model itself, nothing is stored
        run(["activations"], f"activations [layers {first}..{last}, one run]", tags=range_tags)
    if config.sae_variants:  # a sweep: every layer × variant in one run, then one choice per layer
        keys = config.sae_partition_keys
        run(["saes"], f"saes [{keys[0]}..{keys[-1]}: {len(config.layer_keys)} layers × {len(config.sae_variants)} "
                      "variants, one run]", tags=one_run_of(keys))
        run(["sae_selection"], f"sae_selection [layers {first}..{last}, one run]", tags=range_tags)
    else:
        run(["saes"], f"saes [layers {first}..{last}, one run]", tags=range_tags)
    run(["feature_dashboards"], f"feature_dashboards [layers {first}..{last}, one run]", tags=range_tags)
    for behaviour in config.prompts.behaviours:
        run(["attribution_graphs", "interventions"], f"attribution + interventions [{behaviour}]", partition_key=behaviour)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interp_assets.main", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="experiment config (default: $INTERP_ASSETS_CONFIG or configs/experiments/tiny.yaml)")
    args = parser.parse_args(argv)
    instance = dg.DagsterInstance.get()
    failures = materialize_study(args.config, instance)
    print("[main] open the UI on this instance: bash scripts/dev.sh  (http://127.0.0.1:3000)")
    if failures:
        print(f"[main] {len(failures)} step(s) failed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print("[main] done: every phase is materialized")
    return 0


if __name__ == "__main__":
    sys.exit(main())
