"""The resource plan of a study, computed from its config: per phase (= SLURM worker task) the
FLOPs, bytes moved, peak device and host memory, predicted wall time on a target device, storage,
and for the whole study GPU-hours and CD3 service units, beside the spec's own guess.

    python -m interp_assets.plan configs/qwen2.5-3b.yaml --device a100-80gb

Shapes come from the config and the model's own config (``AutoConfig`` of ``model.path``; the
tiny and random models from their spec): nothing here knows Qwen's dimensions. The arithmetic is
``interp_assets.core.resource_model``; the SLURM resource sizes ``time: auto`` / ``mem: auto``
jobs with ``task_requirements``.

One module on purpose (about 430 lines): ``_phases`` estimates every phase in the order the study
runs it, each from the config sections that phase's worker reads; split across files, a reader
checking one SLURM task's figure against its worker would have to follow it through several.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from interp_assets.config import ConfigError, ExperimentConfig, load_config
from interp_assets.core.resource_model import (
    ASSUMPTIONS,
    DEVICES,
    SPEC_TABLE,
    Device,
    ModelShape,
    PhaseEstimate,
    SaeShape,
    UnknownDeviceError,
    assumption,
    device_named,
    device_startup,
    human_bytes,
    human_flops,
    human_seconds,
    predict,
)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PHASES = ("language_model", "baselines", "activations", "saes", "feature_dashboards", "attribution_graphs",
          "interventions")


class PlanError(ValueError):
    """A plan that cannot be computed; the message names the field and the fix."""


@dataclass
class Plan:
    config_name: str
    model_name: str
    device: Device
    model: ModelShape
    sae: SaeShape
    phases: list[PhaseEstimate]

    def phase(self, name: str) -> PhaseEstimate:
        return next(p for p in self.phases if p.phase == name)

    @property
    def gpu_hours(self) -> float:
        return sum(p.total_seconds for p in self.phases if p.uses_gpu) / 3600 if self.device.is_gpu else 0.0

    @property
    def service_units(self) -> float:
        return self.gpu_hours * assumption("su_per_gpu_hour")

    def to_json(self) -> dict:
        return {
            "config": self.config_name, "model": self.model_name, "device": self.device.name,
            "efficiency_measured": self.device.efficiency_measured,
            "parameters": self.model.params(), "gpu_hours": self.gpu_hours, "service_units": self.service_units,
            "phases": {p.phase: {"jobs": p.jobs, "flops": p.flops, "bytes_moved": p.bytes_moved,
                                 "device_peak_bytes": p.device_peak_bytes, "host_peak_bytes": p.host_peak_bytes,
                                 "storage_bytes": p.storage_bytes, "seconds_per_job": p.seconds, "bound": p.bound,
                                 "uses_gpu": p.uses_gpu} for p in self.phases},
        }


# ---------------------------------------------------------------------------------------------
# Shapes from the config


def model_shape(config: ExperimentConfig) -> ModelShape:
    """The model's dimensions: from the tiny/random spec, or the model's config.json (AutoConfig)."""
    section = config.model
    dtype_bytes = DTYPE_BYTES[section.dtype]
    if section.source in ("tiny", "random"):
        spec = section.tiny_spec if section.source == "tiny" else section.random
        tied = True if section.source == "tiny" else spec.tie_word_embeddings
        return ModelShape(spec.hidden_size, spec.intermediate_size, spec.num_layers, spec.num_heads,
                          spec.num_kv_heads, spec.vocab_size, tied, dtype_bytes)
    path = Path(section.path or "")
    try:
        from transformers import AutoConfig

        hf = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - any reason the folder is not a model: one clear message
        raise PlanError(f"model.path: cannot read the model config from {path} ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200]}); download the model there or fix model.path") from None
    text = getattr(hf, "text_config", None) or hf
    try:
        return ModelShape(text.hidden_size, text.intermediate_size, text.num_hidden_layers,
                          text.num_attention_heads, getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
                          text.vocab_size, bool(getattr(hf, "tie_word_embeddings", False)), dtype_bytes)
    except AttributeError as error:
        raise PlanError(f"model.path: {path}/config.json lacks {error.name}: is this a decoder-only causal LM?") from None


def sae_shape(config: ExperimentConfig, model: ModelShape) -> SaeShape:
    d_in = model.intermediate if config.activations.hook_point == "mlp_post" else model.hidden
    return SaeShape(d_in, d_in * config.sae.expansion_factor, config.sae.batch_size, config.sae.steps,
                    config.sae.architecture == "topk")


# ---------------------------------------------------------------------------------------------
# Phases


def prompt_tokens_estimate(config: ExperimentConfig, sample: int = 256) -> float:
    """Tokens of the longest prompt (a batch is padded to it), from the config's own prompts:
    their words and punctuation marks × the ``tokens_per_word`` assumption. The prompts are
    generated here exactly as the ``prompts`` asset generates them (a seeded function of the config)."""
    import re

    from interp_assets.artifacts import behaviour_seed
    from interp_assets.core.behaviours import generate_prompts

    longest = 1
    for behaviour in config.prompts.behaviours:
        n = min(config.prompts.n_per_behaviour, sample)
        for pair in generate_prompts(behaviour, n, behaviour_seed(config.prompts.seed, behaviour)):
            for text in (pair.clean, pair.corrupted):
                longest = max(longest, len(re.findall(r"\w+|[^\w\s]", text)))
    return longest * assumption("tokens_per_word")


def _phases(config: ExperimentConfig, model: ModelShape, sae: SaeShape, device: Device) -> list[PhaseEstimate]:
    prompt_tokens = prompt_tokens_estimate(config)
    base = assumption("process_base_bytes") + (assumption("cuda_context_host_bytes") if device.is_gpu else 0.0)
    weights = model.weight_bytes()
    act_bytes = DTYPE_BYTES[config.activations.dtype]
    behaviours = len(config.prompts.behaviours)
    n = config.prompts.n_per_behaviour
    layers = list(config.activations.layers)
    key = sorted(config.attribution.key_layers or layers)

    def resident(device_bytes: float, host_extra: float = 0.0) -> tuple[float, float]:
        """(device peak, host peak). On a GPU the weights pass through host memory while loading
        (safetensors → tensor → .to(cuda)); on the CPU everything is host memory."""
        if device.is_gpu:
            return device_bytes, base + weights + host_extra
        return base + device_bytes + host_extra, base + device_bytes + host_extra

    phases: list[PhaseEstimate] = []

    # ---- language model
    source = config.model.source
    if source == "tiny":
        spec = config.model.tiny_spec
        tokens = spec.train_steps * spec.batch_size * spec.seq_len
        flops = 6.0 * model.params() * tokens
        training = 16.0 * model.params() + model.forward_activation_bytes(spec.batch_size * spec.seq_len, spec.seq_len, True)
        dev, host = resident(training)
        phases.append(PhaseEstimate("language_model", 1, flops, spec.train_steps * 16.0 * model.params(), dev, host,
                                    model.params() * 4, "forward", True, notes=["trains the tiny model (FP32, AdamW)"]))
    elif source == "random":
        # Initialised directly in the model dtype (core.random_model); save_pretrained serialises one
        # tensor at a time, the largest (the embedding) as an extra copy. Drawing the weights and
        # writing them are host work at measured rates.
        params = model.params()
        host = base + weights + model.vocab * model.hidden * model.dtype_bytes
        phases.append(PhaseEstimate(
            "language_model", 1, 0.0, 0.0, host, host, weights, "forward", False,
            host_seconds=params / assumption("init_params_per_second") + weights / assumption("save_bandwidth"),
            notes=["random init from a seed, no training; CPU only"]))
    else:
        phases.append(PhaseEstimate("language_model", 1, 0.0, 0.0, base, base, 4096.0, "forward", False,
                                    notes=["fingerprints the weights on disk (names + sizes); no GPU"]))

    # ---- baselines: clean + corrupted prompts of one behaviour per job
    texts = 2 * n
    batch = config.baselines.batch_size
    batches = -(-texts // batch)
    dev, host = resident(weights + model.forward_activation_bytes(batch * prompt_tokens, prompt_tokens, False))
    phases.append(PhaseEstimate("baselines", behaviours, model.forward_flops(texts * prompt_tokens, prompt_tokens),
                                model.forward_bytes(batches, texts * prompt_tokens), dev, host, texts * 64.0))

    # ---- activations: ONE forward over prompts + corpus, up to the last captured layer
    section = config.activations
    width = model.intermediate if section.hook_point == "mlp_post" else model.hidden
    prompt_texts = behaviours * 2 * n
    corpus = config.corpus
    seq_len = corpus.seq_len
    corpus_windows = corpus.max_tokens // seq_len  # concatenated; document windows hold fewer tokens
    corpus_tokens = corpus_windows * seq_len
    tokens = prompt_texts * prompt_tokens + corpus_tokens
    vectors = prompt_texts * section.last_n_tokens + corpus_windows * (seq_len - corpus.exclude_first_positions)
    batches = -(-(prompt_texts + corpus_windows) // section.batch_size)
    written = vectors * width * act_bytes * len(layers)
    buffers = (len(layers) + 1) * min(section.shard_max_vectors, vectors) * width * act_bytes
    # The pass stops at the deepest captured layer and needs no logits: on the CPU (weights memory-
    # mapped from safetensors) only those layers' pages are ever read; a GPU holds the whole model.
    touched = weights if device.is_gpu else (max(layers) + 1) * model.layer_params() * model.dtype_bytes
    dev, host = resident(touched + model.forward_activation_bytes(section.batch_size * seq_len,
                                                                  seq_len, False, logits=False), buffers)
    phases.append(PhaseEstimate(
        "activations", 1, model.forward_flops(tokens, seq_len, max(layers), logits=False),
        model.forward_bytes(batches, tokens, max(layers)) + written, dev, host, written,
        notes=[f"{vectors:,} vectors × {width} per layer, {len(layers)} layers in one pass (corpus documents "
               f"assumed {seq_len} tokens long: shorter ones write less)"]))

    # ---- saes: one array task per layer (streamed: per group of layers)
    groups = config.sae.layer_groups(layers)
    group = max(len(g) for g in groups)
    steps = config.sae.steps
    # Held-out judging: a mean pass, then clean, SAE, random SAE, zero- and mean-ablated forwards
    # over corpus.eval_tokens, both SAEs encoding every held-out token.
    ce_tokens = corpus.eval_tokens
    flops = group * (steps * sae.step_flops() + 2 * 4 * ce_tokens * sae.d_in * sae.d_sae)
    # ... and before training, the held-out windows run up to the layer for the evaluation vectors.
    model_flops = group * (6 * model.forward_flops(ce_tokens, seq_len)
                           + model.forward_flops(ce_tokens, seq_len, max(layers), logits=False))
    moved = group * steps * sae.step_bytes()
    shuffle = group * min(config.sae.shuffle_buffer_vectors, vectors) * width * act_bytes
    eval_vectors = group * config.sae.eval_vectors * width * 4
    if config.sae.data_source == "stream":
        model_flops += steps * model.forward_flops(sae.batch, seq_len, max(layers), logits=False)
    # Host work per layer: drawing the SAE and the random baseline SAE, writing and hashing the weights.
    sae_host_seconds = group * (2 * sae.params() / assumption("sae_init_params_per_second")
                                + sae.weight_bytes() / assumption("save_bandwidth")
                                + sae.weight_bytes() / assumption("sha256_bandwidth"))
    if not device.is_gpu:  # gradients and Adam's moments: 12 bytes a parameter, faulted in on first write
        sae_host_seconds += group * 12 * sae.params() / assumption("first_touch_bandwidth")
    # Training (weights, gradients, Adam) and the CE-recovered evaluation (the model + the trained
    # SAE) come one after the other: the peak is the larger, not the sum (measured in the rehearsal).
    training_peak = group * sae.training_bytes() + shuffle + eval_vectors
    evaluation_peak = weights + group * sae.weight_bytes() + model.forward_activation_bytes(
        config.baselines.batch_size * seq_len, seq_len, False)
    if config.sae.data_source == "stream":
        training_peak += weights
    elif not device.is_gpu:
        # The model is loaded before training (the held-out windows' activations are taken first):
        # its pages up to the captured layer, and the embedding, stay resident while the SAE trains.
        training_peak += (max(layers) + 1) * model.layer_params() * model.dtype_bytes + model.vocab * model.hidden * model.dtype_bytes
    if device.is_gpu:
        dev, host = max(training_peak - shuffle - eval_vectors, evaluation_peak), base + weights + shuffle + eval_vectors
    else:
        dev = host = base + max(training_peak, evaluation_peak)
    checkpoint = 12.0 * sae.params()  # weights + Adam moments: written while training, deleted when published
    phases.append(PhaseEstimate(
        "saes", len(groups), flops, moved, dev, host, len(layers) * sae.weight_bytes(), "sae",
        host_seconds=sae_host_seconds, model_flops=model_flops,
        notes=[f"{sae.d_in}→{sae.d_sae} ({sae.params() / 1e6:.0f}M params, {human_bytes(sae.weight_bytes())} FP32), "
               f"{steps:,} steps × batch {sae.batch}; while a layer trains its resume checkpoint takes another "
               f"{human_bytes(checkpoint)} (checkpoints tier)"]))

    # ---- feature dashboards: one array task per layer, one pass over the held-out windows up to the
    # layer, every token encoded by the SAE and folded into the bounded top-k state, then the logit
    # tables: every (chosen) latent's decoder row through down_proj and the unembedding, in FP32.
    dash = config.dashboards
    windows = max(1, min(dash.n_texts, corpus.eval_tokens // seq_len))
    tokens = windows * seq_len
    deepest = max(layers)
    table_latents = min(dash.logit_latents or sae.d_sae, sae.d_sae)
    into_residual = 2 * model.intermediate * model.hidden if config.activations.hook_point == "mlp_post" else 0
    table_flops = table_latents * (into_residual + 2 * model.hidden * model.vocab)
    encode_flops = 2 * tokens * sae.d_in * sae.d_sae
    width = dash.context_before + 1 + dash.context_after
    state = sae.d_sae * (dash.top_k * (3 * 8 + width * 12) + 8 * 3 + 56 * 8)
    per_batch = 5 * dash.batch_size * seq_len * sae.d_sae * 4  # acts, mask, top-k candidates, contexts
    chunk = 3 * min(1024, table_latents) * model.vocab * 4  # one chunk's logits, its top-k and histogram
    touched = weights if device.is_gpu else (deepest + 1) * model.layer_params() * model.dtype_bytes \
        + model.vocab * model.hidden * model.dtype_bytes
    dev, host = resident(touched + sae.weight_bytes() + state + max(per_batch, chunk) + model.forward_activation_bytes(
        dash.batch_size * seq_len, seq_len, False, logits=False))
    stored = sae.d_sae * (dash.top_k * width * 40 + 56 * 8 + 80 * 8 + 4 * dash.n_logit_tokens * 12)
    dashboards = PhaseEstimate(
        "feature_dashboards", len(layers), model.forward_flops(tokens, seq_len, deepest, logits=False) + encode_flops,
        model.forward_bytes(-(-windows // dash.batch_size), tokens, deepest) + 2 * sae.weight_bytes(),
        dev, host, len(layers) * stored,
        notes=[f"{windows} held-out windows × {seq_len} tokens per layer; token tables for {table_latents:,} latents "
               f"({human_flops(table_flops)} in FP32)"])
    dashboards.fp32_flops = table_flops
    dashboards.host_seconds = sae.d_sae * dash.top_k / assumption("dashboard_contexts_per_second")
    phases.append(dashboards)

    # ---- attribution graphs: one job per behaviour, every key layer's SAE spliced in at once
    pairs = max(1, round(n * config.prompts.train_fraction))
    batch = config.baselines.batch_size
    ig = config.attribution.ig_steps if config.attribution.method == "integrated_gradients" else 1
    pass_flops = model.forward_flops(pairs * prompt_tokens, prompt_tokens)
    sae_flops = len(key) * 4 * pairs * prompt_tokens * sae.d_in * sae.d_sae * 4
    edge_backwards = max(0, len(key) - 1) * config.attribution.max_nodes_per_layer * -(-pairs // batch)
    per_batch_pass = model.forward_flops(min(batch, pairs) * prompt_tokens, prompt_tokens)
    flops = (4 + 3 * ig) * pass_flops + 2 * sae_flops + edge_backwards * 2 * per_batch_pass
    saes_fp32 = len(key) * sae.weight_bytes()
    features = 3 * len(key) * batch * prompt_tokens * sae.d_sae * 4
    dev, host = resident(weights + saes_fp32 + features + model.forward_activation_bytes(batch * prompt_tokens, prompt_tokens, True))
    phases.append(PhaseEstimate(
        "attribution_graphs", behaviours, flops,
        (8 + edge_backwards) * -(-pairs // batch) * (weights + saes_fp32), dev, host, 2e6,
        notes=[f"{len(key)} key-layer SAEs in FP32 at once ({human_bytes(saes_fp32)})"]))

    # ---- interventions: thousands of edited forward passes per behaviour
    cfg = config.interventions
    test = max(1, n - pairs)
    groups_n = cfg.ablation_groups
    patching = sorted(cfg.patching_layers or layers)
    visitors = [layer for layer in patching if layer not in key]  # read one at a time (core.interventions.SaeCache)
    patch_passes = 2 + len(patching) * (min(cfg.patching_positions, int(prompt_tokens)) + 1) * 2
    prompt_passes = 2 * groups_n * test + patch_passes * cfg.patching_pairs + groups_n * cfg.resample_samples * test \
        + 4 * (test + cfg.patching_pairs)
    batches = patch_passes * -(-cfg.patching_pairs // batch) + (2 * groups_n + groups_n * cfg.resample_samples) * -(-test // batch)
    # Then the faithfulness curve: the empty circuit, and per size (0 … all, ablation_groups + 1 of
    # them) the circuit, its complement and random_circuit_draws random circuits, on the test prompts.
    faithfulness_passes = test * (1 + (groups_n + 1) * (2 + cfg.random_circuit_draws))
    prompt_passes += faithfulness_passes
    batches += (1 + (groups_n + 1) * (2 + cfg.random_circuit_draws)) * -(-test // batch)
    flops = model.forward_flops(prompt_passes * prompt_tokens, prompt_tokens) \
        + prompt_passes * prompt_tokens * 4 * sae.d_in * sae.d_sae
    held = saes_fp32 + (sae.weight_bytes() if visitors else 0.0)
    dev, host = resident(weights + held + model.forward_activation_bytes(batch * prompt_tokens, prompt_tokens, False))
    experiments = 3 * groups_n + patch_passes
    phases.append(PhaseEstimate(
        "interventions", behaviours, flops, model.forward_bytes(batches, prompt_passes * prompt_tokens)
        + batches * saes_fp32, dev, host, experiments * 512.0,
        notes=[f"~{prompt_passes:,} prompt forward passes ({experiments} experiments); patching {len(patching)} "
               f"layers: the key layers' SAEs held, {len(visitors)} others read one at a time"]))
    interventions_sae_reads = (len(key) + len(visitors)) * sae.weight_bytes()

    model_fp32 = config.model.dtype == "float32"
    for phase in phases:
        # Every job but the model's own build loads the weights (and the key layers' SAEs) first.
        load = 0.0 if phase.phase == "language_model" else weights
        if phase.phase == "attribution_graphs":
            load += len(key) * sae.weight_bytes()
        if phase.phase == "interventions":
            load += interventions_sae_reads
        if phase.phase == "feature_dashboards":
            load += sae.weight_bytes()
        if not phase.uses_gpu and device.is_gpu:
            phase.seconds = device_startup(device) + phase.bytes_moved / 10e9 + phase.host_seconds  # host-side work
            phase.bound = "host"
        else:
            predict(phase, device, load, model_fp32)
        if device.is_gpu and phase.uses_gpu and phase.device_peak_bytes > device.memory:
            phase.notes.append(f"DOES NOT FIT: needs {human_bytes(phase.device_peak_bytes)} of "
                               f"{human_bytes(device.memory)} device memory")
    return phases


def plan_for(config: ExperimentConfig, device_name: str) -> Plan:
    """The plan of ``config`` on ``device_name`` (a key of ``DEVICES``)."""
    device = device_named(device_name)
    model = model_shape(config)
    sae = sae_shape(config, model)
    phases = _phases(config, model, sae, device)
    if config.sae_variants:
        phases = [_sweep_phase(config, model, device) if phase.phase == "saes" else phase for phase in phases]
    return Plan(config.experiment.name, config.model.name, device, model, sae, phases)


def _sweep_phase(config: ExperimentConfig, model: ModelShape, device: Device) -> PhaseEstimate:
    """A sweep's ``saes``: every variant's jobs in one array; each job sized as the costliest
    variant's (what ``time: auto`` / ``mem: auto`` must cover), storage the variants' sum."""
    by_variant = {}
    for name in config.sae_variants:
        variant = config.for_variant(name)
        by_variant[name] = next(p for p in _phases(variant, model, sae_shape(variant, model), device) if p.phase == "saes")
    costliest = max(by_variant, key=lambda name: (by_variant[name].seconds, by_variant[name].host_peak_bytes))
    worst = by_variant[costliest]
    return replace(worst, jobs=sum(p.jobs for p in by_variant.values()),
                   device_peak_bytes=max(p.device_peak_bytes for p in by_variant.values()),
                   host_peak_bytes=max(p.host_peak_bytes for p in by_variant.values()),
                   storage_bytes=sum(p.storage_bytes for p in by_variant.values()),
                   notes=[f"sweep of {len(by_variant)} variants ({', '.join(by_variant)}); per job: the costliest, "
                          f"{costliest}", *worst.notes])


def task_requirements(config: ExperimentConfig, task: str, device_name: str) -> tuple[float, float]:
    """(seconds, host bytes) one SLURM job of worker ``task`` needs, by the plan: what
    ``time: auto`` / ``mem: auto`` are sized from (before the profile's safety factor)."""
    plan = plan_for(config, device_name)
    if task not in PHASES:
        raise PlanError(f"worker task {task!r} has no plan; planned tasks: {', '.join(PHASES)}")
    phase = plan.phase(task)
    return phase.seconds, phase.host_peak_bytes


# ---------------------------------------------------------------------------------------------
# Printing


def markdown(plan: Plan) -> str:
    """The plan as Markdown: the phase table, the study's totals beside the spec's, the device's
    rates with their sources, and every assumption marked."""
    device = plan.device
    lines = [
        f"**Resource plan: {plan.config_name}** ({plan.model_name}, {plan.model.params() / 1e6:,.1f}M parameters, "
        f"{plan.model.layers} layers, d_model {plan.model.hidden}, d_mlp {plan.model.intermediate}, vocab "
        f"{plan.model.vocab:,}) on **{device.label}**",
        "",
        "| phase (SLURM task) | jobs | FLOPs / job | bytes moved / job | device peak / job | host peak / job "
        "| time / job | bound | total time | storage |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for p in plan.phases:
        lines.append(
            f"| {p.phase} | {p.jobs} | {human_flops(p.flops)} | {human_bytes(p.bytes_moved)} | "
            f"{human_bytes(p.device_peak_bytes) if p.uses_gpu or not device.is_gpu else '—'} | "
            f"{human_bytes(p.host_peak_bytes)} | {human_seconds(p.seconds)} | {p.bound} | "
            f"{human_seconds(p.total_seconds)} | {human_bytes(p.storage_bytes)} |")
    total_storage = sum(p.storage_bytes for p in plan.phases)
    total_time = sum(p.total_seconds for p in plan.phases)
    lines += [
        "",
        f"- Whole study: {human_seconds(total_time)} of job time, storage {human_bytes(total_storage)}.",
    ]
    if device.is_gpu:
        lines.append(f"- GPU-hours: **{plan.gpu_hours:.2f}**; CD3 service units: **{plan.service_units:.2f}** "
                     f"(ASSUMED {assumption('su_per_gpu_hour'):g} SU per GPU-hour). The spec's table: "
                     f"{SPEC_TABLE['gpu_hours']:g} GPU-hours, {SPEC_TABLE['hours_per_sae']} h per SAE "
                     f"(plan: {human_seconds(plan.phase('saes').seconds)} per SAE job).")
    lines += [
        f"- Device: {device.source}. Efficiency: {device.efficiency_note}: model passes "
        f"{device.compute_efficiency['forward']:.0%}, SAE steps {device.compute_efficiency['sae']:.0%} of peak, "
        f"bandwidth {device.bandwidth_efficiency:.0%}.",
        "- ASSUMED: " + "; ".join(f"{text} ({value:g})" if value < 1e6 else f"{text} ({human_bytes(value)})"
                                  for value, text in ASSUMPTIONS.values()) + ".",
    ]
    for p in plan.phases:
        for note in p.notes:
            lines.append(f"- {p.phase}: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interp_assets.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="experiment config (YAML)")
    parser.add_argument("--device", default="a100-80gb", help=f"target device: {', '.join(DEVICES)}")
    args = parser.parse_args(argv)
    try:
        device_named(args.device)  # before the (slower) config load
        config = load_config(args.config)
        plan = plan_for(config, args.device)
    except (ConfigError, PlanError, UnknownDeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
