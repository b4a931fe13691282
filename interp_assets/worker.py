"""Worker entry point: ``python -m interp_assets.worker <task>``.

Run by a compute backend (a local subprocess or a SLURM job) under Dagster Pipes: the task (one
module per phase in ``interp_assets/tasks/``) reads its config and partition keys from the Pipes
extras, does the heavy work, writes artifacts to the storage root, and its logs, metadata and
content-hash data version are reported back to the Dagster run. Without Pipes (run by hand or by a
benchmark) the same task runs from ``--config``/``--partition`` and prints its result as JSON.
"""

from __future__ import annotations

if __name__ == "__main__":
    # Before the imports below: SLURM checks time limits every 30 s and sends USR1 when fewer than
    # signal_seconds + 30 s are left, so a short job can get it within a second of starting. The
    # batch script ignores USR1 until here; dying of it instead fails the job, not resubmittable.
    from interp_assets.checkpoint_signal import install_usr1_handler

    install_usr1_handler()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from interp_assets.checkpoint_signal import ignore_usr1, install_usr1_handler  # noqa: E402
from interp_assets.config import load_config, parse_config  # noqa: E402
from interp_assets.provenance import provenance  # noqa: E402
from interp_assets.tasks import TASKS, TaskContext, TaskResult  # noqa: E402
from resources.storage import open_store  # noqa: E402


def _set_threads() -> None:
    threads = int(os.environ.get("INTERP_ASSETS_TORCH_THREADS", "0") or 0)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _with_provenance(result: TaskResult, record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(materialization metadata, per-partition metadata) with provenance where it is true: on each
    partition of a range run (a backend that splits the range, e.g. into SLURM array tasks, merges
    the materializations, and a merged provenance would be the run's, not the partition's), on the
    materialization otherwise."""
    if not result.partitions:
        return {**result.metadata, **record}, {}
    return dict(result.metadata), {key: {**metadata, **record} for key, metadata in result.partitions.items()}


def _run_under_pipes(task: str) -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        started = time.perf_counter()
        extras = pipes.extras
        config = parse_config(extras["config"], source=extras.get("config_source", "<pipes extras>"))
        ctx = TaskContext(config=config, store=open_store(config.storage),
                          partition_keys=list(extras.get("partition_keys") or []), log=pipes.log.info)
        result = TASKS[task](ctx)
        metadata, partitions = _with_provenance(result, provenance(config, started))
        if partitions:
            pipes.report_custom_message({"partitions": partitions})
        pipes.report_asset_materialization(metadata=metadata, data_version=result.data_version)


def _process_started() -> float:
    """This process's start on the ``time.monotonic`` clock (Linux: /proc/self/stat's start time)."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def _run_direct(task: str, config_path: str, partition_keys: list[str]) -> None:
    started = time.perf_counter()
    config = load_config(config_path)
    # Each line timed from the process's start (imports included): where a job's time goes.
    since_start = lambda: time.monotonic() - _process_started()  # noqa: E731
    print(f"[{since_start():7.1f} s] {task}: imports done, config read", file=sys.stderr, flush=True)
    ctx = TaskContext(config=config, store=open_store(config.storage), partition_keys=partition_keys,
                      log=lambda message: print(f"[{since_start():7.1f} s] {message}", file=sys.stderr, flush=True))
    result = TASKS[task](ctx)
    metadata, partitions = _with_provenance(result, provenance(config, started))
    print(json.dumps({"data_version": result.data_version, "metadata": metadata, "partitions": partitions}))


def main(argv: list[str] | None = None) -> None:
    install_usr1_handler()
    parser = argparse.ArgumentParser(prog="python -m interp_assets.worker", description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--config", help="run without Dagster Pipes: the experiment config file")
    parser.add_argument("--partition", action="append", default=[], help="partition key (repeatable)")
    args = parser.parse_args(argv)
    _set_threads()
    from dagster_pipes import PipesEnvVarParamsLoader

    try:
        if PipesEnvVarParamsLoader().is_dagster_pipes_process():
            _run_under_pipes(args.task)
        elif args.config:
            _run_direct(args.task, args.config, args.partition)
        else:
            parser.error("not launched by Dagster Pipes: pass --config (and --partition) to run directly")
    finally:
        ignore_usr1()


if __name__ == "__main__":
    main()
