"""The resource model of a study: FLOPs, bytes moved, peak memory, storage and wall time of each
phase, as arithmetic on the model's and the SAEs' shapes and a device's published peak rates.

Pure Python (no torch, no dagster): ``interp_assets.plan`` reads the shapes from a config and the
model's own config.json, and the SLURM resource sizes ``time: auto`` / ``mem: auto`` jobs from it.

Every figure that is not read from a shape is either a device datasheet number (``DEVICES``, with
its source), a measured number (this CPU; ``measured=True``), or a stated assumption
(``ASSUMPTIONS``; ``measured=False``) that the printed plan marks as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GB = 1e9
GIB = 1024**3

# ---------------------------------------------------------------------------------------------
# Devices


@dataclass(frozen=True)
class Device:
    name: str
    label: str
    low_precision_flops: float
    """Dense BF16 matmul FLOP/s (tensor cores; no sparsity)."""
    fp32_flops: float
    """FP32 FLOP/s without TF32 (the SAE trainer does not enable TF32)."""
    bandwidth: float
    """Memory bandwidth, bytes/s (HBM on a GPU; a measured copy on this CPU)."""
    memory: float
    """Device memory, bytes (for the CPU: this machine's RAM)."""
    source: str
    compute_efficiency: dict[str, float]
    """Fraction of the peak a phase reaches, per phase kind (``forward``, ``sae``)."""
    bandwidth_efficiency: float
    efficiency_measured: bool
    efficiency_note: str
    is_gpu: bool = True
    load_bandwidth: float | None = None
    """bytes/s a job reads the weights at (None: the ``load_bandwidth`` assumption, a shared filesystem)."""
    startup_seconds: float | None = None
    """A job's imports before its first line (None: the ``startup_seconds`` assumption)."""


_GPU_EFFICIENCY = {"forward": 0.5, "sae": 0.6}
_GPU_NOTE = ("ASSUMED: no GPU run has measured them yet (50 % of peak for model passes, 60 % for SAE steps, "
             "70 % of HBM bandwidth)")

DEVICES: dict[str, Device] = {
    "a100-40gb": Device("a100-40gb", "NVIDIA A100 SXM 40GB", 312e12, 19.5e12, 1555e9, 40 * GB,
                        "NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 TFLOPS dense, FP32 19.5 TFLOPS, "
                        "HBM2 1,555 GB/s", _GPU_EFFICIENCY, 0.7, False, _GPU_NOTE),
    "a100-80gb": Device("a100-80gb", "NVIDIA A100 SXM 80GB", 312e12, 19.5e12, 2039e9, 80 * GB,
                        "NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 TFLOPS dense, FP32 19.5 TFLOPS, "
                        "HBM2e 2,039 GB/s", _GPU_EFFICIENCY, 0.7, False, _GPU_NOTE),
    "h100": Device("h100", "NVIDIA H100 SXM5 80GB", 989e12, 67e12, 3350e9, 80 * GB,
                   "NVIDIA H100 Tensor Core GPU datasheet: BF16 989 TFLOPS dense (1,979 with sparsity), "
                   "FP32 67 TFLOPS, HBM3 3.35 TB/s", _GPU_EFFICIENCY, 0.7, False, _GPU_NOTE),
    "h200": Device("h200", "NVIDIA H200 SXM 141GB", 989e12, 67e12, 4800e9, 141 * GB,
                   "NVIDIA H200 Tensor Core GPU datasheet: BF16 989 TFLOPS dense, FP32 67 TFLOPS, "
                   "HBM3e 4.8 TB/s", _GPU_EFFICIENCY, 0.7, False, _GPU_NOTE),
    # This machine: 2 cores, 24 GB. Peaks measured with torch 2.13 (2 threads): 2048×2048 matmuls
    # (FP32 276 GFLOP/s, BF16 60 GFLOP/s: BF16 is 4.6× slower here) and a 512 MiB tensor copy
    # (30.7 GB/s read + write). Efficiencies from the project's own benchmarks:
    # benchmarks/results/capture_mlp_post_h512_i2048_L8_cpu.json (2,443 tok/s × 66 MFLOP/token
    # = 161 GFLOP/s: 0.58 of the FP32 peak) and sae_train_standard_3584x14336_b256_cpu.json
    # (98 GFLOP/s achieved: 0.36). Model passes at the study's widths, startup and weight loading
    # from benchmarks/results/cpu_rates.json: a Qwen2 decoder layer at 2048/11008 over 256 tokens
    # reaches 54 GFLOP/s in BF16 (0.90 of the matmul peak) and 210 in FP32 (0.76); the worker's
    # imports take 4.0–5.7 s; safetensors reads 13.7–18.8 GB/s from the page cache (the lower kept).
    "cpu": Device("cpu", "this CPU (2 cores, 24 GB)", 60e9, 276e9, 30.7e9, 24 * GB,
                  "measured here with torch 2.13: 2048² matmul FP32 276 GFLOP/s, BF16 60 GFLOP/s; "
                  "512 MiB copy 30.7 GB/s; worker imports 5 s; weights load 13.7 GB/s (page cache)",
                  {"forward": 0.76, "forward_bf16": 0.90, "sae": 0.36}, 1.0, True,
                  "MEASURED on this CPU (benchmarks/results/cpu_rates.json and the SAE benchmark)", is_gpu=False,
                  load_bandwidth=13.7e9, startup_seconds=5.0),
}


class UnknownDeviceError(ValueError):
    """A device name the plan has no datasheet for."""


def device_named(name: str) -> Device:
    if name not in DEVICES:
        raise UnknownDeviceError(f"--device {name!r}: unknown device; known devices: {', '.join(DEVICES)}")
    return DEVICES[name]


# ---------------------------------------------------------------------------------------------
# Stated assumptions (marked in every printed plan)

ASSUMPTIONS = {
    "tokens_per_word": (1.0, "tokens per word or punctuation mark of a behaviour prompt (BPE vocabularies keep "
                             "common English words whole: 1.0 with the tiny and random models' tokenizer)"),
    "process_base_bytes": (0.5 * GB, "RSS of a worker besides its tensors (measured ~0.5 GB in the rehearsal's "
                                     "workers on this CPU)"),
    "cuda_context_host_bytes": (0.5 * GB, "host memory the CUDA context and its libraries add on a GPU node"),
    "load_bandwidth": (1.0 * GB, "bytes/s reading weights from the shared filesystem"),
    "startup_seconds": (30.0, "python + torch import and CUDA initialisation per job"),
    "init_params_per_second": (72e6, "weights drawn per second when a random model is built in BF16 (measured "
                                     "72–92M on this CPU, benchmarks/results/cpu_rates.json; the same on a GPU "
                                     "node's host)"),
    "save_bandwidth": (0.37e9, "bytes/s safetensors writes weights at (measured 0.37–0.42 GB/s on this CPU, "
                               "cpu_rates.json; the same on a GPU node)"),
    "sae_init_params_per_second": (153e6, "SAE parameters drawn per second (randn, row norms: measured on this "
                                          "CPU, cpu_rates.json; on a GPU node the draw runs on the host too)"),
    "first_touch_bandwidth": (4.3e9, "bytes/s of fresh host memory written the first time (page faults: an SAE's "
                                     "gradients and Adam moments on the CPU; measured here, cpu_rates.json)"),
    "sha256_bandwidth": (1.1e9, "bytes/s of sha256 (the weights' fingerprints; measured on this CPU)"),
    "dashboard_contexts_per_second": (28e3, "top contexts written per second after a dashboard's pass (columns, "
                                            "Neuronpedia JSON, Parquet; measured on this CPU, cpu_rates.json)"),
    "su_per_gpu_hour": (1.0, "CD3 service units per A100 GPU-hour: CD3 (CSD3 Ampere) accounts GPU jobs in "
                             "GPU-hours; no published SU rate was found, so 1 SU = 1 GPU-hour is ASSUMED"),
    "activation_factor": (12, "live [tokens, d_model]-sized tensors per layer in a forward with gradients"),
}

SPEC_TABLE = {"gpu_hours": 220.0, "hours_per_sae": "8–12",
              "note": "the spec's guess, before any measurement"}


def assumption(name: str) -> float:
    return float(ASSUMPTIONS[name][0])


# ---------------------------------------------------------------------------------------------
# Shapes


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    dtype_bytes: int
    """Bytes per weight in the dtype the study runs the model in."""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_params(self) -> int:
        kv = self.kv_heads * self.head_dim
        attention = self.hidden * self.hidden * 2 + self.hidden * kv * 2 + self.hidden + 2 * kv  # q, o, k, v + biases
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def params(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_params() + self.hidden

    def weight_bytes(self) -> float:
        return self.params() * self.dtype_bytes

    def forward_flops(self, tokens: float, context: float, through_layer: int | None = None,
                      logits: bool = True) -> float:
        """2 FLOPs per weight per token, attention scores/values (4·d·ctx per token per layer), and
        the vocabulary projection when the logits are needed."""
        layers = self.layers if through_layer is None else through_layer + 1
        per_token = layers * (2 * self.layer_params() + 4 * self.hidden * context)
        if logits:
            per_token += 2 * self.vocab * self.hidden
        return tokens * per_token

    def forward_bytes(self, batches: float, tokens: float, through_layer: int | None = None) -> float:
        """Each batch reads the weights once; activations stream through memory."""
        layers = self.layers if through_layer is None else through_layer + 1
        weights = layers * self.layer_params() * self.dtype_bytes + self.vocab * self.hidden * self.dtype_bytes
        return batches * weights + tokens * layers * (4 * self.hidden + 3 * self.intermediate) * self.dtype_bytes

    def forward_activation_bytes(self, batch_tokens: float, context: float, with_grad: bool,
                                 logits: bool = True) -> float:
        """Peak live activations of one batch: logits in FP32 over the full vocabulary (when the
        pass reaches them), attention scores of one layer, and with gradients every layer's saved
        tensors."""
        logits = batch_tokens * self.vocab * 4 if logits else 0.0
        scores = batch_tokens * context * self.heads * 4
        per_layer = batch_tokens * (self.hidden * assumption("activation_factor") + 3 * self.intermediate) * self.dtype_bytes
        return logits + scores + (per_layer * self.layers if with_grad else 2 * per_layer)


@dataclass(frozen=True)
class SaeShape:
    d_in: int
    d_sae: int
    batch: int
    steps: int
    topk: bool

    def params(self) -> int:
        return 2 * self.d_in * self.d_sae + self.d_in + self.d_sae

    def weight_bytes(self) -> float:
        return self.params() * 4  # FP32 weights, as trained and saved

    def step_flops(self) -> float:
        # encode + decode forward (4·B·d·D), backward twice that; a TopK decode from k latents
        # saves little on the encoder side, so the dense figure is kept.
        return 12.0 * self.batch * self.d_in * self.d_sae

    def step_bytes(self) -> float:
        # Adam reads param, grad, m, v and writes param, m, v (FP32) + the step's activations.
        return 7 * 4 * self.params() + 6 * 4 * self.batch * self.d_sae

    def training_bytes(self) -> float:
        """Weights + gradients + Adam's two moments (16 bytes per parameter) + one step's [B, d_sae]
        activations (pre-activation, activation, their gradients, mask)."""
        return 16 * self.params() + 6 * 4 * self.batch * self.d_sae


# ---------------------------------------------------------------------------------------------
# Phases


@dataclass
class PhaseEstimate:
    phase: str
    """The asset (and SLURM worker task) name."""
    jobs: int
    """SLURM jobs (array tasks) the phase runs as."""
    flops: float
    """Per job."""
    bytes_moved: float
    """Per job."""
    device_peak_bytes: float
    """Per job: on the GPU (on the CPU: the same as host)."""
    host_peak_bytes: float
    """Per job: the RSS SLURM's --mem must cover."""
    storage_bytes: float
    """Written by the whole phase."""
    compute_kind: str = "forward"
    """``forward`` (model dtype) or ``sae`` (FP32)."""
    uses_gpu: bool = True
    seconds: float = 0.0
    """Predicted wall time per job (filled by ``predict``)."""
    bound: str = ""
    notes: list[str] = field(default_factory=list)
    host_seconds: float = 0.0
    """Per job, beside the device work: time on the host CPU (drawing random weights, writing them)."""
    model_flops: float = 0.0
    """Per job, beside ``flops``: model passes inside a phase of another kind (an SAE job's held-out
    evaluation), at the model dtype's rate."""
    fp32_flops: float = 0.0
    """Per job, beside ``flops``: work that runs in FP32 whatever the model dtype (a dashboard's
    logit tables), at the FP32 peak."""

    @property
    def total_seconds(self) -> float:
        return self.seconds * self.jobs


def predict(phase: PhaseEstimate, device: Device, load_bytes: float, model_fp32: bool) -> PhaseEstimate:
    """Wall time = startup + weight load + max(FLOPs / (peak·eff), bytes / (bandwidth·eff)) + host
    work. Model passes run at the model dtype's peak (BF16 tensor cores, or FP32 for an FP32 model;
    on this CPU at the BF16 efficiency measured at the study's widths); SAE steps at the FP32 peak."""
    model_rate = (device.fp32_flops * device.compute_efficiency["forward"] if model_fp32 else
                  device.low_precision_flops * device.compute_efficiency.get("forward_bf16",
                                                                           device.compute_efficiency["forward"]))
    main_rate = device.fp32_flops * device.compute_efficiency["sae"] if phase.compute_kind == "sae" else model_rate
    compute = (phase.flops / main_rate + phase.model_flops / model_rate
               + phase.fp32_flops / (device.fp32_flops * device.compute_efficiency["forward"]))
    memory = phase.bytes_moved / (device.bandwidth * device.bandwidth_efficiency)
    phase.bound = "compute" if compute >= memory else "memory"
    phase.seconds = (device_startup(device) + load_bytes / (device.load_bandwidth or assumption("load_bandwidth"))
                     + max(compute, memory) + phase.host_seconds)
    return phase


def device_startup(device: Device) -> float:
    return device.startup_seconds if device.startup_seconds is not None else assumption("startup_seconds")


def slurm_time(seconds: float, factor: float, floor_seconds: int = 60) -> str:
    """A SLURM time limit covering ``seconds × factor``, rounded UP to whole minutes (SLURM's own
    grain), at least ``floor_seconds``: H:MM:00."""
    minutes = max(math.ceil(seconds * factor / 60), math.ceil(floor_seconds / 60), 1)
    return f"{minutes // 60}:{minutes % 60:02d}:00"


def slurm_mem(bytes_: float, factor: float) -> str:
    """A SLURM --mem covering ``bytes × factor``: whole GiB rounded up (SLURM's G is GiB), ≥ 1G."""
    return f"{max(1, math.ceil(bytes_ * factor / GIB))}G"


def human_bytes(value: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def human_seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.2f} h"
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def human_flops(value: float) -> str:
    for unit, size in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} FLOP"
