"""Benchmark the SAE corpus reader (core/corpus.py): peak memory at 1× and 10× the corpus, and its
tokens/s against the model's forward pass, which it must never hold back.

    .venv/bin/python benchmarks/corpus_reader.py                       # JSONL, 1× = ~20 MB of text
    .venv/bin/python benchmarks/corpus_reader.py --source parquet --base-mb 40

The corpus is written to a temp folder: documents of ~150 words made of the tiny study's generated
sentences. The tokenizer is the tiny model's byte-level BPE (built by README command 1, or
``--tokenizer DIR``; Qwen's own is not on this machine). Each reading runs in a child process
(its own VmHWM) and streams every training window of the whole corpus through the
pipeline's own functions (``split_documents`` → ``tokenized`` → ``pack_windows``), counting them.
The forward pass is a random-weight Qwen2 at Qwen2.5-3B's widths (hidden 2048, MLP 11008, full
151,936 vocabulary) with 1 and 2 decoder layers, extrapolated to 36: tokens/s of a full forward.
Writes ``benchmarks/results/corpus_reader_<source>_cpu.json``; never run by tests.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.capture import default_tokenizer_dir  # noqa: E402


def write_corpus(folder: Path, source: str, megabytes: float) -> Path:
    """Documents of ~150 words until the text reaches ``megabytes``, as JSONL or Parquet."""
    import polars as pl

    from interp_assets.core.behaviours import generate_corpus

    sentences = generate_corpus(20_000, seed=3)
    docs, size, i = [], 0, 0
    while size < megabytes * 1e6:
        doc = " ".join(sentences[(i * 13 + j) % len(sentences)] for j in range(12)) + f" Document {i}."
        docs.append(doc)
        size += len(doc) + 20
        i += 1
    folder.mkdir(parents=True, exist_ok=True)
    if source == "jsonl":
        path = folder / "corpus.jsonl"
        with open(path, "w") as handle:
            for doc in docs:
                handle.write(json.dumps({"text": doc}) + "\n")
    else:
        path = folder / "corpus.parquet"
        pl.DataFrame({"text": docs}).write_parquet(path, row_group_size=2048)
    return path


def peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM): unlike ru_maxrss it starts afresh at exec, so
    the parent's memory (which wrote the corpus) is not counted."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_read(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from interp_assets.core.corpus import CorpusSpec, end_of_text_id, pack_windows, split_documents, tokenized

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or default_tokenizer_dir(), local_files_only=True)
    spec = CorpusSpec(source=args.source, path=args.path, seq_len=args.seq_len, held_out_fraction=0.05)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    windows = sum(1 for _ in pack_windows(tokenized(tokenizer, split_documents(spec, False)), spec.seq_len,
                                          end_of_text_id(tokenizer)))
    seconds = time.perf_counter() - started
    return {"windows": windows, "tokens": windows * spec.seq_len, "seconds": round(seconds, 3),
            "tokens_per_s": round(windows * spec.seq_len / seconds), "file_bytes": Path(args.path).stat().st_size,
            "peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": rss_before}


def forward_tokens_per_s(seq_len: int, batch: int) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    seconds = {}
    for layers in (1, 2):
        config = Qwen2Config(vocab_size=151_936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=layers,
                             num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True)
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).eval()
        ids = torch.randint(0, 151_936, (batch, seq_len))
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)  # warm-up
            started = time.perf_counter()
            for _ in range(3):
                model(input_ids=ids, use_cache=False)
        seconds[layers] = (time.perf_counter() - started) / 3
        del model
    per_layer = seconds[2] - seconds[1]
    full = seconds[1] + 35 * per_layer
    return {"seconds_1_layer": round(seconds[1], 3), "seconds_2_layers": round(seconds[2], 3),
            "seconds_36_layers_extrapolated": round(full, 3),
            "tokens_per_s_36_layers_fp32": round(batch * seq_len / full, 1), "batch": batch, "seq_len": seq_len}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["jsonl", "parquet"], default="jsonl")
    parser.add_argument("--base-mb", type=float, default=20.0)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_read(args)))
        return

    readings = {}
    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as tmp:
        for scale in (1, 10):
            path = write_corpus(Path(tmp) / f"x{scale}", args.source, args.base_mb * scale)
            command = [sys.executable, __file__, "--child", "--source", args.source, "--path", str(path),
                       "--seq-len", str(args.seq_len)] + (["--tokenizer", args.tokenizer] if args.tokenizer else [])
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            readings[f"x{scale}"] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{scale}×: {readings[f'x{scale}']}", flush=True)
    forward = forward_tokens_per_s(args.seq_len, batch=4)
    print(f"forward: {forward}", flush=True)
    import torch

    result = {
        "benchmark": "corpus_reader",
        "source": args.source,
        "readings": readings,
        "peak_rss_ratio_10x_over_1x": round(readings["x10"]["peak_rss_mb"] / readings["x1"]["peak_rss_mb"], 3),
        "reader_tokens_per_s": readings["x10"]["tokens_per_s"],
        "forward_qwen2.5_3b_shape": forward,
        "reader_over_forward": round(readings["x10"]["tokens_per_s"] / forward["tokens_per_s_36_layers_fp32"], 1),
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count(), "torch": torch.__version__},
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
    }
    out = ROOT / "benchmarks" / "results" / f"corpus_reader_{args.source}_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
