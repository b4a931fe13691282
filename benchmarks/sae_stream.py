"""Benchmark ``sae.data_source``: cached (capture to shards, then train from disk) vs stream (the
SAE worker runs the model and trains a group of layers from one forward pass per batch).

    .venv/bin/python benchmarks/sae_stream.py                          # CPU, reduced widths
    .venv/bin/python benchmarks/sae_stream.py --device cuda --hidden 2048 --intermediate 11008 \\
        --layers 36 --sae-layers 10-24 --expansion 4 --batch 4096 --steps 200 --model-dtype bfloat16

The model is a Qwen2 built from a config with random weights (what the weights are changes no
cost), the texts the tiny study's corpus joined to ``--seq-len`` tokens, the tokenizer the tiny
model's. Both modes run the pipeline's own code: cached = ``core.capture.capture_activations``
writing real safetensors shards, then ``core.sae_training.train_sae`` on ``core.sae_data``'s
memory-mapped shuffle per layer; stream = ``core.sae_stream`` (one forward pass per batch for all
``--sae-layers``, the SAEs in lockstep). Each mode runs in a child process (peak RSS, and on a GPU
peak allocated memory, are its own). Reported per layer: seconds per SAE step including its data,
bytes written and read, memory; and, from the measured rates, the whole-study cost per layer at
``--study-vectors`` vectors per layer and ``--study-steps`` steps. Writes
``benchmarks/results/sae_stream_<...>.json``; never run by tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from capture import build_model, default_tokenizer_dir, texts_of  # noqa: E402


def _layers(value: str) -> list[int]:
    if "-" in value:
        first, last = value.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(v) for v in value.split(",")]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _trainer_config(args: argparse.Namespace, steps: int):  # noqa: ANN202
    from interp_assets.config import SaeSection

    return SaeSection(architecture=args.architecture, expansion_factor=args.expansion, k=args.k, batch_size=args.batch,
                      steps=steps, lr=4e-4, lr_warmup_steps=0, lr_decay_steps=0, l1_warmup_steps=10,
                      checkpoint_every=10**9, log_every=1, dead_window_steps=200).trainer_config()


def _setup(args: argparse.Namespace):  # noqa: ANN202
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or default_tokenizer_dir(), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = build_model(args, len(tokenizer))
    texts = texts_of(tokenizer, args.texts, args.seq_len)
    return model, tokenizer, texts


def child_cached(args: argparse.Namespace) -> dict:
    from interp_assets.core.capture import CaptureSource, capture_activations
    from interp_assets.core.sae_data import ShardedActivations, ShuffledBatches
    from interp_assets.core.sae_training import train_sae
    from safetensors.torch import save_file

    model, tokenizer, texts = _setup(args)
    layers = _layers(args.sae_layers)
    with tempfile.TemporaryDirectory(prefix="sae-stream-bench-", dir=args.tmp) as tmp:
        written = 0

        def write_shard(layer: int, source: str, index: int, tensors: dict) -> dict:
            nonlocal written
            path = Path(tmp) / f"layer{layer}-{source}-{index:05d}.safetensors"
            save_file(tensors, str(path))
            written += path.stat().st_size
            return {"file": path.name, "n_vectors": int(tensors["activations"].shape[0])}

        _sync(args.device)
        started = time.perf_counter()
        shards = capture_activations(model, tokenizer, layers, args.hook_point,
                                     [CaptureSource("corpus", texts, max_tokens=args.seq_len)],
                                     batch_size=args.forward_batch, dtype=torch.bfloat16,
                                     shard_max_vectors=args.shard_vectors, write_shard=write_shard)
        _sync(args.device)
        capture_s = time.perf_counter() - started
        n_vectors = sum(r["n_vectors"] for r in shards[layers[0]]["corpus"])
        per_layer = []
        for layer in layers:
            paths = [Path(tmp) / r["file"] for r in shards[layer]["corpus"]]
            data = ShardedActivations(paths)
            batches = ShuffledBatches(data, args.batch, seed=0, chunk_vectors=args.shuffle_buffer)
            result = train_sae(batches, _trainer_config(args, args.warmup + args.steps), data_fingerprint="bench",
                               device=args.device)
            per_layer.append(_steady_seconds_per_step(result.history, args.warmup))
        del model
    return {
        "capture_seconds": capture_s,
        "capture_vectors_per_layer": n_vectors,
        "capture_seconds_per_layer_per_vector": capture_s / len(layers) / n_vectors,
        "bytes_written_per_layer": written / len(layers),
        "bytes_per_vector": written / len(layers) / n_vectors,
        "train_seconds_per_step_by_layer": per_layer,
        "train_seconds_per_step": sum(per_layer) / len(per_layer),
        "bytes_read_per_step_per_layer": args.batch * _width(model_args=args) * 2,
    }


def _steady_seconds_per_step(history: list[dict], warmup: int) -> float:
    """Mean seconds per step after the warm-up, data included (the chunks recomputed or read on
    the way are in the steps that needed them)."""
    steady = [1 / record["perf/steps_per_s"] for record in history[warmup:]]
    return sum(steady) / len(steady)


def _width(model_args: argparse.Namespace) -> int:
    return model_args.intermediate if model_args.hook_point == "mlp_post" else model_args.hidden


def child_stream(args: argparse.Namespace) -> dict:
    from interp_assets.core.sae_stream import ActivationStream, Lockstep, plan_stream, train_in_lockstep
    from interp_assets.core.sae_training import train_sae

    model, tokenizer, texts = _setup(args)
    layers = _layers(args.sae_layers)
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"][: args.seq_len] for text in texts]
    windows = torch.tensor([row for row in ids if len(row) == args.seq_len], dtype=torch.int32)
    plan = plan_stream(windows, chunk_vectors=args.shuffle_buffer)

    stream = ActivationStream(model, tokenizer, layers, args.hook_point, plan,
                              forward_batch_size=args.forward_batch, dtype=torch.bfloat16, seed=0)
    config = _trainer_config(args, args.warmup + args.steps)
    lockstep = Lockstep(stream, args.batch)
    _sync(args.device)
    started = time.perf_counter()
    for layer in layers:  # the head that sets the input scale: once, before the steps
        lockstep.head(layer, min(plan.n_train_vectors, 65_536))
    _sync(args.device)
    tokens_before = stream.tokens_forwarded
    forward_seconds_per_token = (time.perf_counter() - started) / tokens_before  # forward + record, all layers
    results = train_in_lockstep(lockstep, lambda layer, batches, requested: train_sae(
        batches, config, data_fingerprint="bench", device=args.device, checkpoint_requested=requested))
    # In lockstep every layer's step window spans the whole group's step.
    group_step = sum(_steady_seconds_per_step(r.history, args.warmup) for r in results.values()) / len(results)
    return {
        "group_seconds_per_step": group_step,
        "seconds_per_step_per_layer": group_step / len(layers),
        "forward_passes": stream.forward_passes,
        "tokens_forwarded": stream.tokens_forwarded,
        "tokens_forwarded_per_step": (stream.tokens_forwarded - tokens_before) / (args.warmup + args.steps),
        "chunk_texts": plan.chunk_texts,
        "forward_seconds_per_token": forward_seconds_per_token,
        "bytes_written_per_layer": 0,
        "bytes_read_per_step_per_layer": 0,
    }


def child(args: argparse.Namespace) -> None:
    threads = args.threads
    if threads:
        torch.set_num_threads(threads)
    result = child_cached(args) if args.child == "cached" else child_stream(args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device.startswith("cuda"):
        result["peak_gpu_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--layers", type=int, default=3, help="decoder layers of the random model")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--sae-layers", default="1-2", help="layers with an SAE: 'a-b' or 'a,b,c'")
    parser.add_argument("--hook-point", default="mlp_post")
    parser.add_argument("--model-dtype", default="float32")
    parser.add_argument("--architecture", default="relu", choices=["relu", "topk"])
    parser.add_argument("--expansion", type=int, default=1)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="SAE batch (vectors per step)")
    parser.add_argument("--forward-batch", type=int, default=8, help="texts per forward pass")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--shard-vectors", type=int, default=1024)
    parser.add_argument("--shuffle-buffer", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--tmp", default=None, help="where cached mode writes its shards")
    parser.add_argument("--study-vectors", type=int, default=2_000_000, help="vectors per layer of the real study")
    parser.add_argument("--study-steps", type=int, default=50_000)
    parser.add_argument("--study-batch", type=int, default=256)
    parser.add_argument("--study-model-layers", type=int, default=36, help="decoder layers of the real model")
    parser.add_argument("--study-group", type=int, default=4, help="layers per stream group in the study")
    parser.add_argument("--study-captured-layers", type=int, default=15, help="layers one cached capture sweep records")
    parser.add_argument("--child", choices=["cached", "stream"], default=None)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    modes = {}
    for mode in ("cached", "stream"):
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", mode], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{mode} failed:\n{done.stderr[-4000:]}")
        modes[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(mode, json.dumps(modes[mode]), flush=True)
    cached, stream = modes["cached"], modes["stream"]
    n_layers = len(_layers(args.sae_layers))
    # Per layer and SAE step, data included: cached pays its step + its share of the one-off
    # capture (amortised over the study's steps); stream pays its share of the group's step.
    study = {
        "vectors_per_layer": args.study_vectors, "steps": args.study_steps, "batch": args.study_batch,
        "cached_disk_bytes_per_layer": args.study_vectors * cached["bytes_per_vector"],
        "cached_bytes_read_per_layer": args.study_steps * args.study_batch * _width(args) * 2,
        "note": "scaled from the measured per-step rates at this run's batch; the SAE step scales ~linearly in batch",
    }
    # The real model is deeper than this one: its forward cost per token is this model's, times
    # study_model_layers / layers. The SAE step itself (the cached train step, data read from the
    # page cache included) scales ~linearly with the batch.
    scale = args.study_batch / args.batch
    sae_step = cached["train_seconds_per_step"] * scale
    forward_token = stream["forward_seconds_per_token"] * args.study_model_layers / args.layers
    study["sae_step_seconds"] = sae_step
    study["forward_seconds_per_token_real_depth"] = forward_token
    study["cached_seconds_per_layer"] = (args.study_vectors * forward_token / args.study_captured_layers
                                         + args.study_steps * sae_step)
    study["stream_seconds_per_layer"] = args.study_steps * (sae_step + forward_token * args.study_batch / args.study_group)
    study["stream_forward_share"] = (forward_token * args.study_batch / args.study_group) / (
        sae_step + forward_token * args.study_batch / args.study_group)
    result = {
        "benchmark": "sae_stream",
        "settings": vars(args),
        "sae_layers": n_layers,
        "width": _width(args),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
                    "threads": args.threads or torch.get_num_threads()},
        "git_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
        "cached": cached,
        "stream": stream,
        "per_layer_seconds_per_step": {
            "cached_train_only": cached["train_seconds_per_step"],
            "stream": stream["seconds_per_step_per_layer"],
        },
        "study_estimate": study,
    }
    name = (f"sae_stream_{args.hook_point}_h{args.hidden}_i{args.intermediate}_x{args.expansion}_"
            f"L{n_layers}_b{args.batch}_{'cuda' if args.device.startswith('cuda') else 'cpu'}.json")
    out = ROOT / "benchmarks" / "results" / name
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: result[k] for k in ("per_layer_seconds_per_step", "study_estimate")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
