"""Feature dashboards: what each SAE latent responds to and what it writes, in ONE streaming pass.

For every latent of one layer's SAE, over a stream of evaluation token windows:
  - its top-k activating contexts, each a window of tokens around the max-activating token with
    that latent's activation on every token of the window;
  - its activation density (fraction of real tokens where it fires, i.e. activation > 0), its
    mean (over firing tokens) and max activation, and the histogram of its firing activations
    (log-spaced bins fixed before the pass, since the max is known only at its end);
  - the output tokens its decoder direction promotes and suppresses: the direct logit effect
    W_U · (γ ⊙ d), where d is ``W_dec[latent]`` carried into the residual stream (for ``mlp_post``
    through ``down_proj``) and γ is the final norm's weight, the linear stand-in for the norm that
    SAEDashboard and Neuronpedia use for their logit tables, with the histogram of that effect over
    the whole vocabulary.

Memory is O(d_sae × k × context), never O(tokens): the top-k state is a fixed set of tensors
updated batch by batch (``TopContexts``), and the per-batch work is one [tokens, d_sae] matrix.
Ties are broken by stream order (the earlier token wins), so a dashboard is a deterministic
function of the windows: exactly the first k entries of a stable descending sort of all of the
latent's activations (what ``tests/test_dashboards.py`` checks against brute force).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from interp_assets.core.hooks import forward_until_recorded, get_hook_point, hook_module, recording
from interp_assets.core.sae import SparseAutoencoder

# Where the final norm sits in the HF classes hooks.py supports (same order as its decoder paths).
_FINAL_NORM_PATHS = ("model.norm", "model.language_model.norm", "language_model.model.norm")

DENSITY_HISTOGRAM_EDGES = tuple(x / 2 for x in range(-20, 1))
"""log10(density) bin edges of the per-layer histogram over latents: 1e-10 … 1 in half decades
(a latent firing on every token has log10 density 0); dead latents are counted apart."""

ACTIVATION_HISTOGRAM_EDGES = tuple(x / 8 for x in range(-32, 25))
"""log10(activation) bin edges of each latent's histogram of firing activations: 1e-4 … 1e3 in
eighth decades (56 bins; activations outside fall in the first or last bin)."""

LOGIT_HISTOGRAM_BINS = 40
"""Equal-width bins between a latent's least and greatest logit effect over the vocabulary."""

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""Token ids [batch, seq] (every position real), or (token ids, attention mask) for padded windows:
masked positions are neither counted nor eligible as contexts."""


@dataclass(frozen=True)
class DashboardSettings:
    top_k: int = 20
    """Contexts kept per latent."""
    context_before: int = 12
    """Tokens shown before the max-activating token (fewer at the start of a window)."""
    context_after: int = 4
    """Tokens shown after it."""
    n_logit_tokens: int = 10
    """Promoted and suppressed output tokens per latent."""
    logit_chunk: int = 1024
    """Latents per matmul of the logit tables ([chunk, vocab] floats at a time)."""

    @property
    def context_width(self) -> int:
        return self.context_before + 1 + self.context_after


class TopContexts:
    """The bounded streaming state: per latent the k best (activation, window, position) so far and
    their contexts. Shapes are fixed at construction, whatever the number of tokens streamed:
    ``values [d_sae, k]``, ``window``/``position [d_sae, k]``, ``context_tokens``/``context_acts
    [d_sae, k, context_width]``. Empty slots hold value −inf, window −1; tokens outside the window
    hold −1 with activation 0. Each latent's row is ordered by (value desc, stream order asc)."""

    def __init__(self, d_sae: int, settings: DashboardSettings, device: torch.device | str = "cpu") -> None:
        k, width = settings.top_k, settings.context_width
        self.settings = settings
        self.values = torch.full((d_sae, k), -math.inf, device=device)
        self.window = torch.full((d_sae, k), -1, dtype=torch.long, device=device)
        self.position = torch.full((d_sae, k), -1, dtype=torch.long, device=device)
        self.context_tokens = torch.full((d_sae, k, width), -1, dtype=torch.long, device=device)
        self.context_acts = torch.zeros((d_sae, k, width), device=device)
        self.fire_count = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.activation_sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.activation_histogram = torch.zeros((d_sae, len(ACTIVATION_HISTOGRAM_EDGES) - 1), dtype=torch.long,
                                                device=device)
        self._inner_edges = torch.tensor(ACTIVATION_HISTOGRAM_EDGES[1:-1], device=device)
        self.n_tokens = 0
        self.n_windows = 0

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(getattr(self, name).shape) for name in
                ("values", "window", "position", "context_tokens", "context_acts", "fire_count", "activation_sum",
                 "activation_histogram")}

    @torch.no_grad()
    def update(self, acts: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Fold one batch in: ``acts [B, T, d_sae]`` (the SAE's activations), ``token_ids [B, T]``,
        ``mask [B, T]`` (1 on real tokens; None: all real). Windows are numbered in stream order."""
        B, T, d_sae = acts.shape
        real = torch.ones((B, T), dtype=torch.bool, device=acts.device) if mask is None else mask.bool()
        flat = acts.reshape(B * T, d_sae).masked_fill(~real.reshape(B * T, 1), 0.0)  # [N, d_sae]
        firing = flat > 0
        self.fire_count += firing.sum(dim=0)
        self.activation_sum += flat.sum(dim=0, dtype=torch.float64)
        self.n_tokens += int(real.sum())
        rows, latents = firing.nonzero(as_tuple=True)
        bins = torch.bucketize(flat[rows, latents].log10(), self._inner_edges, right=True)
        n_bins = self.activation_histogram.shape[1]
        self.activation_histogram.view(-1).index_add_(0, latents * n_bins + bins, torch.ones_like(bins))

        values, index = _stable_top_k(flat, min(self.settings.top_k, B * T))  # [d_sae, kk], stream order on ties
        values = values.masked_fill(values <= 0, -math.inf)  # only firing tokens are contexts
        batch_row, position = index // T, index % T
        valid = torch.isfinite(values)
        tokens, context = self._contexts(acts, token_ids, real, batch_row, position)
        tokens = tokens.masked_fill(~valid[:, :, None], -1)
        context = context.masked_fill(~valid[:, :, None], 0.0)
        window = torch.where(valid, batch_row + self.n_windows, -1)
        position = torch.where(valid, position, -1)
        self.n_windows += B

        # State entries came earlier in the stream than any of this batch: a stable sort of
        # [state, batch] keeps (value desc, stream order asc).
        merged_values = torch.cat([self.values, values], dim=1)
        order = torch.sort(merged_values, dim=1, descending=True, stable=True).indices[:, : self.settings.top_k]
        self.values = merged_values.gather(1, order)
        self.window = torch.cat([self.window, window], dim=1).gather(1, order)
        self.position = torch.cat([self.position, position], dim=1).gather(1, order)
        wide = order[:, :, None].expand(-1, -1, self.settings.context_width)
        self.context_tokens = torch.cat([self.context_tokens, tokens], dim=1).gather(1, wide)
        self.context_acts = torch.cat([self.context_acts, context], dim=1).gather(1, wide)

    def _contexts(self, acts: torch.Tensor, token_ids: torch.Tensor, real: torch.Tensor,
                  batch_row: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and this latent's activations at ``position − before … position + after`` of each
        candidate's window: [d_sae, kk, width] each."""
        B, T, d_sae = acts.shape
        offsets = torch.arange(-self.settings.context_before, self.settings.context_after + 1, device=acts.device)
        where = position[:, :, None] + offsets  # [d_sae, kk, width]
        inside = (where >= 0) & (where < T)
        clamped = where.clamp(0, T - 1)
        rows = batch_row[:, :, None].expand_as(clamped)
        inside &= real[rows, clamped]
        tokens = token_ids.to(acts.device)[rows, clamped].masked_fill(~inside, -1)
        latent = torch.arange(d_sae, device=acts.device)[:, None, None]
        context = acts.reshape(-1)[((rows * T + clamped) * d_sae + latent)].masked_fill(~inside, 0.0)
        return tokens, context


def _stable_top_k(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of ``flat [N, d]``, the k largest values and their row indices ([d, k] each),
    ordered by (value desc, row asc): the first k of a stable descending sort, at the cost of a
    top-k (a full sort only for the columns with a tie across the k-th place)."""
    values, index = flat.topk(k, dim=0)  # [k, d], ties in no defined order
    values, index = values.T.contiguous(), index.T.contiguous()
    if k < flat.shape[0]:
        kth = values[:, -1]
        tied = ((flat >= kth).sum(dim=0) > k) & (kth > 0)  # equal values beyond the k-th place
        columns = tied.nonzero().flatten()
        if columns.numel():
            sort = torch.sort(flat[:, columns], dim=0, descending=True, stable=True)
            values[columns], index[columns] = sort.values[:k].T, sort.indices[:k].T
    by_row = index.argsort(dim=1)  # rows ascending, then a stable sort by value
    values, index = values.gather(1, by_row), index.gather(1, by_row)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, by_value), index.gather(1, by_value)


def _batches(batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, tuple):
        return batch[0], batch[1]
    return batch, None


@torch.no_grad()
def collect_top_contexts(
    model,  # noqa: ANN001
    sae: SparseAutoencoder,
    layer: int,
    hook_point: str,
    batches: Iterable[Batch],
    settings: DashboardSettings,
    log: Callable[[str], None] = lambda message: None,
) -> TopContexts:
    """ONE streaming pass: run the model up to ``layer`` on each batch, encode the hook point's
    activation with the SAE, fold the result into the bounded state."""
    device = next(model.parameters()).device
    sae = sae.to(device)
    state = TopContexts(sae.spec.d_sae, settings, device)
    with recording(model, [layer], hook_point, stop_after_deepest=True) as records:
        for batch in batches:
            token_ids, mask = _batches(batch)
            token_ids = token_ids.to(device)
            mask = None if mask is None else mask.to(device)
            forward_until_recorded(model, input_ids=token_ids, attention_mask=mask, use_cache=False)
            x = records[layer].float()  # [B, T, d_in]
            acts = sae.encode(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:2], -1)
            state.update(acts, token_ids, mask)
    log(f"dashboards layer {layer}: {state.n_tokens} tokens in {state.n_windows} windows")
    return state


def final_norm_weight(model) -> torch.Tensor:  # noqa: ANN001
    for path in _FINAL_NORM_PATHS:
        try:
            return model.get_submodule(path).weight
        except AttributeError:
            continue
    raise ValueError(f"{type(model).__name__}: no final norm at {_FINAL_NORM_PATHS}")


@torch.no_grad()
def decoder_logit_effects(model, sae: SparseAutoencoder, layer: int, hook_point: str,  # noqa: ANN001
                          settings: DashboardSettings, latents: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Top and bottom ``n_logit_tokens`` of W_U · (γ ⊙ d) per latent: ``promoted_ids``,
    ``promoted_logits``, ``suppressed_ids``, ``suppressed_logits`` ([d_sae, n] each, suppressed
    most negative first), and the histogram of the effect over the whole vocabulary:
    ``histogram_heights`` (counts) and ``histogram_values`` (bin centres), [d_sae,
    LOGIT_HISTOGRAM_BINS] each. Computed ``logit_chunk`` latents at a time: never [d_sae, vocab].
    ``latents`` (indices) limits the tables to those latents: the others' rows are zeros and
    ``has_logits`` ([d_sae] bool) says which rows hold a table. The cost is d_sae × d_model ×
    vocab multiply-adds (27 TFLOP for a 44,032-latent SAE of Qwen2.5-3B): seconds on a GPU,
    minutes on a CPU."""
    device = next(model.parameters()).device
    unembed = model.get_output_embeddings().weight.float()  # [vocab, d_model]
    gamma = final_norm_weight(model).float()  # [d_model]
    point = get_hook_point(hook_point)
    into_residual = hook_module(model, layer, hook_point).weight.float() if point.side == "input" else None
    n = min(settings.n_logit_tokens, unembed.shape[0])
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in
                                           ("promoted_ids", "promoted_logits", "suppressed_ids", "suppressed_logits",
                                            "histogram_heights", "histogram_values")}
    d_sae = sae.W_dec.shape[0]
    chosen = torch.arange(d_sae) if latents is None else torch.as_tensor(latents, dtype=torch.long).unique()
    W_dec = sae.W_dec.detach()[chosen]
    for start in range(0, W_dec.shape[0], settings.logit_chunk):
        direction = W_dec[start : start + settings.logit_chunk].to(device).float()  # [c, d_in]
        if into_residual is not None:  # mlp_post: d_mlp → d_model through down_proj (its bias is no direction)
            direction = direction @ into_residual.T
        logits = (direction * gamma) @ unembed.T  # [c, vocab]
        top = logits.topk(n, dim=1)
        bottom = logits.topk(n, dim=1, largest=False)
        parts["promoted_ids"].append(top.indices.cpu())
        parts["promoted_logits"].append(top.values.cpu())
        parts["suppressed_ids"].append(bottom.indices.cpu())
        parts["suppressed_logits"].append(bottom.values.cpu())
        heights, centres = _row_histograms(logits, LOGIT_HISTOGRAM_BINS)
        parts["histogram_heights"].append(heights.cpu())
        parts["histogram_values"].append(centres.cpu())
    tables = {}
    for key, chunks in parts.items():
        rows = torch.cat(chunks) if chunks else torch.zeros((0, n if "histogram" not in key else LOGIT_HISTOGRAM_BINS))
        full = torch.zeros((d_sae, rows.shape[1]), dtype=rows.dtype)
        full[chosen] = rows
        tables[key] = full
    tables["has_logits"] = torch.zeros(d_sae, dtype=torch.bool)
    tables["has_logits"][chosen] = True
    return tables


def _row_histograms(values: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``values [rows, n]``: counts in ``n_bins`` equal bins from the row's min to its
    max (the max in the last bin, as numpy.histogram does) and the bins' centres."""
    low, high = values.min(dim=1, keepdim=True).values, values.max(dim=1, keepdim=True).values
    width = (high - low).clamp_min(torch.finfo(values.dtype).tiny) / n_bins
    index = ((values - low) / width).long().clamp_(0, n_bins - 1)
    heights = torch.zeros((values.shape[0], n_bins), dtype=torch.long, device=values.device)
    heights.scatter_add_(1, index, torch.ones_like(index))
    centres = low + width * (torch.arange(n_bins, device=values.device) + 0.5)
    return heights, centres


def activation_histogram_centres() -> list[float]:
    """The geometric centre of each bin of ``ACTIVATION_HISTOGRAM_EDGES``."""
    edges = ACTIVATION_HISTOGRAM_EDGES
    return [10 ** ((low + high) / 2) for low, high in zip(edges, edges[1:])]


def density_histogram(fire_count: Sequence[int], n_tokens: int) -> dict[str, Any]:
    """The layer's log10-density histogram over latents: ``edges``, ``counts`` per bin, ``dead``
    (never fired on these tokens)."""
    edges = list(DENSITY_HISTOGRAM_EDGES)
    counts = [0] * (len(edges) - 1)
    dead = 0
    for fired in fire_count:
        if fired == 0 or n_tokens == 0:
            dead += 1
            continue
        log_density = math.log10(fired / n_tokens)
        index = next((i for i in range(len(counts)) if log_density < edges[i + 1]), len(counts) - 1)
        counts[max(index, 0)] += 1
    return {"edges": edges, "counts": counts, "dead": dead, "n_tokens": n_tokens}


def latent_rows(state: TopContexts, logits: dict[str, torch.Tensor], decode: Callable[[int], str]) -> list[dict[str, Any]]:
    """One plain-Python record per latent (the ``latents`` table and ``feature_label``'s input)."""
    max_values = state.values[:, 0].cpu().tolist()
    counts = state.fire_count.cpu().tolist()
    sums = state.activation_sum.cpu().tolist()
    positions = state.position.cpu().tolist()
    max_tokens = state.context_tokens[:, :, state.settings.context_before].cpu().tolist()
    promoted, promoted_logits = logits["promoted_ids"].tolist(), logits["promoted_logits"].tolist()
    suppressed, suppressed_logits = logits["suppressed_ids"].tolist(), logits["suppressed_logits"].tolist()
    activation_heights = state.activation_histogram.cpu().tolist()
    logit_heights, logit_values = logits["histogram_heights"].tolist(), logits["histogram_values"].tolist()
    has_logits = logits["has_logits"].tolist()
    rows = []
    for latent, fired in enumerate(counts):
        top = [token for token, where in zip(max_tokens[latent], positions[latent], strict=True) if where >= 0]
        rows.append({
            "latent": latent,
            "n_firing": fired,
            "density": fired / state.n_tokens if state.n_tokens else 0.0,
            "mean_activation": sums[latent] / fired if fired else 0.0,
            "max_activation": max_values[latent] if fired else 0.0,
            "n_contexts": len(top),
            "top_activating_tokens": list(dict.fromkeys(decode(token) for token in top)),
            "activation_histogram": activation_heights[latent],
            **({"promoted_tokens": [decode(token) for token in promoted[latent]],
                "promoted_logits": promoted_logits[latent],
                "suppressed_tokens": [decode(token) for token in suppressed[latent]],
                "suppressed_logits": suppressed_logits[latent],
                "logit_histogram_heights": logit_heights[latent],
                "logit_histogram_values": logit_values[latent]} if has_logits[latent] else
               {"promoted_tokens": [], "promoted_logits": [], "suppressed_tokens": [], "suppressed_logits": [],
                "logit_histogram_heights": [], "logit_histogram_values": []}),
        })
        rows[-1]["label"] = feature_label(rows[-1])
    return rows


def context_rows(state: TopContexts, decode: Callable[[int], str]) -> dict[str, list[Any]]:
    """The kept contexts as columns (one entry per (latent, rank), latents ascending, ranks
    ascending): the context's tokens and activations cropped to the window's real tokens, the index
    of the max-activating token inside it, and ``rounded``: the activations to 3 decimals, as the
    Neuronpedia JSON stores them. Built from the state's tensors in bulk: a 44,032-latent SAE keeps
    ~880k contexts, too many for a Python loop per context."""
    valid = state.position >= 0  # empty slots come last in each latent's row
    latent, rank = valid.nonzero(as_tuple=True)
    tokens = state.context_tokens[latent, rank].cpu()  # [n, width]
    acts = state.context_acts[latent, rank].cpu()
    inside = tokens >= 0
    width = tokens.shape[1]
    first = inside.int().argmax(dim=1)  # every kept context holds its max token, so one is inside
    last = width - inside.flip(1).int().argmax(dim=1)
    spans = list(zip(first.tolist(), last.tolist(), strict=True))
    vocabulary = {token: decode(token) for token in tokens[inside].unique().tolist()}
    token_ids = [row[a:b] for row, (a, b) in zip(tokens.tolist(), spans, strict=True)]
    return {
        "latent": latent.tolist(),
        "rank": rank.tolist(),
        "activation": state.values[latent, rank].tolist(),
        "window": state.window[latent, rank].tolist(),
        "position": state.position[latent, rank].tolist(),
        "max_token_index": (state.settings.context_before - first).tolist(),
        "token_ids": token_ids,
        "tokens": [[vocabulary[token] for token in row] for row in token_ids],
        "activations": [row[a:b] for row, (a, b) in zip(acts.tolist(), spans, strict=True)],
        "rounded": [row[a:b] for row, (a, b) in zip(torch.round(acts.double(), decimals=3).tolist(), spans, strict=True)],
    }


def contexts_by_latent(contexts: dict[str, list[Any]]) -> dict[int, list[int]]:
    """Row indices of each latent's contexts in ``context_rows``' columns, in rank order."""
    latents, ranks = contexts["latent"], contexts["rank"]
    rows: dict[int, list[int]] = {}
    for index in sorted(range(len(latents)), key=lambda i: (latents[i], ranks[i])):
        rows.setdefault(latents[index], []).append(index)
    return rows


def feature_label(dashboard_row: dict[str, Any], max_tokens: int = 3, max_chars: int = 60) -> str:
    """A short label for a latent from its dashboard row (a ``latents`` table row): the distinct
    tokens it fires most on and the tokens it promotes most, e.g. ``' Mary'/' John' → ' to'``.
    Meant as an attribution-graph node's ``clerp``; ``dead`` for a latent that never fired."""
    def show(tokens: Sequence[str]) -> str:
        return "/".join(repr(token) for token in list(tokens)[:max_tokens])

    if not dashboard_row.get("n_firing"):
        return "dead"
    label = show(dashboard_row["top_activating_tokens"])
    if dashboard_row["promoted_tokens"]:  # no logit table: dashboards.logit_latents left it out
        label += f" → {show(dashboard_row['promoted_tokens'])}"
    return label if len(label) <= max_chars else label[: max_chars - 1] + "…"
