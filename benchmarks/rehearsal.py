"""Rehearse a study at its real shapes and compare with the resource plan: every phase of a config
(``configs/rehearsal-qwen2.5-3b.yaml``: a random-weight Qwen2 with Qwen2.5-3B's architecture) runs
through the pipeline's own worker tasks, one child process per SLURM job the plan counts
(baselines per behaviour, activations once, saes per layer, attribution / interventions per
behaviour), and records per phase wall time, peak RSS (``ru_maxrss`` of each child, from
``os.wait4``) and bytes written under the storage root, beside ``interp_assets.plan``'s prediction
for ``--device`` (default cpu: this machine), with the ratio and whether it is within ±30 %.

    nice -n 19 .venv/bin/python benchmarks/rehearsal.py configs/rehearsal-qwen2.5-3b.yaml
    nice -n 19 .venv/bin/python benchmarks/rehearsal.py configs/rehearsal-qwen2.5-3b.yaml --layers 2

``--layers N`` builds only the first N of the model's layers (the widths stay) and keeps the
captured / key layers that exist (or the last ones): a cut-down run for a machine that cannot spare
the full model. The plan is computed for exactly the config that runs. Writes
``benchmarks/results/study_scale_<experiment>_L<layers>_<device>.json``; never run by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interp_assets.config import load_config  # noqa: E402
from interp_assets.plan import markdown, plan_for  # noqa: E402

TOLERANCE = 0.30


def _cut(data: dict, layers: int) -> dict:
    """The config with only the first ``layers`` decoder layers built; captured and key layers
    kept where they exist, else the last ones."""
    data["model"]["random"]["num_layers"] = layers
    wanted = data["activations"]["layers"]
    if isinstance(wanted, str):
        first, last = (int(x) for x in wanted.split("-"))
        wanted = list(range(first, last + 1))
    kept = [layer for layer in wanted if layer < layers] or list(range(max(0, layers - 2), layers))
    data["activations"]["layers"] = kept
    keys = [layer for layer in data.get("attribution", {}).get("key_layers", []) if layer in kept] or kept
    data.setdefault("attribution", {})["key_layers"] = keys
    return data


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_job(task: str, config_path: Path, partitions: list[str]) -> dict:
    """One worker process, as one SLURM job runs it: wall time and its own peak RSS."""
    args = [sys.executable, "-m", "interp_assets.worker", task, "--config", str(config_path)]
    for key in partitions:
        args += ["--partition", key]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # reaps it: rusage of this child alone
        seconds = time.perf_counter() - started
        err.seek(0)
        log = err.read()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{task} {partitions} failed:\n{log[-4000:]}")
    return {"partitions": partitions, "seconds": round(seconds, 2), "peak_rss_bytes": usage.ru_maxrss * 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--layers", type=int, default=None, help="build only the first N decoder layers")
    parser.add_argument("--sae-expansion", type=int, default=None,
                        help="cut the SAE width too (d_sae = d_in × this): a shared machine may not spare the "
                             "16 bytes per parameter of a full-width SAE in training (15.5 GB at 11008 → 44032)")
    parser.add_argument("--device", default="cpu", help="the plan's device to compare with (cpu: this machine)")
    parser.add_argument("--phases", default="language_model,baselines,activations,saes,attribution_graphs,interventions")
    args = parser.parse_args()

    data = yaml.safe_load(args.config.read_text())
    if args.layers:
        data = _cut(data, args.layers)
    if args.sae_expansion:
        data["sae"]["expansion_factor"] = args.sae_expansion
    work = Path(tempfile.mkdtemp(prefix="rehearsal-"))
    data["storage"] = {"root": str(work / "storage")}
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(config_path)
    plan = plan_for(config, args.device)
    print(markdown(plan), flush=True)

    from interp_assets.artifacts import prompts_relpath
    from interp_assets.assets.prompts import prompts_table
    from resources.storage import open_store

    store = open_store(config.storage)
    for behaviour in config.prompts.behaviours:
        store.write_parquet(prompts_relpath(behaviour), prompts_table(config, behaviour))

    behaviours = list(config.prompts.behaviours)
    layers = [str(layer) for layer in config.activations.layers]
    jobs = {
        "language_model": [[]],
        "baselines": [[b] for b in behaviours],
        "activations": [layers],
        "saes": [[layer] for layer in layers],
        "attribution_graphs": [[b] for b in behaviours],
        "interventions": [[b] for b in behaviours],
    }
    storage = Path(config.storage.root)
    phases: dict = {}
    import torch

    name = (f"study_scale_{config.experiment.name}_L{config.model.random.num_layers if config.model.random else 'all'}"
            f"_x{config.sae.expansion_factor}_{args.device}.json")
    out = ROOT / "benchmarks" / "results" / name

    def write() -> None:
        # After every phase: a run stopped part-way still leaves what it measured.
        result = {
            "benchmark": "study_scale",
            "config": str(args.config),
            "experiment": config.experiment.name,
            "model_layers_built": config.model.random.num_layers if config.model.random else None,
            "sae_expansion_factor": config.sae.expansion_factor,
            "captured_layers": config.activations.layers,
            "device": args.device,
            "plan": plan.to_json(),
            "phases": phases,
            "machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                        "load_average": os.getloadavg()},
            "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True).stdout.strip(),
        }
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)

    for phase in args.phases.split(","):
        before = _dir_bytes(storage)
        runs = []
        for partitions in jobs[phase]:
            runs.append(run_job(phase, config_path, partitions))
            print(f"{phase} {partitions}: {runs[-1]['seconds']} s, peak RSS {runs[-1]['peak_rss_bytes'] / 1e9:.2f} GB",
                  flush=True)
        planned = plan.phase(phase)
        measured_seconds = max(r["seconds"] for r in runs)
        measured_rss = max(r["peak_rss_bytes"] for r in runs)
        written = _dir_bytes(storage) - before
        phases[phase] = {
            "jobs": runs,
            "measured": {"seconds_per_job_max": measured_seconds, "peak_rss_bytes": measured_rss, "bytes_written": written},
            "planned": {"seconds_per_job": round(planned.seconds, 2), "host_peak_bytes": planned.host_peak_bytes,
                        "storage_bytes": planned.storage_bytes, "flops_per_job": planned.flops,
                        "bytes_moved_per_job": planned.bytes_moved, "bound": planned.bound},
            "ratio_planned_over_measured": {
                "seconds": round(planned.seconds / measured_seconds, 3),
                "peak_memory": round(planned.host_peak_bytes / measured_rss, 3),
            },
            "within_30_percent": {
                "seconds": abs(planned.seconds / measured_seconds - 1) <= TOLERANCE,
                "peak_memory": abs(planned.host_peak_bytes / measured_rss - 1) <= TOLERANCE,
            },
            "load_average_after": os.getloadavg()[0],
        }
        write()
    print(f"wrote {out}")
    for phase, row in phases.items():
        print(f"{phase:20s} time planned/measured {row['ratio_planned_over_measured']['seconds']:.2f}  "
              f"memory {row['ratio_planned_over_measured']['peak_memory']:.2f}")


if __name__ == "__main__":
    main()
