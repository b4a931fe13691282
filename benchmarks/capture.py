"""Benchmark activation capture: all layers in one sweep vs a bare forward pass vs one layer per pass,
the first quarter of the layers (the pass stops after the deepest one), and peak memory as the
number of captured vectors grows 10×.

    .venv/bin/python benchmarks/capture.py                                  # CPU, a random Qwen2
    .venv/bin/python benchmarks/capture.py --device cuda --hidden 2048 --intermediate 11008 --layers 36

The model is a Qwen2 built from a config with random weights (capture cost does not depend on
what the weights are), the texts the tiny study's corpus, joined to ``--seq-len`` tokens, and the
tokenizer the tiny model's (``--tokenizer``, built by README command 1). Capture runs the
pipeline's own ``core.capture.capture_activations``, writing real safetensors shards to a temp
folder. The memory part runs capture in child processes (``ru_maxrss`` of each), with the same
shard size and 1× and 10× the texts. Writes ``benchmarks/results/capture_<...>.json``; never run by tests.
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

from interp_assets.core.behaviours import generate_corpus  # noqa: E402
from interp_assets.core.capture import CaptureSource, capture_activations  # noqa: E402
from interp_assets.core.modeling import tokenize_batches  # noqa: E402


def default_tokenizer_dir() -> Path:
    found = sorted((ROOT / "dagster_home" / "storage" / "models").glob("tiny-*/tokenizer.json"))
    if not found:
        sys.exit("no tiny-model tokenizer found: run README command 1 first, or pass --tokenizer DIR")
    return found[0].parent


def build_model(args: argparse.Namespace, vocab_size: int):  # noqa: ANN201
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(2 * args.seq_len, 64), tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(dtype=getattr(torch, args.model_dtype), device=args.device).eval()
    model.requires_grad_(False)
    return model


def texts_of(tokenizer, n_texts: int, seq_len: int) -> list[str]:  # noqa: ANN001
    """Corpus sentences joined until each text has about ``seq_len`` tokens."""
    sentences = generate_corpus(n_texts * 12, seed=1)
    texts, current, length = [], [], 0
    for sentence in sentences:
        current.append(sentence)
        length += len(tokenizer(" " + sentence, add_special_tokens=False)["input_ids"])
        if length >= seq_len:
            texts.append(" ".join(current))
            current, length = [], 0
            if len(texts) == n_texts:
                break
    return texts


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def bare_forward(model, tokenizer, texts, args) -> tuple[int, float]:  # noqa: ANN001
    sync(args.device)
    started, tokens = time.perf_counter(), 0
    for batch in tokenize_batches(tokenizer, texts, args.batch, torch.device(args.device), args.seq_len):
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        tokens += int(batch.attention_mask.sum())
    sync(args.device)
    return tokens, time.perf_counter() - started


def capture(model, tokenizer, texts, layers, args, folder: Path) -> tuple[int, float, int]:  # noqa: ANN001
    import safetensors.torch

    written = 0

    def write_shard(layer: int, source: str, index: int, tensors: dict) -> dict:
        nonlocal written
        path = folder / f"l{layer}-{source}-{index}.safetensors"
        safetensors.torch.save_file(tensors, path)
        written += path.stat().st_size
        return {"n_vectors": int(tensors["activations"].shape[0])}

    sync(args.device)
    started = time.perf_counter()
    shards = capture_activations(model, tokenizer, layers, args.hook_point,
                                 [CaptureSource("corpus", texts, max_tokens=args.seq_len)], batch_size=args.batch,
                                 dtype=torch.bfloat16, shard_max_vectors=args.shard_vectors, write_shard=write_shard)
    sync(args.device)
    seconds = time.perf_counter() - started
    vectors = sum(s["n_vectors"] for s in shards[layers[0]]["corpus"])
    return vectors, seconds, written


def child_peak_rss(args: argparse.Namespace, n_texts: int) -> dict:
    """Run one capture in a fresh process and report its peak RSS (MiB) and vectors per layer."""
    command = [sys.executable, __file__, "--child-memory", str(n_texts), *sys.argv[1:]]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--model-dtype", default="float32")
    parser.add_argument("--hook-point", default="mlp_post")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--shard-vectors", type=int, default=4096)
    parser.add_argument("--memory-texts", type=int, default=40, help="texts of the 1× memory run (10× is the other)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of bare / all layers / first quarter")
    parser.add_argument("--tokenizer", type=Path)
    parser.add_argument("--child-memory", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or default_tokenizer_dir(), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = build_model(args, len(tokenizer))
    layers = list(range(args.layers))

    if args.child_memory:
        texts = texts_of(tokenizer, args.child_memory, args.seq_len)
        with tempfile.TemporaryDirectory() as tmp:
            vectors, seconds, written = capture(model, tokenizer, texts, layers, args, Path(tmp))
        print(json.dumps({"texts": len(texts), "vectors_per_layer": vectors, "bytes_written": written,
                          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return

    texts = texts_of(tokenizer, args.texts, args.seq_len)
    bare_forward(model, tokenizer, texts[: args.batch], args)  # warm-up
    early = layers[: max(1, len(layers) // 4)]
    # Interleaved and repeated, best of each: a shared CPU's speed drifts by ±20 % between minutes.
    bare_s = all_s = early_s = float("inf")
    for _ in range(args.repeats):
        tokens, seconds = bare_forward(model, tokenizer, texts, args)
        bare_s = min(bare_s, seconds)
        with tempfile.TemporaryDirectory() as tmp:
            vectors, seconds, written = capture(model, tokenizer, texts, layers, args, Path(tmp))
            all_s = min(all_s, seconds)
        with tempfile.TemporaryDirectory() as tmp:
            early_s = min(early_s, capture(model, tokenizer, texts, early, args, Path(tmp))[1])
    per_layer_s = 0.0
    for layer in layers:
        with tempfile.TemporaryDirectory() as tmp:
            per_layer_s += capture(model, tokenizer, texts, [layer], args, Path(tmp))[1]
    small = child_peak_rss(args, args.memory_texts)
    large = child_peak_rss(args, 10 * args.memory_texts)

    result = {
        "benchmark": "capture",
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": args.device,
                    "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None},
        "git_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child_memory"},
        "tokens": tokens,
        "bare_forward_tokens_per_s": tokens / bare_s,
        "capture_all_layers_tokens_per_s": tokens / all_s,
        "capture_all_layers_vs_bare": bare_s / all_s,
        "capture_first_quarter_layers": early,
        "capture_first_quarter_tokens_per_s": tokens / early_s,
        "capture_first_quarter_vs_bare": bare_s / early_s,
        "one_layer_per_pass_tokens_per_s": tokens / per_layer_s,
        "all_layers_one_pass_speedup_vs_one_layer_per_pass": per_layer_s / all_s,
        "vectors_per_layer": vectors,
        "bytes_written": written,
        "memory": {"1x": small, "10x": large,
                   "rss_growth_for_10x_vectors": large["peak_rss_mib"] / small["peak_rss_mib"]},
    }
    name = f"capture_{args.hook_point}_h{args.hidden}_i{args.intermediate}_L{args.layers}_{args.device.split(':')[0]}"
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in {"machine", "settings"}}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
