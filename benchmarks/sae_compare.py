"""Our SAE trainer vs SAELens's (ReLU/"standard") and EleutherAI sparsify's (TopK), same data and config.

    bash benchmarks/setup.sh                                       # .venv-bench: the project + [bench] extra
    .venv-bench/bin/python benchmarks/sae_compare.py --arch relu --steps 40 --rounds 2          # spec shape, CPU
    .venv-bench/bin/python benchmarks/sae_compare.py --arch both --d-in 11008 --steps 8 --rounds 1   # Qwen2.5-3B mlp_post
    .venv-bench/bin/python benchmarks/sae_compare.py --arch both --device cuda --steps 50000 --rounds 1  # on a GPU

One invocation writes one synthetic BF16 activation shard (sparse codes over a random unit-norm
dictionary plus noise, mean norm √d_in, so no input scaling is needed by anyone), then trains on it
in turn, each trainer in a fresh child process (so peak memory is its own, and a 11008→44032 run
frees its ~16 GB before the next starts), alternating the order every round to spread machine noise:

  - ours: ``core.sae_training.train_sae``, the pipeline's real loop (memory-mapped shard → shuffle
    buffer → FP32 step, fused Adam, grad clip, dead-latent bookkeeping);
  - SAELens 6 (relu): ``StandardTrainingSAE`` trained by SAELens's own ``SAETrainer.fit()`` (its
    Adam, LR and L1 warm-up schedulers, grad clip, dead-feature counters; wandb off);
  - sparsify (topk): ``SparseCoder`` (fused TopK encoder, sparse embedding-bag decoder) with the
    per-step body of ``sparsify.Trainer.fit`` for ``loss_fn="fvu"``, ``optimizer="adam"`` (unit-norm
    decoder, AuxK on dead latents, parallel-gradient removal, Adam + linear warm-up schedule).
    sparsify's ``fit`` needs a Hugging Face model to hook, so its step is replayed, not called.

All read the same batches in the same order (``ShuffledBatches``, seed 0), with the same shape,
batch, FP32 weights, lr, warm-up, L1 coefficient / k / AuxK weight / dead window, step count and
torch thread count. Steps/s is timed between batch fetches after a one-window burn-in (with a CUDA
synchronize at each window edge on a GPU); R² is measured on held-out vectors. Writes
``benchmarks/results/sae_compare_<arch>_<d_in>x<d_sae>_b<batch>_<device>.json``. Never run by tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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

from interp_assets.core.sae import explained_variance  # noqa: E402
from interp_assets.core.sae_data import ShardedActivations, ShuffledBatches  # noqa: E402

COMPETITOR = {"relu": "saelens", "topk": "sparsify"}


# ---- data ---------------------------------------------------------------------------------------
def write_synthetic_shard(path: Path, n_vectors: int, d_in: int, seed: int) -> None:
    """x = Σ_j c_j D_j + noise: 32 active atoms of a random unit-norm dictionary per vector,
    exponential magnitudes, 10 % Gaussian noise, scaled so that the mean norm is √d_in."""
    generator = torch.Generator().manual_seed(seed)
    n_atoms, k_true = min(2 * d_in, 8192), 32
    dictionary = torch.randn(n_atoms, d_in, generator=generator)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    chunks = []
    for start in range(0, n_vectors, 4096):
        n = min(4096, n_vectors - start)
        indices = torch.randint(0, n_atoms, (n, k_true), generator=generator)
        magnitudes = torch.empty(n, k_true).exponential_(generator=generator)
        x = torch.nn.functional.embedding_bag(indices, dictionary, per_sample_weights=magnitudes, mode="sum")
        x += 0.1 * x.norm(dim=1, keepdim=True) / math.sqrt(d_in) * torch.randn(n, d_in, generator=generator)
        chunks.append(x)
    x = torch.cat(chunks)
    x *= math.sqrt(d_in) / x.norm(dim=1).mean()
    save_file({"activations": x.to(torch.bfloat16)}, path)


class Clock:
    """Times every ``window`` steps at the batch fetch (after a CUDA synchronize on a GPU). In
    lock-step mode it also stops there (prints ``TICK``, waits for a line on stdin) so that the
    parent lets one trainer at a time run a window: both then see the same machine load."""

    def __init__(self, window: int, device: str, lockstep: bool) -> None:
        self.window, self.device, self.lockstep = window, device, lockstep
        self.fetches, self.resumed, self.windows = 0, None, []

    def tick(self) -> None:
        if self.fetches % self.window == 0:
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            if self.resumed is not None:
                self.windows.append(time.perf_counter() - self.resumed)  # seconds of this window's steps
            if self.lockstep:
                print("TICK", flush=True)
                sys.stdin.readline()
            self.resumed = time.perf_counter()
        self.fetches += 1

    def rates(self) -> tuple[float, float, list[float]]:
        """(steps/s from the median window, steps/s from the total, per-window steps/s); the first
        window is burn-in."""
        windows = self.windows[1:]
        if not windows:
            return math.nan, math.nan, []
        return (self.window / statistics.median(windows), self.window * len(windows) / sum(windows),
                [self.window / w for w in windows])


def timed_batches(batches: ShuffledBatches, clock: Clock) -> ShuffledBatches:
    iterate = batches.iterate

    def timed(*args, **kwargs):
        for item in iterate(*args, **kwargs):
            clock.tick()
            yield item

    batches.iterate = timed  # type: ignore[method-assign]
    return batches


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


# ---- the three trainers (each runs in its own child process) --------------------------------------
def train_ours(args, batches: ShuffledBatches, held_out: torch.Tensor) -> float:
    from interp_assets.config import SaeSection
    from interp_assets.core.sae_training import train_sae

    config = SaeSection(
        architecture=args.arch, expansion_factor=args.expansion, k=args.k,
        batch_size=args.batch, steps=args.steps, lr=args.lr, lr_warmup_steps=args.warmup, lr_decay_steps=0,
        l1_coefficient=args.l1, l1_warmup_steps=args.warmup, aux_k_coefficient=args.aux_k,
        dead_window_steps=args.dead_window, grad_clip=1.0, checkpoint_every=10**9, log_every=args.steps,
        seed=args.seed,
    ).trainer_config()
    result = train_sae(batches, config, data_fingerprint="bench", device=args.device)
    from interp_assets.core.sae_training import evaluate_explained_variance

    return evaluate_explained_variance(result.sae, held_out, args.device)


def train_saelens(args, batches: ShuffledBatches, held_out: torch.Tensor) -> float:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(args.seed)
    d_sae = args.d_in * args.expansion
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(
        d_in=args.d_in, d_sae=d_sae, l1_coefficient=args.l1, lp_norm=1.0, l1_warm_up_steps=args.warmup,
        apply_b_dec_to_input=True, normalize_activations="none", dtype="float32", device=args.device,
    ))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=args.steps * args.batch, train_batch_size_samples=args.batch, lr=args.lr,
        lr_end=args.lr, lr_scheduler_name="constant", lr_warm_up_steps=args.warmup, lr_decay_steps=0,
        device=args.device, dead_feature_window=args.dead_window, feature_sampling_window=10**9,
        logger=LoggingConfig(log_to_wandb=False),
    )
    provider = (raw for raw, _ in batches.iterate())  # BF16 rows; SAETrainer.step moves and casts them
    sae = SAETrainer(trainer_cfg, sae, provider).fit()
    sae.eval()
    with torch.no_grad():
        x = held_out.to(args.device, torch.float32)
        x_hat = torch.cat([sae(x[i : i + 4096]) for i in range(0, len(x), 4096)])
    return explained_variance(x, x_hat)


def train_sparsify(args, batches: ShuffledBatches, held_out: torch.Tensor) -> float:
    from sparsify import SparseCoder, SparseCoderConfig
    from torch.optim import Adam  # sparsify's "adam" branch without bitsandbytes (not installed here)
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    sae = SparseCoder(args.d_in, SparseCoderConfig(expansion_factor=args.expansion, k=args.k), args.device,
                      dtype=torch.float32)
    optimizer = Adam([dict(params=sae.parameters(), lr=args.lr)])
    scheduler = get_linear_schedule_with_warmup(optimizer, args.warmup, args.steps)
    num_tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long, device=args.device)
    dead_threshold = args.dead_window * args.batch  # sparsify counts tokens, we count steps
    avg_fvu = 0.0
    stream = batches.iterate()
    for step in range(args.steps):
        # ---- the body of sparsify.Trainer.fit for one hookpoint, loss_fn="fvu", grad_acc_steps=1 ----
        outputs = next(stream)[0].to(args.device, torch.float32)
        did_fire = torch.zeros(sae.num_latents, device=args.device, dtype=torch.bool)
        if step == 0:
            sae.b_dec.data = outputs.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = num_tokens_since_fired > dead_threshold if args.aux_k > 0 else None
        total_variance = (outputs - outputs.mean(0)).pow(2).sum()
        out = sae(x=outputs, y=outputs, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        avg_fvu += float(out.fvu.detach())
        loss = out.fvu + args.aux_k * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        with torch.no_grad():
            num_tokens_since_fired += outputs.shape[0]
            num_tokens_since_fired[did_fire] = 0
    sae.set_decoder_norm_to_unit_norm()
    with torch.no_grad():
        x = held_out.to(args.device, torch.float32)
        x_hat = torch.cat([sae(x[i : i + 4096]).sae_out for i in range(0, len(x), 4096)])
    return explained_variance(x, x_hat)


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    data = ShardedActivations([args.shard], held_out=args.held_out)
    held_out = data.held_out_vectors()
    clock = Clock(args.window, args.device, args.lockstep == "on")
    batches = timed_batches(ShuffledBatches(data, args.batch, seed=0), clock)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # FP32 on both sides
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_mib()
    started = time.perf_counter()
    train = {"ours": train_ours, "saelens": train_saelens, "sparsify": train_sparsify}[args.worker]
    r2 = train(args, batches, held_out)
    wall = time.perf_counter() - started
    steps_per_s, mean_steps_per_s, windows = clock.rates()
    record = {
        "trainer": args.worker,
        "steps_per_s": steps_per_s,
        "steps_per_s_from_total": mean_steps_per_s,
        "timed_windows": len(windows),
        "window_steps_per_s_min_max": [round(min(windows), 4), round(max(windows), 4)] if windows else None,
        "wall_seconds": round(wall, 2),
        "heldout_explained_variance": round(r2, 4),
        "baseline_rss_mib": round(baseline, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average": os.getloadavg(),
    }
    if args.device.startswith("cuda"):
        record["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print("RESULT " + json.dumps(record), flush=True)


# ---- the parent: data, alternation, summary -------------------------------------------------------
def machine_info(device: str, threads: int) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads_each_trainer": threads,
        "device": device,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    try:
        import importlib.metadata as md

        info["sae_lens"] = md.version("sae-lens")
        info["eai_sparsify"] = md.version("eai-sparsify")
    except Exception:  # noqa: BLE001 - informative only
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    info["git_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                        text=True).stdout.strip()
    return info


def matmul_gflops(device: str, threads: int, repeats: int = 3) -> float:
    """What the hardware gives a [256, 3584] @ [3584, 14336] FP32 matmul right now (best of a few):
    the denominator of "% of hardware limit", measured next to each run because the machine is shared."""
    torch.set_num_threads(threads)
    a, b = torch.randn(256, 3584, device=device), torch.randn(3584, 14336, device=device)
    best = math.inf
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * 256 * 3584 * 14336 / best / 1e9


def child_command(trainer: str, arch: str, shard: Path, args, lockstep: bool) -> list[str]:
    command = [sys.executable, __file__, "--worker", trainer, "--shard", str(shard), "--arch", arch]
    for name in ("d_in", "expansion", "batch", "steps", "k", "lr", "warmup", "l1", "aux_k", "dead_window",
                 "device", "threads", "seed", "held_out", "window"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return command + ["--lockstep", "on" if lockstep else "off"]


def run_children(trainers: list[str], arch: str, shard: Path, args, lockstep: bool, logs: Path) -> dict[str, dict]:
    """Run the trainers' children, either side by side in lock-step (one timed window at a time,
    taking turns) or one after the other; return each one's RESULT record."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TQDM_DISABLE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    results: dict[str, dict] = {}

    def start(trainer: str) -> subprocess.Popen:
        print(f"  {arch}: {trainer} ...", flush=True)
        return subprocess.Popen(child_command(trainer, arch, shard, args, lockstep), env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=(logs / f"{arch}-{trainer}.stderr").open("a"))

    def until_tick_or_result(trainer: str, child: subprocess.Popen) -> bool:
        """Read the child's stdout to its next TICK (True) or to its RESULT and exit (False)."""
        for line in child.stdout:  # type: ignore[union-attr]
            if line.startswith("TICK"):
                return True
            if line.startswith("RESULT "):
                results[trainer] = json.loads(line[len("RESULT "):])
        if child.wait() != 0 or trainer not in results:
            # Recorded, not raised: a competitor that cannot run a shape here is a result too.
            why = f"exit code {child.returncode}" + (" (SIGKILL: out of memory, see dmesg)" if child.returncode == -9 else "")
            tail = (logs / f"{arch}-{trainer}.stderr").read_text()[-400:]
            results[trainer] = {"trainer": trainer, "failed": why, "stderr_tail": tail}
        return False

    if lockstep:
        children = {trainer: start(trainer) for trainer in trainers}
        running = [t for t in trainers if until_tick_or_result(t, children[t])]  # both initialise, untimed
        while running:
            for trainer in list(running):
                children[trainer].stdin.write("go\n")  # type: ignore[union-attr]
                children[trainer].stdin.flush()  # type: ignore[union-attr]
                if not until_tick_or_result(trainer, children[trainer]):
                    running.remove(trainer)
    else:
        for trainer in trainers:
            child = start(trainer)
            until_tick_or_result(trainer, child)
    for trainer in trainers:
        record = results[trainer]
        if "failed" in record:
            print(f"    {trainer}: FAILED, {record['failed']}", flush=True)
            continue
        record["matmul_gflops_after"] = round(matmul_gflops(args.device, args.threads), 1)
        print(f"    {trainer}: {record['steps_per_s']:.4f} steps/s, R² {record['heldout_explained_variance']:.3f}, "
              f"peak {record.get('peak_cuda_allocated_mib', record['peak_rss_mib']):.0f} MiB, "
              f"load {record['load_average'][0]:.2f}", flush=True)
    return results


def summarise(arch: str, runs: dict[str, list[dict]], args) -> dict:
    competitor = COMPETITOR[arch]
    d_sae = args.d_in * args.expansion
    summary: dict = {}
    for trainer, all_records in runs.items():
        records = [r for r in all_records if "failed" not in r]
        if not records:
            summary[trainer] = {"failed": [r["failed"] for r in all_records], "steps_per_s": None}
            continue
        rate = statistics.median(r["steps_per_s"] for r in records)
        peak = max(r.get("peak_cuda_allocated_mib", r["peak_rss_mib"]) for r in records)
        summary[trainer] = {
            "steps_per_s": round(rate, 4),
            "samples_per_s": round(rate * args.batch, 1),
            "steps_per_s_each_round": [round(r["steps_per_s"], 4) for r in records],
            "steps_per_s_from_total_each_round": [round(r["steps_per_s_from_total"], 4) for r in records],
            "window_steps_per_s_min_max_each_round": [r["window_steps_per_s_min_max"] for r in records],
            "peak_memory_mib": peak,
            "peak_memory_kind": "cuda max_memory_allocated" if args.device.startswith("cuda") else "process peak RSS",
            "peak_memory_over_baseline_mib": None if args.device.startswith("cuda") else
            round(max(r["peak_rss_mib"] - r["baseline_rss_mib"] for r in records), 1),
            "final_heldout_explained_variance": records[-1]["heldout_explained_variance"],
            "load_average_1m": [round(r["load_average"][0], 2) for r in records],
            "matmul_gflops_probe_each_round": [r.get("matmul_gflops_after") for r in records],
        }
        probes = [r["matmul_gflops_after"] for r in records if r.get("matmul_gflops_after")]
        if probes:
            # The floor of a step's work: relu, the dense step's 6 matmuls (12·B·d_in·d_sae FLOP); topk,
            # the one dense matmul it cannot avoid, the encoder forward (2·B·d_in·d_sae; the rest is sparse).
            flop = (12 if arch == "relu" else 2) * args.batch * args.d_in * d_sae
            summary[trainer]["achieved_gflops_equivalent"] = round(rate * flop / 1e9, 1)
            summary[trainer]["percent_of_hardware_limit"] = round(100 * rate * flop / 1e9 / args.peak_gflops, 1)
    dense_flop = 12 * args.batch * args.d_in * d_sae  # 6 matmuls of B·d_in·d_sae, 2 FLOP each
    return {
        "benchmark": "sae_compare",
        "arch": arch,
        "competitor": competitor,
        "shape": {"d_in": args.d_in, "d_sae": d_sae, "batch": args.batch, "k": args.k if arch == "topk" else None,
                  "activation_dtype": "bfloat16", "weight_dtype": "float32"},
        "config": {"steps": args.steps, "rounds": args.rounds, "lr": args.lr, "warmup_steps": args.warmup,
                   "l1_coefficient": args.l1 if arch == "relu" else None,
                   "aux_k_coefficient": args.aux_k if arch == "topk" else None,
                   "dead_window_steps": args.dead_window, "timed_window_steps": args.window,
                   "timing": args.timing, "steps_per_s_is": "window / median window time, first window dropped",
                   "vectors": args.vectors, "held_out": args.held_out,
                   "data": "synthetic: 32 active atoms of a random unit-norm dictionary + 10 % noise, mean norm √d_in"},
        "ratio_ours_over_competitor_steps_per_s": round(summary["ours"]["steps_per_s"] / summary[competitor]["steps_per_s"], 3)
        if summary["ours"]["steps_per_s"] and summary[competitor]["steps_per_s"] else None,
        "target_ratio": 1.5 if arch == "relu" else 1.0,
        "dense_step_gflop": round(dense_flop / 1e9, 1),
        "hardware_limit_gflops": args.peak_gflops,
        "hardware_limit_is": "FP32 matmul rate of the machine unloaded (--peak-gflops); the probe fields are the "
                             "same matmul timed right after each run, on the machine as shared then",
        "trainers": summary,
        "machine": machine_info(args.device, args.threads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=["relu", "topk", "both"], default="both")
    parser.add_argument("--d-in", type=int, default=3584)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40, help="steps per trainer per round (50000 on a GPU)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (order flips each round)")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--warmup", type=int, default=None, help="lr and L1 warm-up steps (default steps/10, ≤1000)")
    parser.add_argument("--l1", type=float, default=5.0)
    parser.add_argument("--aux-k", type=float, default=1 / 32)
    parser.add_argument("--dead-window", type=int, default=None, help="steps (default steps/4, ≤1000)")
    parser.add_argument("--vectors", type=int, default=16_384)
    parser.add_argument("--held-out", type=int, default=2048)
    parser.add_argument("--window", type=int, default=None, help="steps per timed window (CPU 1, GPU steps/100)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-gflops", type=float, default=150.0,
                        help="FP32 matmul GFLOP/s of the machine unloaded, for %% of hardware limit "
                             "(150: this 2-core CPU, DESIGN.md §9; ~51000 for an H100's FP32 without TF32)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--lockstep", choices=["auto", "on", "off"], default="auto",
                        help="run both trainers side by side taking turns per window (auto: when both fit in memory)")
    parser.add_argument("--worker", choices=["ours", "saelens", "sparsify"], help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.warmup = args.warmup if args.warmup is not None else min(1000, args.steps // 10)
    args.dead_window = args.dead_window if args.dead_window is not None else max(1, min(1000, args.steps // 4))
    if args.window is None:  # CPU: take turns every step; GPU: every 1 % of the run (a sync per window)
        args.window = 1 if args.device == "cpu" else max(1, args.steps // 100)
    if args.worker:
        worker(args)
        return

    archs = ["relu", "topk"] if args.arch == "both" else [args.arch]
    d_sae = args.d_in * args.expansion
    # Weights, gradients and two Adam moments, FP32: two trainers side by side must fit with room.
    trainer_bytes = 4 * 4 * 2 * args.d_in * d_sae
    memory = (torch.cuda.get_device_properties(0).total_memory if args.device.startswith("cuda")
              else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    lockstep = args.lockstep == "on" or (args.lockstep == "auto" and 2 * trainer_bytes < 0.6 * memory)
    args.timing = "lock-step (one window at a time, taking turns)" if lockstep else "one trainer after the other"
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "corpus-00000.safetensors"
        write_synthetic_shard(shard, args.vectors + args.held_out, args.d_in, args.seed)
        for arch in archs:
            trainers = ["ours", COMPETITOR[arch]]
            runs: dict[str, list[dict]] = {t: [] for t in trainers}
            print(f"{arch} {args.d_in}→{d_sae}, batch {args.batch}, {args.steps} steps × {args.rounds} rounds, "
                  f"{args.device}, {args.threads} threads", flush=True)
            for round_ in range(args.rounds):
                order = trainers if round_ % 2 == 0 else trainers[::-1]
                for trainer, record in run_children(order, arch, shard, args, lockstep, Path(tmp)).items():
                    runs[trainer].append(record)
            record = summarise(arch, runs, args)
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / f"sae_compare_{arch}_{args.d_in}x{d_sae}_b{args.batch}_{args.device.split(':')[0]}.json"
            path.write_text(json.dumps(record, indent=2) + "\n")
            print(f"  ours/{COMPETITOR[arch]} = {record['ratio_ours_over_competitor_steps_per_s']} "
                  f"(target ≥ {record['target_ratio']}); wrote {path}", flush=True)


if __name__ == "__main__":
    main()
