"""Benchmark the SAE trainer: steps/s, samples/s, peak memory and what one step costs.

    .venv/bin/python benchmarks/sae_train.py --d-in 3584 --expansion 4 --batch 256 --steps 300
    .venv/bin/python benchmarks/sae_train.py --device cuda --steps 50000        # on a GPU machine

Runs our real training loop (``core.sae_training.train_sae``) on random BF16 activations stored
as a safetensors shard (the same path as the pipeline: memory-mapped shard → shuffle buffer →
FP32 step), after a burn-in, then times the phases of one step separately. Writes
``benchmarks/results/sae_train_<arch>_<d_in>x<d_sae>_b<batch>_<device>.json``. Never run by tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interp_assets.config import SaeSection  # noqa: E402
from interp_assets.core.sae_data import ShardedActivations, ShuffledBatches  # noqa: E402
from interp_assets.core.sae_training import (  # noqa: E402
    TrainerConfig,
    _losses,
    _make_optimizer,
    _remove_parallel_gradient,
    _standard_step_gradients,
    l1_at,
    train_sae,
)


def machine_info(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["git_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                            text=True).stdout.strip()
    except OSError:
        pass
    return info


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_step_phases(data: ShardedActivations, config: TrainerConfig, device: str, repeats: int) -> dict[str, float]:
    """Milliseconds per phase of one training step (batch fetch, forward+loss, backward, clip, Adam)."""
    from interp_assets.core.sae import SaeSpec, SparseAutoencoder

    spec = SaeSpec(d_in=data.d_in, d_sae=data.d_in * config.expansion_factor, architecture=config.architecture,
                   k=config.k if config.architecture == "topk" else None)
    sae = SparseAutoencoder(spec, device=device)
    sae.initialize(torch.Generator().manual_seed(0))
    optimizer = _make_optimizer(sae, config)
    stream = ShuffledBatches(data, config.batch_size, seed=0).iterate()
    dead = torch.zeros(spec.d_sae, dtype=torch.bool, device=device)
    phases: dict[str, list[float]] = {"fetch": [], "forward": [], "backward": [], "clip": [], "adam": []}
    for i in range(repeats + 3):
        marks = [time.perf_counter()]
        x = next(stream)[0].to(device, torch.float32)
        sync(device); marks.append(time.perf_counter())
        if config.architecture == "standard":
            # The trainer's ReLU path: forward and backward in one hand-written pass ("forward"
            # holds both, "backward" is 0).
            _standard_step_gradients(sae, x, l1_at(1000, config))
            sync(device); marks.append(time.perf_counter())
        else:
            loss, _, _ = _losses(sae, x, config, l1_at(1000, config), dead)
            sync(device); marks.append(time.perf_counter())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        sync(device); marks.append(time.perf_counter())
        if config.architecture == "topk":
            _remove_parallel_gradient(sae)
        torch.nn.utils.clip_grad_norm_(sae.parameters(), config.grad_clip)
        sync(device); marks.append(time.perf_counter())
        optimizer.step()
        sync(device); marks.append(time.perf_counter())
        if i >= 3:  # burn-in
            for name, start, stop in zip(phases, marks, marks[1:], strict=False):
                phases[name].append((stop - start) * 1000)
    return {name: round(statistics.median(values), 3) for name, values in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-in", type=int, default=3584)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--architecture", choices=["relu", "topk"], default="relu")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--vectors", type=int, default=32_768, help="stored vectors (re-epoched as needed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    log_every = max(args.steps // 10, 1)
    config = SaeSection(
        architecture=args.architecture, expansion_factor=args.expansion, k=args.k, batch_size=args.batch,
        steps=args.steps, lr=4e-4, lr_warmup_steps=min(100, args.steps // 10), lr_decay_steps=args.steps // 5,
        l1_coefficient=5.0, l1_warmup_steps=args.steps // 5, checkpoint_every=10**9, log_every=log_every,
        dead_window_steps=200,
    ).trainer_config()
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "corpus-00000.safetensors"
        generator = torch.Generator().manual_seed(0)
        save_file({"activations": torch.randn(args.vectors, args.d_in, generator=generator).to(torch.bfloat16)}, shard)
        data = ShardedActivations([shard], held_out=min(4096, args.vectors // 8))
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            torch.backends.cuda.matmul.allow_tf32 = True
        started = time.perf_counter()
        result = train_sae(ShuffledBatches(data, args.batch, seed=0), config, data_fingerprint="bench",
                           device=args.device, eval_vectors=data.held_out_vectors(), log=print)
        wall = time.perf_counter() - started
        windows = [record["perf/steps_per_s"] for record in result.history[1:]] or [result.history[-1]["perf/steps_per_s"]]
        steps_per_s = statistics.median(windows)
        phases = time_step_phases(data, config, args.device, repeats=10)

    d_sae = args.d_in * args.expansion
    flops_per_step = 6 * 2 * args.batch * args.d_in * d_sae  # enc+dec forward, and twice that backward
    record = {
        "benchmark": "sae_train",
        "shape": {"d_in": args.d_in, "d_sae": d_sae, "batch": args.batch, "architecture": config.architecture,
                  "k": args.k if args.architecture == "topk" else None, "activation_dtype": "bfloat16",
                  "weight_dtype": "float32"},
        "steps": args.steps,
        "steps_per_s": round(steps_per_s, 3),
        "samples_per_s": round(steps_per_s * args.batch, 1),
        "achieved_gflops": round(steps_per_s * flops_per_step / 1e9, 1),
        "wall_seconds_including_init": round(wall, 2),
        "step_phases_ms": phases,
        "peak_memory_mb": round(
            torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
        "final_explained_variance_heldout": round(result.history[-1].get("eval/explained_variance", float("nan")), 4),
        "machine": machine_info(args.device),
        "note": "random Gaussian activations: R² measures fitting noise, not feature quality; steps/s is the figure",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"sae_train_{config.architecture}_{args.d_in}x{d_sae}_b{args.batch}_{args.device}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
