"""Sparse autoencoders in the SAELens on-disk format.

Tensors (SAELens names and shapes): ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``. Architectures, keyed by the cfg.json string:
  - ``standard`` (our config's ``relu``): f = ReLU((x − b_dec) W_enc + b_enc); trained with an L1
    penalty weighted by decoder-row norms.
  - ``topk``: keep the k largest pre-activations (ReLU'd), zero the rest; decoded from the k
    active rows only (an embedding-bag, not a dense matmul).
x̂ = f W_dec + b_dec in both. A directory written by ``save_sae`` loads with SAELens's
``SAE.load_from_disk`` and with ``load_sae`` here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

# Our config names the ReLU+L1 SAE "relu"; SAELens 6 calls that architecture "standard".
CONFIG_TO_SAELENS_ARCHITECTURE = {"relu": "standard", "topk": "topk"}
SAE_WEIGHTS_FILE = "sae_weights.safetensors"
SAE_CONFIG_FILE = "cfg.json"
SAELENS_FORMAT_VERSION = "6.0.0"  # the cfg.json schema we write (SAELens 6)


class SaeOutput(NamedTuple):
    x_hat: torch.Tensor
    """Reconstruction [batch, d_in]."""
    feature_acts: torch.Tensor
    """Feature activations [batch, d_sae] (dense; zeros where inactive)."""


@dataclass(frozen=True)
class SaeSpec:
    d_in: int
    d_sae: int
    architecture: str = "standard"
    """cfg.json architecture: "standard" or "topk"."""
    k: int | None = None
    """Active features per input (topk only)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """SAELens metadata: model_name, hook_name, context_size, prepend_bos, ... (+ our own keys)."""

    def __post_init__(self) -> None:
        if self.architecture not in ("standard", "topk"):
            raise ValueError(f"architecture {self.architecture!r}: choose 'standard' or 'topk'")
        if self.architecture == "topk" and not (self.k and 0 < self.k <= self.d_sae):
            raise ValueError(f"topk needs 0 < k <= d_sae, got k={self.k}, d_sae={self.d_sae}")


class SparseAutoencoder(nn.Module):
    def __init__(self, spec: SaeSpec, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.spec = spec
        d_in, d_sae = spec.d_in, spec.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, device=device))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, device=device))

    @torch.no_grad()
    def initialize(self, generator: torch.Generator, data_mean: torch.Tensor | None = None) -> None:
        """Unit-norm random decoder rows, encoder = decoder transpose, b_dec = data mean."""
        W_dec = torch.randn(self.W_dec.shape, generator=generator, device=self.W_dec.device)
        self.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.copy_(data_mean if data_mean is not None else torch.zeros_like(self.b_dec))

    @property
    def architecture(self) -> str:
        return self.spec.architecture

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        # (x − b_dec) W_enc + b_enc, with b_dec folded into the bias: b_dec's gradient is then a
        # vector-matrix product, not the [B, d_in] matmul that differentiating x − b_dec costs.
        bias = self.b_enc - self.b_dec @ self.W_enc
        if x.dim() == 2:
            return torch.addmm(bias, x, self.W_enc)  # [B, d_sae]
        return x @ self.W_enc + bias  # [..., d_sae]: callers that keep batch and position dims

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TopK only: (values [B, k], indices [B, k]) of the active features."""
        values, indices = self.pre_acts(x).topk(self.spec.k or 0, dim=-1, sorted=False)
        return F.relu(values), indices

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.architecture == "topk":
            values, indices = self.encode_sparse(x)
            return torch.zeros(*x.shape[:-1], self.spec.d_sae, dtype=values.dtype, device=x.device).scatter_(
                -1, indices, values
            )
        return F.relu(self.pre_acts(x))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return feature_acts @ self.W_dec + self.b_dec

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        # Sum of k decoder rows weighted by their activations: O(B·k·d_in) instead of O(B·d_sae·d_in).
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec

    def forward(self, x: torch.Tensor) -> SaeOutput:
        leading = x.shape[:-1]
        flat = x.reshape(-1, self.spec.d_in)  # [B·T, d_in]
        feature_acts = self.encode(flat)
        x_hat = self.decode(feature_acts)
        return SaeOutput(x_hat.reshape(*leading, -1), feature_acts.reshape(*leading, -1))


class _DecoderNormWeightedL1(torch.autograd.Function):
    """mean_b Σ_i f_bi ‖W_dec,i‖ with a hand-written backward: ∂/∂f = ‖W_dec,i‖/B (broadcast, never
    materialised here) and ∂/∂W_dec = (Σ_b f_bi / B) · W_dec,i / ‖W_dec,i‖, one pass over W_dec
    instead of autograd's norm backward (several [d_sae, d_in] temporaries and a masked fill)."""

    @staticmethod
    def forward(ctx, feature_acts: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
        norms = W_dec.norm(dim=1)  # [d_sae]
        mean_acts = feature_acts.sum(dim=0) / feature_acts.shape[0]  # [d_sae]
        ctx.save_for_backward(W_dec, norms, mean_acts)
        ctx.batch = feature_acts.shape[0]
        ctx.acts_shape = feature_acts.shape
        return mean_acts @ norms

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        W_dec, norms, mean_acts = ctx.saved_tensors
        grad_acts = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_acts = (grad * norms / ctx.batch).expand(ctx.acts_shape)
        if ctx.needs_input_grad[1]:
            scale = torch.where(norms > 0, grad * mean_acts / norms.clamp_min(1e-30), 0.0)
            grad_W = W_dec * scale[:, None]
        return grad_acts, grad_W


def decoder_norm_weighted_l1(feature_acts: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """The ReLU SAE's sparsity penalty, mean over the batch of Σ_i f_i ‖W_dec,i‖ (a 0-d tensor)."""
    return _DecoderNormWeightedL1.apply(feature_acts, W_dec)


def saelens_config(spec: SaeSpec) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "architecture": spec.architecture,
        "d_in": spec.d_in,
        "d_sae": spec.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "prepend_bos": False, **spec.metadata},
    }
    if spec.architecture == "topk":
        cfg["k"] = spec.k  # without it SAELens silently loads k=100
    return cfg


def save_sae(sae: SparseAutoencoder, directory: str | Path) -> None:
    """Write cfg.json + sae_weights.safetensors (FP32, contiguous) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in sae.state_dict().items()}
    save_file(tensors, directory / SAE_WEIGHTS_FILE)
    cfg = saelens_config(sae.spec)
    (directory / SAE_CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True, allow_nan=False))


def load_sae(directory: str | Path, device: torch.device | str = "cpu") -> SparseAutoencoder:
    directory = Path(directory)
    cfg = json.loads((directory / SAE_CONFIG_FILE).read_text())
    spec = SaeSpec(
        d_in=int(cfg["d_in"]),
        d_sae=int(cfg["d_sae"]),
        architecture=cfg["architecture"],
        k=cfg.get("k"),
        metadata=dict(cfg.get("metadata", {})),
    )
    sae = SparseAutoencoder(spec, device=device)
    tensors = load_file(directory / SAE_WEIGHTS_FILE, device=str(device))
    sae.load_state_dict(tensors)
    return sae


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """R² = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over a set of vectors [N, d]."""
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(dim=0, keepdim=True)).pow(2).sum()
    return float(1.0 - residual / total) if float(total) > 0 else math.nan
