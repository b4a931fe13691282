"""Benchmark what Dagster costs: materializing k layer partitions through Dagster with LocalCompute
(Pipes subprocess worker, run storage, events, checks) vs running the same worker task directly;
and with SlurmCompute on the local cluster: submission-to-start latency, and one array job for
the k layers vs k single-layer runs (one job each).

    .venv/bin/python benchmarks/orchestration.py --task activations --repeats 3
    .venv/bin/python benchmarks/orchestration.py --task saes --sae-steps 50
    bash scripts/slurm-local.sh start && .venv/bin/python benchmarks/orchestration.py --backend slurm --task saes

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
    parser.add_argument("--storage", type=Path, default=ROOT / "studies" / "tiny",
                        help="the tiny study's folder (storage root / prefix) to copy models and inputs from")
    parser.add_argument("--backend", choices=["local", "slurm"], default="local")
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
        data = yaml.safe_load((ROOT / "configs" / "experiments" / "tiny.yaml").read_text())
        data["storage"] = {"root": str(tmp), "prefix": "storage"}
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
                result = dg.materialize(list(defs.assets), selection=[config.asset_key(args.task)], instance=instance,
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

        if args.backend == "slurm":
            return _slurm(args, tmp, config_path, defs, keys, reset, direct)

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


def _job_times(job_ids: list[str]) -> list[dict[str, float]]:
    """Submit, start and end times (epoch seconds) of every job or array task of ``job_ids``."""
    import datetime as dt

    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%V|%S|%e"],
                         capture_output=True, text=True, check=True).stdout

    def epoch(text: str) -> float:
        return dt.datetime.fromisoformat(text).timestamp()

    rows = [line.split("|") for line in out.split()]
    return [{"job": r[0], "submit": epoch(r[1]), "start": epoch(r[2]), "end": epoch(r[3])} for r in rows]


def _slurm(args: argparse.Namespace, tmp: Path, config_path: Path, defs, keys: list[str], reset, direct) -> None:  # noqa: ANN001
    """Dagster + SlurmCompute on the local cluster: k layers as one array job vs k single-layer runs."""
    import dagster as dg
    from interp_assets.config import load_config

    from resources.slurm import SlurmCompute

    def run(compute: SlurmCompute, partition_sets: list[list[str]]) -> tuple[float, list[str]]:
        reset()
        job_ids: list[str] = []
        started = time.perf_counter()
        with dg.instance_for_test() as instance:
            for partitions in partition_sets:
                tags = {"dagster/asset_partition_range_start": partitions[0],
                        "dagster/asset_partition_range_end": partitions[-1]}
                result = dg.materialize(list(defs.assets), selection=[load_config(config_path).asset_key(args.task)], instance=instance,
                                        resources={"compute": compute}, tags=tags)
                assert result.success
                for md in (m.metadata for m in result.asset_materializations_for_node(args.task)):
                    if "slurm/job_id" in md:
                        job_ids.append(str(md["slurm/job_id"].value).split("_")[0])
        return time.perf_counter() - started, sorted(set(job_ids))

    compute = SlurmCompute(log_dir=str(tmp / "slurm-logs"), poll_seconds=0.5, max_poll_seconds=2.0,
                           array_tasks=[args.task])
    run(compute, [keys])  # warm-up
    timings: dict[str, list[float]] = {"array_job": [], "single_jobs": [], "direct": []}
    latencies: list[float] = []
    for _ in range(args.repeats):
        timings["direct"].append(direct())
        seconds, job_ids = run(compute, [keys])
        timings["array_job"].append(seconds)
        latencies += [t["start"] - t["submit"] for t in _job_times(job_ids)]
        seconds, job_ids = run(compute, [[key] for key in keys])
        timings["single_jobs"].append(seconds)
        latencies += [t["start"] - t["submit"] for t in _job_times(job_ids)]
    medians = {name: statistics.median(values) for name, values in timings.items()}
    result = {
        "benchmark": "orchestration_slurm",
        "task": args.task,
        "partitions": len(keys),
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
        "slurm": subprocess.run(["sinfo", "-V"], capture_output=True, text=True).stdout.strip(),
        "git_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
        "timings_s": timings,
        "median_s": medians,
        "submit_to_start_s": {"median": statistics.median(latencies), "max": max(latencies), "n": len(latencies),
                              "note": "squeue times have 1 s resolution"},
        "overhead_per_partition_array_s": (medians["array_job"] - medians["direct"]) / len(keys),
        "single_jobs_over_array": medians["single_jobs"] / medians["array_job"],
    }
    out = ROOT / "benchmarks" / "results" / f"orchestration_{args.task}_slurm.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
