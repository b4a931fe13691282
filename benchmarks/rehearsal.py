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
import shutil
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
PHASES = ("language_model", "baselines", "activations", "saes", "feature_dashboards", "attribution_graphs",
          "interventions")


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
    if data.get("interventions", {}).get("patching_layers"):
        data["interventions"]["patching_layers"] = keys
    return data


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def out_path(config, device: str) -> Path:  # noqa: ANN001
    layers = config.model.random.num_layers if config.model.random else "all"
    return ROOT / "benchmarks" / "results" / (
        f"study_scale_{config.experiment.name}_L{layers}_x{config.sae.expansion_factor}_{device}.json")


def compare(plan, phase: str, measured: dict, jobs: list[dict]) -> dict:  # noqa: ANN001
    """The plan's figures for one phase beside what was measured: ratios and whether within ±30 %.
    Time three ways: the phase's total (the plan's seconds × jobs against the jobs' sum: what the
    study costs), its median job, and its slowest job (what a SLURM time limit must cover)."""
    names = [p.phase for p in plan.phases]
    if phase not in names:
        return {"planned": None}
    planned = plan.phase(phase)
    times = sorted(job["seconds"] for job in jobs)
    ratios = {"seconds_total": planned.seconds * planned.jobs / sum(times) if planned.jobs == len(times) else None,
              "seconds_median_job": planned.seconds / times[len(times) // 2],
              "seconds": planned.seconds / times[-1],
              "peak_memory": planned.host_peak_bytes / measured["peak_rss_bytes"]}
    return {
        "planned": {"seconds_per_job": round(planned.seconds, 2), "host_peak_bytes": planned.host_peak_bytes,
                    "storage_bytes": planned.storage_bytes, "flops_per_job": planned.flops,
                    "bytes_moved_per_job": planned.bytes_moved, "bound": planned.bound},
        "ratio_planned_over_measured": {key: None if value is None else round(value, 3) for key, value in ratios.items()},
        "within_30_percent": {key: value is not None and abs(value - 1) <= TOLERANCE for key, value in ratios.items()},
    }


def table(result: dict) -> str:
    """Plan beside measurement, per phase (per job: the largest of a phase's jobs)."""
    lines = ["| phase | jobs | plan s / job | measured s / job: median (slowest) | plan / measured: total, median "
             "(slowest) | plan peak GB | measured peak RSS GB | plan / measured | plan storage GB | written GB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for phase, row in result["phases"].items():
        measured, planned = row["measured"], row.get("planned")
        ratio = row.get("ratio_planned_over_measured") or {}
        mark = lambda key: "" if row.get("within_30_percent", {}).get(key) else " ✗"  # noqa: E731
        times = sorted(job["seconds"] for job in row["jobs"])
        lines.append(
            f"| {phase} | {len(row['jobs'])} | {planned['seconds_per_job'] if planned else '—'} | "
            f"{times[len(times) // 2]} ({times[-1]}) | {ratio.get('seconds_total', '—')}{mark('seconds_total')}, "
            f"{ratio.get('seconds_median_job', '—')}{mark('seconds_median_job')} "
            f"({ratio.get('seconds', '—')}{mark('seconds')}) | "
            f"{planned['host_peak_bytes'] / 1e9:.2f} | {measured['peak_rss_bytes'] / 1e9:.2f} | "
            f"{ratio.get('peak_memory', '—')}{mark('peak_memory')} | {planned['storage_bytes'] / 1e9:.3g} | "
            f"{measured['bytes_written'] / 1e9:.3g} |")
    return "\n".join(lines)


def recompare(result_path: Path, device: str) -> None:
    """The measured figures of ``result_path`` kept, the plan recomputed with today's code."""
    result = json.loads(result_path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(result["config_data"], sort_keys=False))
        plan = plan_for(load_config(config_path), device)
    result["plan"] = plan.to_json()
    result["plan_git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                               text=True).stdout.strip()
    for phase, row in result["phases"].items():
        for key in ("planned", "ratio_planned_over_measured", "within_30_percent"):
            row.pop(key, None)
        row.update(compare(plan, phase, row["measured"], row["jobs"]))
    tmp_path = result_path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(result, indent=2) + "\n")
    tmp_path.replace(result_path)
    print(markdown(plan))


def run_job(task: str, config_path: Path, partitions: list[str]) -> dict:
    """One worker process, as one SLURM job runs it: wall time and its own peak RSS. Its log goes
    to ``logs/`` beside the config (each line timed: where a job spends its time)."""
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
    logs = config_path.parent / "logs"
    logs.mkdir(exist_ok=True)
    (logs / f"{task}-{'-'.join(partitions) or 'all'}.log").write_text(log)
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
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the study here; rerun with the same --work and --phases to measure again "
                             "the phases that failed (the others keep their figures)")
    parser.add_argument("--drop-unused-saes", action="store_true",
                        help="delete a non-key layer's SAE weights once its dashboards exist (disk smaller than "
                             "the study's storage)")
    parser.add_argument("--table", type=Path, default=None,
                        help="print an earlier result file as the Markdown table of benchmarks/README.md")
    parser.add_argument("--compare", type=Path, default=None,
                        help="recompute only the plan's side of an earlier result file (after a change to the plan)")
    args = parser.parse_args()
    if args.compare:
        recompare(args.compare, args.device)
        return
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return

    data = yaml.safe_load(args.config.read_text())
    if args.layers:
        data = _cut(data, args.layers)
    if args.sae_expansion:
        data["sae"]["expansion_factor"] = args.sae_expansion
    work = args.work or Path(tempfile.mkdtemp(prefix="rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
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
        "feature_dashboards": [[layer] for layer in layers],
        "attribution_graphs": [[b] for b in behaviours],
        "interventions": [[b] for b in behaviours],
    }
    storage = Path(config.storage.location)
    phases: dict = {}
    if args.work and out_path(config, args.device).exists():
        phases = json.loads(out_path(config, args.device).read_text()).get("phases", {})
    import torch

    out = out_path(config, args.device)

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
            "config_data": data,
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

    wanted = args.phases.split(",")
    # Later phases read the key layers' SAEs (graphs, circuits) and the patched layers' (interventions).
    read_later = {str(layer) for layer in (*(config.attribution.key_layers or config.activations.layers),
                                           *(config.interventions.patching_layers or config.activations.layers))}
    # A layer's SAE is trained, then its dashboards built, before the next layer's SAE: 15 full-width
    # SAEs are 58 GB, more than this machine's disk beside the model; with --drop-unused-saes the
    # weights of a layer that no later phase reads (neither a key nor a patched layer) go once its
    # dashboards exist.
    # Each phase is still measured job by job, as its SLURM array would run.
    order: list[tuple[str, list[str]]] = []
    for phase in wanted:
        if phase == "feature_dashboards" and "saes" in wanted:
            continue
        for partitions in jobs[phase]:
            order.append((phase, partitions))
            if phase == "saes" and "feature_dashboards" in wanted:
                order.append(("feature_dashboards", partitions))
    runs: dict[str, list[dict]] = {phase: [] for phase in wanted}
    for phase in wanted:
        phases.pop(phase, None)
    for index, (phase, partitions) in enumerate(order):
        before = _dir_bytes(storage)
        run = run_job(phase, config_path, partitions)
        run["bytes_written"] = _dir_bytes(storage) - before
        runs[phase].append(run)
        print(f"{phase} {partitions}: {run['seconds']} s, peak RSS {run['peak_rss_bytes'] / 1e9:.2f} GB, "
              f"wrote {run['bytes_written'] / 1e9:.2f} GB", flush=True)
        if (args.drop_unused_saes and phase == "feature_dashboards" and partitions[0] not in read_later):
            from interp_assets.artifacts import saes_relpath

            shutil.rmtree(storage / saes_relpath(config, int(partitions[0])))
        if index + 1 == len(order) or order[index + 1][0] != phase or phase in ("saes", "feature_dashboards"):
            measured = {"seconds_per_job_max": max(r["seconds"] for r in runs[phase]),
                        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs[phase]),
                        "bytes_written": sum(r["bytes_written"] for r in runs[phase])}
            phases[phase] = {"jobs": runs[phase], "complete": len(runs[phase]) == len(jobs[phase]),
                             "measured": measured, **compare(plan, phase, measured, runs[phase]),
                             "load_average_after": os.getloadavg()[0]}
            write()
    print(f"wrote {out}")
    for phase, row in phases.items():
        ratio = row.get("ratio_planned_over_measured")
        print(f"{phase:20s} " + (f"time planned/measured {ratio['seconds']:.2f}  memory {ratio['peak_memory']:.2f}"
                                 if ratio else "not in the plan"))


if __name__ == "__main__":
    main()
