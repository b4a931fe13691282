"""Experiment tracking: each trained SAE as one MLflow run, when ``tracking.mlflow_uri`` is set.

One MLflow experiment per study experiment (named ``experiment.name``), one run per layer
(``saes/layer_003``; in a sweep per layer × variant, ``saes/layer_003/topk_k16``), holding:
  params   every ``sae.*`` setting, the model, hook point, layer, corpus source and budget, d_in, d_sae
  metrics  the training curve at the log interval (loss, MSE, R², L0, dead fraction, lr, steps/s),
           each point at its training step; the held-out evaluations (``held_out/...``) and the
           random SAE of the same shape beside them (``random_sae/...``)
  tags     the Dagster run id, the partition, the git commit
The run is logged when the SAE is published, after training and judging: training never waits on
the tracking server. A server that is down or refuses costs one short timeout
(``REQUEST_TIMEOUT_S``, no retries), logs a warning, and leaves the SAE, its files and its Dagster
metadata as they would be without tracking. Credentials for a server that asks for them come from
MLflow's own environment variables (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` / ``_TOKEN``),
never from the config, and nothing from the environment is logged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interp_assets.config import ExperimentConfig

REQUEST_TIMEOUT_S = 5
"""Seconds for each request to the tracking server; no retries (MLflow's default retries for minutes)."""

_CURVE = {"losses/overall": "train/loss", "losses/mse": "train/mse", "metrics/explained_variance": "train/r2",
          "metrics/l0": "train/l0", "sparsity/dead_fraction": "train/dead_fraction", "lr": "train/lr",
          "perf/steps_per_s": "train/steps_per_s"}
"""Training-history keys (core/sae_training.py) → MLflow metric names."""


def run_name(layer: int, variant: str | None = None) -> str:
    return f"saes/layer_{layer:03d}" + (f"/{variant}" if variant else "")


def sae_params(config: ExperimentConfig, layer: int, d_in: int, d_sae: int) -> dict[str, str]:
    """What the run was trained with: settings only, no path, no environment."""
    params = {f"sae.{key}": value for key, value in config.sae.model_dump(mode="json").items()}
    params.update({"model.name": config.model.name, "activations.hook_point": config.activations.hook_point,
                   "layer": layer, "corpus.source": config.corpus.source, "corpus.max_tokens": config.corpus.max_tokens,
                   "corpus.eval_tokens": config.corpus.eval_tokens, "d_in": d_in, "d_sae": d_sae})
    return {key: str(value) for key, value in params.items()}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def log_sae_run(config: ExperimentConfig, layer: int, history: list[dict[str, Any]], summary: dict[str, Any],
                tags: dict[str, str], warn: Callable[[str], None]) -> str | None:
    """Log one SAE's training as an MLflow run; its URL, or None (with a warning) when it could not be."""
    uri = config.tracking.mlflow_uri
    if uri is None:
        return None
    # Read by MLflow at each request: a dead server costs one timeout, not minutes of retries.
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(REQUEST_TIMEOUT_S)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param, RunTag

        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(config.experiment.name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(config.experiment.name))
        variant = {"sae_variant": config.sae_variant} if config.sae_variant else {}
        run = client.create_run(experiment_id, run_name=run_name(layer, config.sae_variant),
                                tags={"interp_assets.experiment": config.experiment.name, "layer": str(layer),
                                      **variant, **tags})
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in sae_params(config, layer, summary["d_in"], summary["d_sae"]).items()]
        timestamp = int(run.info.start_time or 0)
        metrics = [Metric(name, float(record[key]), timestamp, int(record["step"]))
                   for record in history for key, name in _CURVE.items() if _finite(record.get(key))]
        final_step = int(history[-1]["step"]) if history else 0
        for key, value in summary.items():
            if _finite(value) and not key.startswith(("train_batch/", "train_window/")):
                name = key if key.startswith("random_sae/") else f"held_out/{key}"
                metrics.append(Metric(name, float(value), timestamp, final_step))
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        client.set_terminated(run_id, "FINISHED")
    except Exception as error:  # noqa: BLE001 - tracking must never fail the SAE
        warn(f"layer {layer}: MLflow tracking at {uri} failed ({type(error).__name__}: "
             f"{str(error).splitlines()[0][:300] if str(error) else ''}); the SAE and its Dagster metadata are "
             "complete without it")
        return None
    # The URI holds no credentials: the config refuses them (config.TrackingSection).
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

