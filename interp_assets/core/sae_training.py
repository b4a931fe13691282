"""SAE training loop, readable top to bottom (after nanoGPT's train.py).

The trainer knows nothing of Dagster, SLURM or storage URLs: it takes a data stream and three
callbacks (``load_checkpoint``, ``save_checkpoint``, ``log``). A checkpoint holds everything the
next step depends on (weights, Adam state, step, data position, dead-feature counters, RNG state,
metric history, config fingerprint), so a resumed run ends with the same bytes as one that was
never interrupted.

Losses:
  - standard (ReLU): ‖x − x̂‖² + λ_t · Σ_i f_i ‖W_dec,i‖, with λ warmed up linearly
    (Anthropic's April 2024 update: the decoder-norm weight makes shrinking W_dec no escape).
  - topk: ‖x − x̂‖² + α · AuxK, where AuxK reconstructs the residual error from the top-k_aux
    *dead* latents (Gao et al. 2024) so they get gradient; decoder rows are kept unit-norm.
LR: linear warm-up, constant, linear decay to 0 over the last ``lr_decay_steps``.
Inputs are scaled by one scalar so that their mean norm is √d_in (SAELens's
"expected_average_only_in"), which makes λ mean the same at every width and layer; the scale is
folded into the weights at the end, so the saved SAE takes raw activations.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from interp_assets.core.progress import Progress
from interp_assets.core.sae import SaeSpec, SparseAutoencoder, decoder_norm_weighted_l1, explained_variance
from interp_assets.core.sae_data import DataPosition, ShuffledBatches


# Bump when the training maths changes: finished SAEs and checkpoints of older versions are redone.
# 2: b_dec folded into the encoder bias, a hand-written decoder-norm L1 backward, AuxK sized to the
#    dead latents on CPU (same maths, different rounding: a version-1 checkpoint would not resume
#    bit-identically). 3: the ReLU step's gradients written by hand into kept buffers, a dense
#    AuxK decode when many latents are dead, the parallel-gradient removal in place (same maths again).
TRAINER_VERSION = 3


@dataclass(frozen=True)
class TrainerConfig:
    """How one SAE is trained. No defaults here: the experiment config's ``sae`` section is their
    one home (``SaeSection.trainer_config()`` builds this), so the two cannot disagree."""

    architecture: str
    """cfg.json architecture: standard (ReLU + L1) or topk."""
    expansion_factor: int
    k: int
    batch_size: int
    steps: int
    lr: float
    lr_warmup_steps: int
    lr_decay_steps: int
    l1_coefficient: float
    l1_warmup_steps: int
    aux_k_coefficient: float
    dead_window_steps: int
    """A latent that has not fired for this many steps counts as dead (and feeds AuxK)."""
    grad_clip: float
    checkpoint_every: int
    log_every: int
    seed: int

    def fingerprint(self, data_fingerprint: str) -> str:
        """Identifies a training run; a checkpoint from another config or data is never resumed."""
        payload = json.dumps(
            {**asdict(self), "log_every": None, "data": data_fingerprint, "trainer_version": TRAINER_VERSION},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class TrainingResult:
    sae: SparseAutoencoder
    history: list[dict[str, float]]
    resumed_from_step: int
    seconds: float


def lr_at(step: int, config: TrainerConfig) -> float:
    if config.lr_warmup_steps and step < config.lr_warmup_steps:
        return config.lr * (step + 1) / config.lr_warmup_steps
    decay_start = config.steps - config.lr_decay_steps
    if config.lr_decay_steps and step >= decay_start:
        return config.lr * max(0.0, (config.steps - step) / config.lr_decay_steps)
    return config.lr


def l1_at(step: int, config: TrainerConfig) -> float:
    if config.l1_warmup_steps and step < config.l1_warmup_steps:
        return config.l1_coefficient * (step + 1) / config.l1_warmup_steps
    return config.l1_coefficient


def _make_optimizer(sae: SparseAutoencoder, config: TrainerConfig) -> torch.optim.Adam:
    # fused Adam touches each byte of parameters and state once per step: the largest single win
    # on CPU at SAE shapes, where Adam otherwise dominates the step.
    try:
        return torch.optim.Adam(sae.parameters(), lr=config.lr, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(sae.parameters(), lr=config.lr, betas=(0.9, 0.999), foreach=True)


def _losses(
    sae: SparseAutoencoder, x: torch.Tensor, config: TrainerConfig, l1: float, dead: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Return (loss, named terms as 0-d tensors, fired mask [d_sae])."""
    if sae.architecture == "topk":
        pre = sae.pre_acts(x)  # [B, d_sae], shared by the TopK and the AuxK selections
        values, indices = pre.topk(sae.spec.k or 0, dim=-1, sorted=False)  # [B, k]
        values = torch.relu(values)
        x_hat = sae.decode_sparse(values, indices)
        error = x - x_hat
        mse = error.pow(2).sum(dim=-1).mean()
        fired = torch.zeros(sae.spec.d_sae, device=x.device).index_add_(
            0, indices.flatten(), (values > 0).flatten().float()
        ) > 0  # scatter, not boolean indexing: no host sync
        l0 = (values > 0).sum(dim=-1).float().mean()
        # AuxK: the dead latents' top pre-activations try to explain what the live ones missed.
        k_aux = min(x.shape[-1] // 2, sae.spec.d_sae)
        if x.device.type == "cpu":
            # A host read is free on CPU: select no more latents than are dead (the others come
            # out -inf and weigh 0) and skip AuxK when none is. On a GPU the selection stays
            # fixed-size, so that the step needs no host sync.
            k_aux = min(k_aux, int(dead.sum()))
        if k_aux:
            aux_values, aux_indices = pre.masked_fill(~dead, -math.inf).topk(k_aux, dim=-1, sorted=False)
            aux_values = torch.where(torch.isfinite(aux_values), torch.relu(aux_values), 0.0)
            if 16 * k_aux > sae.spec.d_sae:
                # Over ~6 % of the latents, one dense matmul (and two in backward) beats gathering
                # B·k_aux decoder rows, whose per-sample-weight backward is slow on CPU.
                error_hat = torch.zeros_like(pre).scatter(-1, aux_indices, aux_values) @ sae.W_dec
            else:
                error_hat = torch.nn.functional.embedding_bag(
                    aux_indices, sae.W_dec, per_sample_weights=aux_values, mode="sum"
                )
            total_var = (error - error.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-12)
            aux = (error_hat - error.detach()).pow(2).sum(dim=-1).mean() / total_var.detach()
            aux = torch.where(dead.any(), aux, torch.zeros_like(aux))
        else:
            aux = mse.new_zeros(())
        loss = mse + config.aux_k_coefficient * aux
        terms = {"losses/mse": mse, "losses/aux_k": aux, "metrics/l0": l0}
    else:
        feature_acts = sae.encode(x)  # [B, d_sae]
        x_hat = sae.decode(feature_acts)
        mse = (x - x_hat).pow(2).sum(dim=-1).mean()
        sparsity = decoder_norm_weighted_l1(feature_acts, sae.W_dec)  # mean_b Σ_i f_bi ‖W_dec,i‖
        loss = mse + l1 * sparsity
        fired = (feature_acts > 0).any(dim=0)
        terms = {"losses/mse": mse, "losses/l1": sparsity, "metrics/l0": (feature_acts > 0).sum(-1).float().mean()}
    total = (x - x.mean(dim=0)).pow(2).sum(dim=-1).mean()
    terms["metrics/explained_variance"] = 1 - mse / total.clamp_min(1e-12)
    terms["losses/overall"] = loss
    return loss, terms, fired


@torch.no_grad()
def _standard_step_gradients(
    sae: SparseAutoencoder, x: torch.Tensor, l1: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The ReLU SAE's loss terms and gradients written out by hand (the maths of ``_losses`` +
    ``backward``), into ``.grad`` buffers kept from step to step. Without an autograd graph, no
    fresh [d_sae, d_in] gradient is allocated (and page-faulted) per step, and the L1 term's
    decoder gradient joins the matmul's in place. Returns (named terms, fired mask [d_sae]).

    With e = x̂ − x, g = 2e/B, n_i = ‖W_dec,i‖, h = (g W_decᵀ + λ n/B) ⊙ [pre > 0]:
    ∇W_dec = fᵀg + λ (Σ_b f_bi / B) W_dec,i / n_i,  ∇W_enc = (x − b_dec)ᵀh,  ∇b_enc = Σ_b h,
    ∇b_dec = Σ_b g − W_enc Σ_b h."""
    batch = x.shape[0]
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    centred = x - b_dec  # [B, d_in]
    pre = torch.addmm(b_enc, centred, W_enc)  # [B, d_sae]
    feature_acts = torch.relu(pre)
    norms = W_dec.norm(dim=1)  # [d_sae]
    error = torch.addmm(b_dec, feature_acts, W_dec).sub_(x)  # x̂ − x, [B, d_in]
    mse = error.pow(2).sum(dim=-1).mean()
    mean_acts = feature_acts.sum(dim=0) / batch  # [d_sae]
    sparsity = mean_acts @ norms
    grad_out = error * (2.0 / batch)  # ∂loss/∂x̂
    grad_pre = torch.addmm(norms * (l1 / batch), grad_out, W_dec.T).masked_fill_(pre <= 0, 0.0)
    for param in (W_enc, b_enc, W_dec, b_dec):
        if param.grad is None:
            param.grad = torch.empty_like(param)
    torch.mm(feature_acts.T, grad_out, out=W_dec.grad)
    W_dec.grad.addcmul_(W_dec, torch.where(norms > 0, l1 * mean_acts / norms.clamp_min(1e-30), 0.0)[:, None])
    torch.mm(centred.T, grad_pre, out=W_enc.grad)
    grad_b_enc = grad_pre.sum(dim=0)
    b_enc.grad.copy_(grad_b_enc)
    torch.sub(grad_out.sum(dim=0), W_enc @ grad_b_enc, out=b_dec.grad)
    total = (x - x.mean(dim=0)).pow(2).sum(dim=-1).mean()
    terms = {
        "losses/mse": mse,
        "losses/l1": sparsity,
        "metrics/l0": (feature_acts > 0).sum(-1).float().mean(),
        "metrics/explained_variance": 1 - mse / total.clamp_min(1e-12),
        "losses/overall": mse + l1 * sparsity,
    }
    return terms, (feature_acts > 0).any(dim=0)


@torch.no_grad()
def _unit_norm_decoder(sae: SparseAutoencoder) -> None:
    sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))


@torch.no_grad()
def _remove_parallel_gradient(sae: SparseAutoencoder) -> None:
    # With unit-norm rows, the gradient component along each row only changes its norm, which
    # the renormalisation undoes; removing it keeps Adam's statistics meaningful.
    if sae.W_dec.grad is None:
        return
    # g −= (g·r) r with r = w/‖w‖, as g −= ((g·w)/‖w‖²) w: two passes over [d_sae, d_in], no temporaries.
    W_dec, grad = sae.W_dec, sae.W_dec.grad
    along = torch.einsum("ij,ij->i", grad, W_dec) / W_dec.norm(dim=1).clamp_min(1e-8).square()
    grad.addcmul_(W_dec, along.neg_()[:, None])


def train_sae(
    batches: ShuffledBatches,
    config: TrainerConfig,
    *,
    data_fingerprint: str,
    metadata: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    load_checkpoint: Callable[[], bytes | None] = lambda: None,
    save_checkpoint: Callable[[bytes], None] = lambda blob: None,
    log: Callable[[str], None] = lambda message: None,
    eval_vectors: torch.Tensor | None = None,
    checkpoint_requested: Callable[[], bool] = lambda: False,
) -> TrainingResult:
    """Train one SAE on ``batches``; resume from ``load_checkpoint()`` when it matches this run.
    ``checkpoint_requested()`` True (e.g. SLURM's warning signal before a time limit) saves a
    checkpoint after the current step, on top of the regular ``checkpoint_every``."""
    device = torch.device(device)
    d_in = batches.data.d_in
    spec = SaeSpec(
        d_in=d_in,
        d_sae=d_in * config.expansion_factor,
        architecture=config.architecture,
        k=config.k if config.architecture == "topk" else None,
        metadata=metadata or {},
    )
    fingerprint = config.fingerprint(data_fingerprint)
    sae = SparseAutoencoder(spec, device=device)
    optimizer = _make_optimizer(sae, config)
    steps_since_fired = torch.zeros(spec.d_sae, dtype=torch.long, device=device)
    history: list[dict[str, float]] = []
    step, position = 0, DataPosition()
    scale = torch.ones((), device=device)

    # ---- resume or initialise -----------------------------------------------------------
    state = _read_checkpoint(load_checkpoint, fingerprint, log)
    if state is not None:
        sae.load_state_dict(state["sae"])
        optimizer.load_state_dict(state["optimizer"])
        steps_since_fired.copy_(state["steps_since_fired"])
        history = state["history"]
        step, position = state["step"], DataPosition(*state["position"])
        scale = state["scale"].to(device)
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        log(f"resumed from the checkpoint at step {step}/{config.steps}")
    else:
        generator = torch.Generator().manual_seed(config.seed)
        sample = batches.data.head(min(batches.data.n_vectors, 65_536)).float()
        scale = (math.sqrt(d_in) / sample.norm(dim=1).mean().clamp_min(1e-12)).to(device)
        sae.initialize(generator, data_mean=(sample.mean(dim=0) * scale.cpu()).to(device))
        torch.manual_seed(config.seed)
    resumed_from = step
    # Every log interval is logged (the curve's points); the progress line adds % and ETA to it.
    progress = Progress(config.steps, log, start=resumed_from)

    # ---- the loop ------------------------------------------------------------------------
    started, window_start = time.perf_counter(), time.perf_counter()
    stream = batches.iterate(position)
    while step < config.steps:
        raw, position = next(stream)
        x = raw.to(device, torch.float32, non_blocking=True) * scale  # [B, d_in]; stored BF16, trained FP32
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        dead = steps_since_fired >= config.dead_window_steps
        if sae.architecture == "standard":
            terms, fired = _standard_step_gradients(sae, x, l1_at(step, config))  # overwrites .grad
        else:
            loss, terms, fired = _losses(sae, x, config, l1_at(step, config), dead)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if sae.architecture == "topk":
            _remove_parallel_gradient(sae)
        torch.nn.utils.clip_grad_norm_(sae.parameters(), config.grad_clip)
        optimizer.step()
        if sae.architecture == "topk":
            _unit_norm_decoder(sae)
        steps_since_fired = torch.where(fired, 0, steps_since_fired + 1)
        step += 1

        if step % config.log_every == 0 or step == config.steps:
            # The only host sync of the loop, once per log interval.
            now = time.perf_counter()
            record = {name: float(value.detach()) for name, value in terms.items()}
            record.update(
                step=step,
                lr=lr_at(step - 1, config),
                **{"sparsity/dead_fraction": float((steps_since_fired >= config.dead_window_steps).float().mean())},
                **{"perf/steps_per_s": config.log_every / max(now - window_start, 1e-9)},
            )
            window_start = now
            history.append(record)
            progress.update(
                step,
                f"loss {record['losses/overall']:.4g} "
                f"R² {record['metrics/explained_variance']:.3f} L0 {record['metrics/l0']:.1f} "
                f"dead {record['sparsity/dead_fraction']:.3f} {record['perf/steps_per_s']:.1f} steps/s",
                force=True,
            )
        if (step % config.checkpoint_every == 0 or checkpoint_requested()) and step < config.steps:
            save_checkpoint(
                _checkpoint_bytes(sae, optimizer, step, position, steps_since_fired, history, fingerprint, scale)
            )

    fold_input_scale(sae, float(scale))
    if eval_vectors is not None and len(eval_vectors):
        history[-1]["eval/explained_variance"] = evaluate_explained_variance(sae, eval_vectors, device)
    return TrainingResult(sae=sae, history=history, resumed_from_step=resumed_from, seconds=time.perf_counter() - started)


@torch.no_grad()
def fold_input_scale(sae: SparseAutoencoder, scale: float) -> None:
    """Make an SAE trained on s·x take x. ReLU and TopK commute with s > 0, so dividing both
    biases by s gives features f(x) = f'(s·x)/s and x̂(x) = x̂'(s·x)/s, weights (and unit-norm
    decoder rows) unchanged."""
    sae.b_enc.div_(scale)
    sae.b_dec.div_(scale)


@torch.no_grad()
def evaluate_explained_variance(sae: SparseAutoencoder, vectors: torch.Tensor, device: torch.device | str) -> float:
    x = vectors.to(device, torch.float32)
    x_hat = torch.cat([sae(x[i : i + 4096]).x_hat for i in range(0, x.shape[0], 4096)])
    return explained_variance(x, x_hat)


def _checkpoint_bytes(
    sae: SparseAutoencoder,
    optimizer: torch.optim.Optimizer,
    step: int,
    position: DataPosition,
    steps_since_fired: torch.Tensor,
    history: list[dict[str, float]],
    fingerprint: str,
    scale: torch.Tensor,
) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "fingerprint": fingerprint,
            "sae": sae.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "position": position.as_list(),
            "steps_since_fired": steps_since_fired,
            "history": history,
            "scale": scale.cpu(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        },
        buffer,
    )
    return buffer.getvalue()


def _read_checkpoint(load: Callable[[], bytes | None], fingerprint: str, log: Callable[[str], None]) -> dict | None:
    blob = load()
    if blob is None:
        return None
    try:
        # weights_only: a checkpoint is data, never code.
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file means: start over, loudly
        log(f"WARNING: the checkpoint is unreadable ({type(error).__name__}: {error}); training restarts from step 0")
        return None
    if state.get("fingerprint") != fingerprint:
        log("WARNING: the checkpoint belongs to another config or data; training restarts from step 0")
        return None
    return state


def checkpoint_step(blob: bytes | None, fingerprint: str) -> int | None:
    """The step a checkpoint was saved at; None when it is absent, unreadable or another run's."""
    state = _read_checkpoint(lambda: blob, fingerprint, log=lambda message: None)
    return None if state is None else int(state["step"])
