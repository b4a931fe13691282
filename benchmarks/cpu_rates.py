"""Measure the rates the resource plan needs beside FLOP/s and bandwidth, on this machine, by the
code paths the workers run:

- ``startup_seconds``: a fresh ``python -c 'import interp_assets.worker deps'`` (torch,
  transformers, polars, safetensors, the tasks): what every job pays before its first line.
- ``init_params_per_second``: a Qwen2 decoder layer at ``--hidden``/``--intermediate`` widths
  built in BF16 by transformers (construction + ``_init_weights``), as ``core.random_model`` builds
  the rehearsal's model.
- ``forward_flops_per_second``: that layer's forward over ``--tokens`` tokens (batch 8), in BF16
  and in FP32: the rate a model pass reaches at the real widths, beside the 2048² matmul peak.
- ``sae_init_params_per_second``: ``SparseAutoencoder.initialize`` (randn, row norms, transpose)
  at ``--intermediate`` → 4×, as every SAE job draws its SAE and the random baseline SAE.
- ``dashboard_contexts_per_second``: a layer's dashboards after the pass (the contexts as
  columns, the Neuronpedia JSON, the Parquet tables) for a full state of ``--d-sae`` latents × 20
  contexts, as ``tasks.feature_dashboards.build_layer`` writes them.
- ``first_touch_bytes_per_second``: ``torch.zeros`` of fresh memory (the page faults an SAE's
  gradients and Adam moments cost the first time they are written).
- ``sha256_bytes_per_second``: hashing, as the weights' fingerprints are taken.
- ``save_bytes_per_second``: ``safetensors.torch.save_file`` of a BF16 tensor of ``--save-mb``.
- ``load_bytes_per_second``: ``safetensors.torch.load_file`` of it back (the file just written,
  so from the page cache: what a job finds after the phase before it on the same node).

    .venv/bin/python benchmarks/cpu_rates.py

Writes ``benchmarks/results/cpu_rates.json``; ``interp_assets/core/resource_model.py`` cites it for
the ``cpu`` device. Never run by tests.
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

import torch

ROOT = Path(__file__).resolve().parent.parent


def startup_seconds(repeats: int) -> list[float]:
    code = ("import torch, transformers, polars, safetensors, dagster_pipes; "
            "from transformers import Qwen2ForCausalLM; import interp_assets.worker, interp_assets.tasks")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        times.append(time.perf_counter() - started)
    return times


def init_rate(hidden: int, intermediate: int, repeats: int) -> list[float]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=1,
                         num_attention_heads=16, num_key_value_heads=2, vocab_size=8, torch_dtype="bfloat16")
    rates = []
    for _ in range(repeats):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        started = time.perf_counter()
        try:
            model = Qwen2ForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
        seconds = time.perf_counter() - started
        rates.append(sum(p.numel() for p in model.parameters()) / seconds)
        del model
    return rates


def forward_rates(hidden: int, intermediate: int, tokens: int, repeats: int) -> dict[str, float]:
    """Achieved FLOP/s of one Qwen2 decoder layer's forward at these widths, per dtype."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=1,
                         num_attention_heads=16, num_key_value_heads=2, vocab_size=8)
    model = Qwen2ForCausalLM(config).eval()
    layer = model.model.layers[0]
    params = sum(p.numel() for p in layer.parameters())
    batch, seq = 8, tokens // 8
    ids = torch.randint(0, 8, (batch, seq))
    rates = {}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        model.to(dtype)
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)  # warm-up
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                model(input_ids=ids, use_cache=False)
                times.append(time.perf_counter() - started)
        flops = batch * seq * (2 * params + 4 * hidden * seq)
        rates[name] = flops / sorted(times)[len(times) // 2]
    return rates


def sae_init_rate(d_in: int, repeats: int) -> float:
    sys.path.insert(0, str(ROOT))
    from interp_assets.core.sae import SaeSpec, SparseAutoencoder

    sae = SparseAutoencoder(SaeSpec(d_in=d_in, d_sae=4 * d_in))
    times = []
    with torch.no_grad():
        for seed in range(repeats):
            started = time.perf_counter()
            sae.initialize(torch.Generator().manual_seed(seed))
            times.append(time.perf_counter() - started)
    return sum(p.numel() for p in sae.parameters()) / sorted(times)[len(times) // 2]


def dashboard_rate(d_sae: int) -> float:
    """Contexts written per second after the streaming pass, for a state whose every slot is kept."""
    sys.path.insert(0, str(ROOT))
    from interp_assets.core.dashboard_export import neuronpedia_batch
    from interp_assets.core.dashboards import DashboardSettings, TopContexts, context_rows
    from interp_assets.tasks.feature_dashboards import _schemas, inconsistent_contexts, table_from_columns

    settings = DashboardSettings()
    state = TopContexts(d_sae, settings)
    generator = torch.Generator().manual_seed(0)
    k, width = settings.top_k, settings.context_width
    state.values = torch.rand((d_sae, k), generator=generator).sort(dim=1, descending=True).values + 0.1
    state.window = torch.randint(0, 1000, (d_sae, k), generator=generator)
    state.position = torch.randint(0, 32, (d_sae, k), generator=generator)
    state.context_tokens = torch.randint(0, 50_000, (d_sae, k, width), generator=generator)
    state.context_acts = torch.rand((d_sae, k, width), generator=generator)
    latents = [{"latent": i, "n_firing": k, "max_activation": float(state.values[i, 0]), "n_contexts": k,
                "density": 0.1, "suppressed_tokens": [], "suppressed_logits": [], "promoted_tokens": [],
                "promoted_logits": [], "activation_histogram": [0] * 56, "logit_histogram_heights": [],
                "logit_histogram_values": []} for i in range(d_sae)]
    started = time.perf_counter()
    contexts = context_rows(state, str)
    document = neuronpedia_batch(latents, contexts, model_id="m", layer=0, sae_set="s", n_prompts_total=1,
                                 n_tokens_in_prompt=32, dataset="d")
    inconsistent_contexts(latents, contexts, k)
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        Path(tmp, "features.json").write_text(json.dumps(document, ensure_ascii=False, separators=(",", ":")))
        table_from_columns(contexts, _schemas()[1]).write_parquet(Path(tmp, "c.parquet"))
    return d_sae * k / (time.perf_counter() - started)


def first_touch_rate(megabytes: int, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        fresh = torch.zeros(megabytes * 2**20 // 4)
        rates.append(fresh.numel() * 4 / (time.perf_counter() - started))
        del fresh
    return sorted(rates)[len(rates) // 2]


def sha256_rate(megabytes: int) -> float:
    import hashlib

    data = bytes(megabytes * 2**20)
    started = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return len(data) / (time.perf_counter() - started)


def save_load_rates(megabytes: int) -> tuple[float, float]:
    from safetensors.torch import load_file, save_file

    tensor = torch.zeros(megabytes * 2**20 // 2, dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        path = Path(tmp) / "w.safetensors"
        started = time.perf_counter()
        save_file({"w": tensor}, path)
        save = time.perf_counter() - started
        started = time.perf_counter()
        loaded = load_file(path)
        loaded["w"].sum()  # touch every page
        load = time.perf_counter() - started
    size = tensor.numel() * 2
    return size / save, size / load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--save-mb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--d-sae", type=int, default=44032)
    args = parser.parse_args()
    startup = startup_seconds(args.repeats)
    init = init_rate(args.hidden, args.intermediate, args.repeats)
    save, load = save_load_rates(args.save_mb)
    forward = forward_rates(args.hidden, args.intermediate, args.tokens, args.repeats)
    sae_init = sae_init_rate(args.intermediate // 4, args.repeats)
    hashing = sha256_rate(args.save_mb)
    first_touch = first_touch_rate(2 * args.save_mb, args.repeats)
    dashboards = dashboard_rate(args.d_sae)
    result = {
        "benchmark": "cpu_rates",
        "startup_seconds": sorted(startup)[len(startup) // 2],
        "startup_seconds_all": startup,
        "init_params_per_second": sorted(init)[len(init) // 2],
        "init_params_per_second_all": init,
        "init_shape": {"hidden": args.hidden, "intermediate": args.intermediate, "dtype": "bfloat16"},
        "forward_flops_per_second": forward,
        "forward_tokens": args.tokens,
        "sae_init_params_per_second": sae_init,
        "sha256_bytes_per_second": hashing,
        "first_touch_bytes_per_second": first_touch,
        "dashboard_contexts_per_second": dashboards,
        "dashboard_d_sae": args.d_sae,
        "save_bytes_per_second": save,
        "load_bytes_per_second_page_cache": load,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "load_average": os.getloadavg()},
    }
    out = ROOT / "benchmarks" / "results" / "cpu_rates.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
