"""Benchmark feature dashboards (``core.dashboards``) at Qwen2.5-3B widths: time and peak memory of
the streaming top-k pass and of the promoted/suppressed token tables, with a full-width SAE.

    nice -n 19 .venv/bin/python benchmarks/dashboards.py                      # CPU, small token count
    .venv/bin/python benchmarks/dashboards.py --device cuda --tokens 65536 --logit-latents 44032

The SAE is full width and random (11008 → 44032, ``mlp_post`` of Qwen2.5-3B, FP32: 3.9 GB). The
model is a stand-in with random weights: ONE decoder layer, but every width the dashboards touch
is Qwen2.5-3B's (hidden 2048, intermediate 11008, vocab 151936, tied embeddings), so the SAE
encode, the top-k state and the logit tables cost what they cost at 3B; only the forward pass of
the layers below the hooked one is missing (``benchmarks/capture.py`` measures that). Tokens are
random ids in windows of ``--seq-len``. Each token count runs in its own child process (peak RSS
from ``ru_maxrss``), so memory can be compared across token counts: it should not grow with them.
The logit tables are timed on ``--logit-latents`` latents (their cost is linear in the number of
latents, chunk by chunk) and scaled to all of them; the JSON says which. Writes
``benchmarks/results/dashboards_<...>.json``; never run by tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interp_assets.core.dashboards import DashboardSettings, collect_top_contexts, decoder_logit_effects  # noqa: E402
from interp_assets.core.sae import SaeSpec, SparseAutoencoder  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_model(args: argparse.Namespace):  # noqa: ANN201
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=1,
        num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=max(2 * args.seq_len, 64),
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(device=args.device).eval()
    model.requires_grad_(False)
    return model


def child(args: argparse.Namespace) -> dict:
    """One measurement in this process: build, stream ``--tokens`` tokens, time the logit tables."""
    torch.set_num_threads(args.threads) if args.threads else None
    started = time.perf_counter()
    model = build_model(args)
    sae = SparseAutoencoder(SaeSpec(d_in=args.intermediate, d_sae=args.intermediate * args.expansion), device=args.device)
    sae.initialize(torch.Generator(device=args.device).manual_seed(0))
    setup_s = time.perf_counter() - started
    settings = DashboardSettings(top_k=args.top_k, context_before=args.context_before,
                                 context_after=args.context_after, n_logit_tokens=10)
    generator = torch.Generator().manual_seed(1)
    (tokens,) = args.tokens
    n_windows = tokens // args.seq_len
    batches = [torch.randint(0, args.vocab, (min(args.batch, n_windows - start), args.seq_len), generator=generator)
               for start in range(0, n_windows, args.batch)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    sync(args.device)
    started = time.perf_counter()
    state = collect_top_contexts(model, sae, 0, "mlp_post", batches, settings)
    sync(args.device)
    stream_s = time.perf_counter() - started
    state_bytes = sum(getattr(state, name).numel() * getattr(state, name).element_size() for name in state.state_shapes())

    latents = min(args.logit_latents, sae.spec.d_sae)
    sliced = SparseAutoencoder(SaeSpec(d_in=args.intermediate, d_sae=latents), device=args.device)
    with torch.no_grad():
        sliced.W_dec.copy_(sae.W_dec[:latents])
    sync(args.device)
    started = time.perf_counter()
    decoder_logit_effects(model, sliced, 0, "mlp_post", settings)
    sync(args.device)
    logit_s = time.perf_counter() - started
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    return {
        "tokens": state.n_tokens, "windows": state.n_windows, "setup_s": setup_s,
        "stream_s": stream_s, "stream_tokens_per_s": state.n_tokens / stream_s,
        "top_k_state_shapes": {k: list(v) for k, v in state.state_shapes().items()},
        "top_k_state_mib": state_bytes / 2**20,
        "logit_tables_latents_timed": latents, "logit_tables_s_timed": logit_s,
        "logit_tables_s_all_latents_extrapolated": logit_s * sae.spec.d_sae / latents,
        "peak_rss_gib_before_stream": rss_before,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_gib": peak_gpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 2048], help="token counts, one child each")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--context-before", type=int, default=12)
    parser.add_argument("--context-after", type=int, default=4)
    parser.add_argument("--logit-latents", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    runs = []
    for tokens in args.tokens:
        command = [sys.executable, __file__, "--child", "--tokens", str(tokens)] + [
            arg for key, value in vars(args).items() if key not in ("tokens", "child")
            for arg in (f"--{key.replace('_', '-')}", str(value))]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"child for {tokens} tokens failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {
        "benchmark": "dashboards",
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": args.device,
                    "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                    "load_average_1m_at_end": __import__("os").getloadavg()[0]},
        "git_commit": commit,
        "settings": {k: v for k, v in vars(args).items() if k != "child"},
        "d_sae": args.intermediate * args.expansion,
        "runs": runs,
    }
    out = ROOT / "benchmarks" / "results" / (
        f"dashboards_mlp_post_{args.intermediate}x{args.intermediate * args.expansion}_h{args.hidden}_{args.device}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
