"""Phase 1: per-prompt logit difference, p(target) and correctness, clean and corrupted."""

from __future__ import annotations

from typing import Any

from interp_assets.artifacts import baselines_relpath, prompts_relpath
from interp_assets.core.progress import Progress
from interp_assets.tasks.common import TaskContext, TaskResult, load_model, md


def task_baselines(ctx: TaskContext) -> TaskResult:
    """Phase 1: per-prompt logit difference, p(target), correctness on clean and corrupted."""
    import polars as pl

    from interp_assets.core.metrics import score_prompts
    from interp_assets.core.plots import logit_diff_histogram, png_markdown

    (behaviour,) = ctx.partition_keys
    prompts = ctx.store.read_parquet(prompts_relpath(behaviour))
    model, tokenizer = load_model(ctx)
    batch_size = ctx.config.baselines.batch_size
    columns: dict[str, Any] = {"id": prompts["id"], "behaviour": prompts["behaviour"], "split": prompts["split"]}
    for variant in ("clean", "corrupted"):
        scores = score_prompts(
            model,
            tokenizer,
            prompts[variant].to_list(),
            prompts["target"].to_list(),
            prompts["foil"].to_list(),
            batch_size,
            progress=lambda done, total, meter=Progress(len(prompts), ctx.log, label=f"baselines {behaviour}/{variant}",
                                                        unit="prompt"): meter.update(done),
        )
        columns[f"{variant}_logit_diff"] = scores.logit_diff.numpy()
        columns[f"{variant}_p_target"] = scores.p_target.numpy()
        columns[f"{variant}_correct"] = scores.correct.numpy()
    table = pl.DataFrame(columns)
    sha = ctx.store.write_parquet(baselines_relpath(behaviour), table)
    png = logit_diff_histogram(
        table["clean_logit_diff"].to_list(), table["corrupted_logit_diff"].to_list(), f"{behaviour}: logit difference"
    )
    ctx.store.write_bytes(baselines_relpath(behaviour).replace(".parquet", ".png"), png)
    summary = {
        "n_prompts": table.height,
        "accuracy_clean": float(table["clean_correct"].mean()),
        "accuracy_corrupted": float(table["corrupted_correct"].mean()),
        "mean_logit_diff_clean": float(table["clean_logit_diff"].mean()),
        "mean_logit_diff_corrupted": float(table["corrupted_logit_diff"].mean()),
        "mean_p_target_clean": float(table["clean_p_target"].mean()),
        "accuracy_clean_test": float(table.filter(pl.col("split") == "test")["clean_correct"].mean()),
    }
    return TaskResult(
        metadata={
            **summary,
            "path": ctx.store.url(baselines_relpath(behaviour)),
            "logit_diff_histogram": md(png_markdown(png, f"{behaviour} logit difference")),
        },
        data_version=sha,
    )
