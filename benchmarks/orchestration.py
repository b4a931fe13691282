"""Benchmark what Dagster costs: materializing k layer partitions through Dagster with LocalCompute
(Pipes subprocess worker, run storage, events, checks) vs running the same worker task directly.

    .venv/bin/python benchmarks/orchestration.py --task activations --repeats 3
    .venv/bin/python benchmarks/orchestration.py --task saes --sae-steps 50

Uses a copy of the tiny study's storage made by README command 1 (the model, prompts and, for
``saes``, activations), so both paths do the same work on the same inputs. Reports the median wall
time of each and the overhead per partition. Writes ``benchmarks/results/orchestration_<task>.json``;
never run by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=["activations", "saes"], default="activations")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sae-steps", type=int, default=50)
    parser.add_argument("--storage", type=Path, default=ROOT / "dagster_home" / "storage")
    args = parser.parse_args()

    import dagster as dg

    from interp_assets.config import load_config
    from interp_assets.definitions import build_definitions

    needed = ["models", "prompts"] + (["activations"] if args.task == "saes" else [])
    missing = [name for name in needed if not (args.storage / name).is_dir()]
    if missing:
        sys.exit(f"{args.storage} lacks {missing}: run README command 1 first")
    with tempfile.TemporaryDirectory(prefix="orchestration-") as tmp:
        tmp = Path(tmp)
        for name in needed:
            shutil.copytree(args.storage / name, tmp / "storage" / name)
        data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
        data["storage"]["root"] = str(tmp / "storage")
        steps = args.sae_steps
        data["sae"].update(steps=steps, checkpoint_every=steps, log_every=steps, lr_warmup_steps=steps // 10,
                           lr_decay_steps=steps // 5, l1_warmup_steps=steps // 10, dead_window_steps=steps // 2,
                           min_explained_variance=0.0)
        config_path = tmp / "config.yaml"
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        config = load_config(config_path)
        defs = build_definitions(config_path)
        keys = config.layer_keys
        tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}

        def reset() -> None:
            # Retrained every time: a finished SAE for the same config would be skipped.
            shutil.rmtree(tmp / "storage" / "saes", ignore_errors=True)
            shutil.rmtree(tmp / "storage" / "checkpoints", ignore_errors=True)

        def through_dagster() -> float:
            reset()
            with dg.instance_for_test() as instance:
                started = time.perf_counter()
                result = dg.materialize(list(defs.assets), selection=[args.task], instance=instance,
                                        resources=dict(defs.resources), tags=tags)
                seconds = time.perf_counter() - started
            assert result.success
            return seconds

        def direct() -> float:
            reset()
            command = [sys.executable, "-m", "interp_assets.worker", args.task, "--config", str(config_path)]
            for key in keys:
                command += ["--partition", key]
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, cwd=ROOT, env={**os.environ})
            return time.perf_counter() - started

        through_dagster()  # warm-up: imports, first-run caches
        timings = {"dagster": [], "direct": []}
        for _ in range(args.repeats):
            timings["direct"].append(direct())
            timings["dagster"].append(through_dagster())

    dagster_s, direct_s = statistics.median(timings["dagster"]), statistics.median(timings["direct"])
    result = {
        "benchmark": "orchestration",
        "task": args.task,
        "partitions": len(keys),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "git_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
        "timings_s": timings,
        "median_dagster_s": dagster_s,
        "median_direct_s": direct_s,
        "overhead_s": dagster_s - direct_s,
        "overhead_per_partition_s": (dagster_s - direct_s) / len(keys),
    }
    out = ROOT / "benchmarks" / "results" / f"orchestration_{args.task}_local.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
