"""Causal interventions: feature ablation, activation patching, resample ablation, faithfulness.

Every experiment edits the model's activations at hook points during a forward pass and reads
the behaviour metric (logit difference target − foil at the last token) per prompt. One table
row per experiment reports, over its prompts: mean LD clean / corrupted / after the intervention,
the normalised recovery (LD − LD_corrupt) / (LD_clean − LD_corrupt) with a bootstrap 95 % CI, and
the KL divergence of the next-token distribution from the clean run's.

- feature ablation (clean run): the graph's top feature nodes, split by rank into groups, set to
  zero or to their mean over the prompts; recovery 1 = nothing lost, 0 = as if corrupted.
- activation patching (corrupted run): the clean activation at one layer × position (``raw``),
  or only the SAE features there with the corrupted error term kept (``sae_features``);
  recovery 1 = fully restored. Controls: patching nothing (0) and patching the last layer's
  residual stream at every position (exactly 1).
- resample ablation (clean run): a group's features take their values on another prompt of the
  same length, averaged over many draws.
- circuit scores for faithfulness (Marks et al.): everything at the key layers outside C is
  mean-ablated (``circuit_lds``); the statistics over them are in circuit_stats.py.

Experiments are deterministic (seeds derive from their ids), so a rerun that skips finished
experiments gives the same table. Plain PyTorch: no dagster.

One module on purpose (about 500 lines): every experiment family runs through the same hooked
forward pass and metric (``InterventionRunner``); split, each family would re-build them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from interp_assets.core.hooks import forward_until_recorded, hooked, recording
from interp_assets.core.prompt_pairs import PairBatch, PromptPairs, last_token_logits, logit_diff, run_logits
from interp_assets.core.sae import SparseAutoencoder

NodeRef = tuple[int, int, int]
"""(layer, offset from the end, feature); feature −1 is the layer's error term at that offset."""

ALL_POSITIONS = 0
"""``Experiment.offset`` value meaning every position of the prompt."""


@dataclass(frozen=True)
class Experiment:
    id: str
    family: str
    variant: str
    prompt_set: str
    """"test" (clean runs) or "patching" (corrupted runs of the first N test pairs)."""
    layer: int = -1
    offset: int = ALL_POSITIONS
    group: int = -1
    nodes: tuple[NodeRef, ...] = ()
    samples: int = 1


@dataclass
class ExperimentResult:
    ld: torch.Tensor
    """[n_prompts] LD after the intervention (averaged over draws for resampling)."""
    kl: torch.Tensor
    """[n_prompts] KL(clean ‖ intervened) of the next-token distribution at the last token."""


def seed_of(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------------
# Summaries


def summarise(
    experiment_id: str, ld: torch.Tensor, kl: torch.Tensor, ld_clean: torch.Tensor, ld_corrupt: torch.Tensor,
    bootstrap_samples: int, delta_from: str = "clean",
) -> dict[str, float]:
    """Means, normalised recovery and percentile-bootstrap 95 % CIs over prompts; ΔLD = LD − LD of
    the run the intervention edits (``delta_from``: "clean" for ablations and resampling,
    "corrupted" for patching), in logits, beside the recovery its ratio hides."""
    ld, kl, ld_clean, ld_corrupt = (t.double().cpu() for t in (ld, kl, ld_clean, ld_corrupt))
    n = ld.shape[0]

    def recovery(a: torch.Tensor, c: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (a.mean(-1) - k.mean(-1)) / (c.mean(-1) - k.mean(-1))

    generator = torch.Generator().manual_seed(seed_of("bootstrap:" + experiment_id))
    draws = torch.randint(0, n, (bootstrap_samples, n), generator=generator)
    boot_recovery = recovery(ld[draws], ld_clean[draws], ld_corrupt[draws])
    boot_ld = ld[draws].mean(-1)
    delta = ld - (ld_clean if delta_from == "clean" else ld_corrupt)
    boot_delta = delta[draws].mean(-1)
    low, high = 0.025, 0.975
    return {
        "n_prompts": n,
        "ld_clean": float(ld_clean.mean()),
        "ld_corrupted": float(ld_corrupt.mean()),
        "ld_patched": float(ld.mean()),
        "ld_patched_ci_low": float(boot_ld.quantile(low)),
        "ld_patched_ci_high": float(boot_ld.quantile(high)),
        "recovery": float(recovery(ld, ld_clean, ld_corrupt)),
        "recovery_ci_low": float(boot_recovery.nanquantile(low)),
        "recovery_ci_high": float(boot_recovery.nanquantile(high)),
        "delta_ld": float(delta.mean()),
        "delta_ld_ci_low": float(boot_delta.quantile(low)),
        "delta_ld_ci_high": float(boot_delta.quantile(high)),
        "kl_to_clean": float(kl.mean()),
    }


# ---------------------------------------------------------------------------------------------
# Prompt sets and the runner


@dataclass
class _PromptSet:
    pairs: PromptPairs
    batches: list[PairBatch]
    indices: list[list[int]]
    """Per batch, the positions of its prompts in ``pairs`` (0..n−1)."""
    ld_clean: torch.Tensor
    ld_corrupt: torch.Tensor
    logp_clean: torch.Tensor
    """[n, V] clean next-token log-probabilities at the last token."""
    clean_acts: dict[int, torch.Tensor] = field(default_factory=dict)
    """Per layer [n, T, d] clean activations (filled on demand, for resampling)."""


def _for_inference(sae: SparseAutoencoder, device: torch.device | str) -> SparseAutoencoder:
    return sae.to(device).float().eval().requires_grad_(False)


class SaeCache(Mapping):
    """The SAEs of ``layers`` for an InterventionRunner, bounded in memory: those of ``resident``
    (the key layers, which every circuit experiment edits) loaded once and kept; any other read
    with ``load(layer)`` when first asked for and kept until another non-resident layer is asked
    for. The patching sweep visits its layers in order, so it reads each SAE once while holding at
    most one beyond the key layers' — 15 Qwen2.5-3B SAEs would be 58 GB at once."""

    def __init__(self, load: Callable[[int], SparseAutoencoder], layers: Sequence[int], resident: Sequence[int],
                 device: torch.device | str) -> None:
        self._load, self._layers, self._device = load, sorted(layers), device
        self._resident = {layer: _for_inference(load(layer), device) for layer in sorted(set(resident) & set(layers))}
        self._visitor: tuple[int, SparseAutoencoder] | None = None
        self.loads = len(self._resident)
        """SAEs read so far (the resident ones included)."""

    def __getitem__(self, layer: int) -> SparseAutoencoder:
        if layer in self._resident:
            return self._resident[layer]
        if layer not in self._layers:
            raise KeyError(layer)
        if self._visitor is None or self._visitor[0] != layer:
            self._visitor = None  # the previous one goes before the next is read
            self._visitor = (layer, _for_inference(self._load(layer), self._device))
            self.loads += 1
        return self._visitor[1]

    def __contains__(self, layer: object) -> bool:  # without reading it
        return layer in self._layers

    def __iter__(self):  # noqa: ANN204
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)


class InterventionRunner:
    def __init__(
        self,
        model,  # noqa: ANN001
        saes: Mapping[int, SparseAutoencoder],
        hook_point: str,
        prompt_sets: Mapping[str, PromptPairs],
        pad_token_id: int,
        circuit_layers: Sequence[int] = (),
        batch_size: int = 32,
        max_sequences_per_pass: int = 512,
    ) -> None:
        self.model = model
        self.max_sequences_per_pass = max_sequences_per_pass
        """Resampling stacks several draws into one forward pass up to this many sequences."""
        self.circuit_layers = sorted(circuit_layers)
        """The key layers whose nodes form circuits (the attribution graph's layers)."""
        self.device = next(model.parameters()).device
        self.saes = saes if isinstance(saes, SaeCache) else {
            layer: _for_inference(sae, self.device) for layer, sae in saes.items()}
        self.hook_point = hook_point
        self.n_layers = len(_decoder_layers(model))
        self.sets: dict[str, _PromptSet] = {}
        for name, pairs in prompt_sets.items():
            if len(pairs) == 0:
                raise ValueError(f"prompt set {name!r} is empty (no pair whose clean and corrupted lengths match)")
            indices = [list(range(s, min(s + batch_size, len(pairs)))) for s in range(0, len(pairs), batch_size)]
            batches = [pairs.batch(ix, self.device, pad_token_id) for ix in indices]
            ld_clean, ld_corrupt, logp = [], [], []
            with torch.no_grad():
                for batch in batches:
                    logits = run_logits(model, batch.clean_ids, batch)
                    ld_clean.append(logit_diff(logits, batch))
                    logp.append(last_token_logits(logits, batch).log_softmax(-1))
                    ld_corrupt.append(logit_diff(run_logits(model, batch.corrupted_ids, batch), batch))
            self.sets[name] = _PromptSet(pairs, batches, indices, torch.cat(ld_clean), torch.cat(ld_corrupt), torch.cat(logp))
        self._means: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- cached statistics --------------------------------------------------------------------

    def baseline(self, prompt_set: str) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sets[prompt_set]
        return s.ld_clean, s.ld_corrupt

    @torch.no_grad()
    def _clean_activations(self, prompt_set: str, layer: int) -> torch.Tensor:
        s = self.sets[prompt_set]
        if layer not in s.clean_acts:
            width = s.pairs.max_length
            out = None
            for batch, ix in zip(s.batches, s.indices, strict=True):
                with recording(self.model, [layer], self.hook_point, stop_after_deepest=True) as records:
                    forward_until_recorded(self.model, input_ids=batch.clean_ids, attention_mask=batch.attention_mask)
                act = records[layer].float()
                if out is None:
                    out = torch.zeros(len(s.pairs), width, act.shape[-1], device=self.device)
                out[ix, : act.shape[1]] = act
            s.clean_acts[layer] = out
        return s.clean_acts[layer]

    @torch.no_grad()
    def feature_means(self, prompt_set: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean features [P, d_sae], mean error term [P, d]) per offset slot over the set's clean
        prompts; slot P + offset holds offset (−1 → P−1)."""
        key = (prompt_set, layer)
        if key not in self._means:
            s, sae = self.sets[prompt_set], self.saes[layer]
            acts = self._clean_activations(prompt_set, layer)
            width = s.pairs.max_length
            f_sum = torch.zeros(width, sae.spec.d_sae, device=self.device)
            e_sum = torch.zeros(width, acts.shape[-1], device=self.device)
            count = torch.zeros(width, device=self.device)
            for row, ids in enumerate(s.pairs.clean):
                x = acts[row, : len(ids)]
                f = sae.encode(x)
                slots = torch.arange(width - len(ids), width, device=self.device)
                f_sum.index_add_(0, slots, f)
                e_sum.index_add_(0, slots, x - sae.decode(f))
                count.index_add_(0, slots, torch.ones(len(ids), device=self.device))
            count = count.clamp_min(1)[:, None]
            self._means[key] = (f_sum / count, e_sum / count)
        return self._means[key]

    # -- running ------------------------------------------------------------------------------

    @torch.no_grad()
    def _forward(self, prompt_set: str, corrupted: bool, edit: Callable[[PairBatch, list[int]], Mapping[int, Callable]] | None,
                 hook_point: str | None = None) -> ExperimentResult:
        """Run every batch of the set with per-layer edit functions ``fn(activation) -> activation``."""
        s = self.sets[prompt_set]
        lds, kls = [], []
        for batch, ix in zip(s.batches, s.indices, strict=True):
            fns = edit(batch, ix) if edit is not None else {}

            def apply(layer: int, activation: torch.Tensor, fns=fns) -> torch.Tensor | None:
                fn = fns.get(layer)
                return None if fn is None else fn(activation.float()).to(activation.dtype)

            ids = batch.corrupted_ids if corrupted else batch.clean_ids
            with hooked(self.model, sorted(fns), hook_point or self.hook_point, apply):
                logits = run_logits(self.model, ids, batch)
            lds.append(logit_diff(logits, batch))
            logp = last_token_logits(logits, batch).log_softmax(-1)
            clean = s.logp_clean[ix]
            kls.append((clean.exp() * (clean - logp)).sum(-1))
        return ExperimentResult(torch.cat(lds), torch.cat(kls))

    def _feature_edit(
        self, batch: PairBatch, nodes: Iterable[NodeRef], value: Callable[[NodeRef, torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
        """Per layer: set each node's feature to ``value(node, rows, positions)`` on the prompts
        that have its position, through the SAE's decoder (x += Δf · W_dec[i])."""
        by_layer: dict[int, list[NodeRef]] = {}
        for node in nodes:
            by_layer.setdefault(node[0], []).append(node)
        rows = torch.arange(batch.size, device=self.device)

        def make(layer: int, layer_nodes: list[NodeRef]) -> Callable[[torch.Tensor], torch.Tensor]:
            sae = self.saes[layer]

            def fn(x: torch.Tensor) -> torch.Tensor:
                x = x.clone()
                features = {}
                for node in layer_nodes:
                    _, offset, feature = node
                    positions = batch.position_of_offset(offset)
                    present = positions >= 0
                    r, p = rows[present], positions[present]
                    if offset not in features:  # every feature read from the unedited activation
                        features[offset] = sae.encode(x[r, p])
                    current = features[offset][:, feature]
                    x[r, p] += (value(node, r, p) - current)[:, None] * sae.W_dec[feature]
                return x

            return fn

        return {layer: make(layer, layer_nodes) for layer, layer_nodes in by_layer.items()}

    def run(self, experiment: Experiment) -> ExperimentResult:
        family, variant = experiment.family, experiment.variant
        if family == "feature_ablation":
            return self._ablate(experiment)
        if family == "resample_ablation":
            return self._resample(experiment)
        if family == "activation_patching":
            if variant == "control_nothing":
                return self._forward(experiment.prompt_set, corrupted=True, edit=None)
            if variant == "control_everything":
                return self._patch_everything(experiment)
            return self._patch(experiment)
        raise ValueError(f"unknown experiment family {family!r}")

    def _ablate(self, experiment: Experiment) -> ExperimentResult:
        prompt_set = experiment.prompt_set
        if experiment.variant == "zero":
            def value(node: NodeRef, r: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
                return torch.zeros(len(r), device=self.device)
        elif experiment.variant == "mean":
            # Computed before the hooks go in: computing them runs the model.
            means = {layer: self.feature_means(prompt_set, layer)[0] for layer in {node[0] for node in experiment.nodes}}

            def value(node: NodeRef, r: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
                layer_means = means[node[0]]
                return layer_means[layer_means.shape[0] + node[1], node[2]].expand(len(r))
        else:
            raise ValueError(f"unknown ablation {experiment.variant!r}")
        return self._forward(prompt_set, corrupted=False,
                             edit=lambda batch, ix: self._feature_edit(batch, experiment.nodes, value))

    @torch.no_grad()
    def _resample(self, experiment: Experiment) -> ExperimentResult:
        """Each draw: every prompt takes the group's feature values from another prompt of its
        length (a random derangement within each length bucket, seeded by the experiment id).
        Several draws share one forward pass (the batch stacked once per draw)."""
        s = self.sets[experiment.prompt_set]
        lengths = [len(ids) for ids in s.pairs.clean]
        generator = torch.Generator().manual_seed(seed_of("resample:" + experiment.id))
        donors = torch.stack([_derangement_by_length(lengths, generator) for _ in range(experiment.samples)]).to(self.device)
        layers = sorted({node[0] for node in experiment.nodes})
        acts = {layer: self._clean_activations(experiment.prompt_set, layer) for layer in layers}
        ld_total = torch.zeros(len(s.pairs), device=self.device)
        kl_total = torch.zeros(len(s.pairs), device=self.device)
        for batch, ix in zip(s.batches, s.indices, strict=True):
            rows = torch.as_tensor(ix, device=self.device)
            per_pass = max(1, self.max_sequences_per_pass // batch.size)
            for first in range(0, experiment.samples, per_pass):
                draws = donors[first : first + per_pass]  # [k, n]
                stacked = batch.repeat(draws.shape[0])
                donor_rows = draws[:, rows].reshape(-1)  # donor of each stacked row

                def value(node: NodeRef, r: torch.Tensor, p: torch.Tensor, donor_rows=donor_rows) -> torch.Tensor:
                    layer, _, feature = node
                    return self.saes[layer].encode(acts[layer][donor_rows[r], p])[:, feature]

                fns = self._feature_edit(stacked, experiment.nodes, value)

                def apply(layer: int, activation: torch.Tensor, fns=fns) -> torch.Tensor | None:
                    fn = fns.get(layer)
                    return None if fn is None else fn(activation.float()).to(activation.dtype)

                with hooked(self.model, sorted(fns), self.hook_point, apply):
                    logits = run_logits(self.model, stacked.clean_ids, stacked)
                k = draws.shape[0]
                ld_total[rows] += logit_diff(logits, stacked).reshape(k, -1).sum(0)
                logp = last_token_logits(logits, stacked).log_softmax(-1).reshape(k, batch.size, -1)
                clean = s.logp_clean[rows][None]
                kl_total[rows] += (clean.exp() * (clean - logp)).sum(-1).sum(0)
        return ExperimentResult(ld_total / experiment.samples, kl_total / experiment.samples)

    def _patch(self, experiment: Experiment) -> ExperimentResult:
        layer, offset, variant = experiment.layer, experiment.offset, experiment.variant
        clean_acts = self._clean_activations(experiment.prompt_set, layer)
        sae = self.saes.get(layer)
        if variant == "sae_features" and sae is None:
            raise ValueError(f"no SAE for layer {layer}: the sae_features variant needs one")

        def edit(batch: PairBatch, ix: list[int]) -> dict[int, Callable]:
            rows = torch.arange(batch.size, device=self.device)
            if offset == ALL_POSITIONS:
                mask = batch.attention_mask.bool()
                r, p = mask.nonzero(as_tuple=True)
            else:
                positions = batch.position_of_offset(offset)
                present = positions >= 0
                r, p = rows[present], positions[present]
            clean = clean_acts[torch.as_tensor(ix, device=self.device)[r], p]

            def fn(x: torch.Tensor) -> torch.Tensor:
                x = x.clone()
                if variant == "raw":
                    x[r, p] = clean
                else:  # features from the clean run, error term from the corrupted one
                    corrupt = x[r, p]
                    x[r, p] = corrupt - sae.decode(sae.encode(corrupt)) + sae.decode(sae.encode(clean))
                return x

            return {layer: fn}

        return self._forward(experiment.prompt_set, corrupted=True, edit=edit)

    def _patch_everything(self, experiment: Experiment) -> ExperimentResult:
        """Control: the last layer's residual stream from the clean run, at every position."""
        last = self.n_layers - 1
        s = self.sets[experiment.prompt_set]
        cached = []
        with torch.no_grad():
            for batch in s.batches:
                with recording(self.model, [last], "resid_post", stop_after_deepest=True) as records:
                    forward_until_recorded(self.model, input_ids=batch.clean_ids, attention_mask=batch.attention_mask)
                cached.append(records[last])
        queue = iter(cached)

        def edit(batch: PairBatch, ix: list[int]) -> dict[int, Callable]:
            clean = next(queue)
            return {last: lambda x: clean.float()}

        return self._forward(experiment.prompt_set, corrupted=True, edit=edit, hook_point="resid_post")

    # -- faithfulness -------------------------------------------------------------------------

    def circuit_score(self, prompt_set: str, keep: Iterable[NodeRef] | None, ablate: Iterable[NodeRef] | None) -> float:
        """Mean LD over the prompts of ``circuit_lds``."""
        return float(self.circuit_lds(prompt_set, keep, ablate).mean())

    def circuit_lds(self, prompt_set: str, keep: Iterable[NodeRef] | None, ablate: Iterable[NodeRef] | None) -> torch.Tensor:
        """[n_prompts] LD with the key layers' features and error terms mean-ablated.

        ``keep``: everything EXCEPT these nodes is mean-ablated (F(C); empty → F(∅)).
        ``ablate``: ONLY these nodes are mean-ablated (F(M∖C)).
        """
        layers = self.circuit_layers
        keep_set, ablate_set = set(keep or ()), set(ablate or ())

        def edit(batch: PairBatch, ix: list[int]) -> dict[int, Callable]:
            offsets = batch.offsets()
            valid = batch.attention_mask.bool()
            fns = {}
            for layer in layers:
                sae = self.saes[layer]
                mean_f, mean_e = self.feature_means(prompt_set, layer)
                width = mean_f.shape[0]
                slot = (offsets + width).clamp(0, width - 1)
                selected = keep_set if keep is not None else ablate_set
                mask_f = torch.zeros(batch.size, batch.width, sae.spec.d_sae, dtype=torch.bool, device=self.device)
                mask_e = torch.zeros(batch.size, batch.width, dtype=torch.bool, device=self.device)
                for node_layer, offset, feature in selected:
                    if node_layer != layer:
                        continue
                    positions = batch.position_of_offset(offset)
                    rows = (positions >= 0).nonzero(as_tuple=True)[0]
                    if feature < 0:
                        mask_e[rows, positions[rows]] = True
                    else:
                        mask_f[rows, positions[rows], feature] = True
                # keep: mask marks what stays clean; ablate: mask marks what is replaced.
                take_clean_f = mask_f if keep is not None else ~mask_f
                take_clean_e = mask_e if keep is not None else ~mask_e

                def fn(x: torch.Tensor, sae=sae, mean_f=mean_f, mean_e=mean_e, slot=slot,
                       take_clean_f=take_clean_f, take_clean_e=take_clean_e) -> torch.Tensor:
                    f = sae.encode(x)
                    e = x - sae.decode(f)
                    f_new = torch.where(take_clean_f, f, mean_f[slot])
                    e_new = torch.where(take_clean_e[..., None], e, mean_e[slot])
                    return torch.where(valid[..., None], sae.decode(f_new) + e_new, x)

                fns[layer] = fn
            return fns

        return self._forward(prompt_set, corrupted=False, edit=edit).ld


def _decoder_layers(model):  # noqa: ANN001, ANN202
    from interp_assets.core.hooks import decoder_layers

    return decoder_layers(model)


def _derangement_by_length(lengths: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """[n] a donor for each prompt: another prompt of the same length (itself if it is alone)."""
    donor = torch.arange(len(lengths))
    buckets: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        buckets.setdefault(length, []).append(index)
    for members in buckets.values():
        if len(members) < 2:
            continue
        # A random cyclic shift of a random order: nobody is their own donor.
        order = torch.tensor(members)[torch.randperm(len(members), generator=generator)]
        shift = int(torch.randint(1, len(members), (1,), generator=generator))
        donor[order] = order.roll(shift)
    return donor


def plan_experiments(
    ranked_feature_nodes: Sequence[NodeRef],
    layers: Sequence[int],
    max_offset: int,
    ablation_groups: int,
    patching_positions: int,
    resample_samples: int,
) -> list[Experiment]:
    """Every experiment of the three families, in a fixed order with stable ids."""
    experiments: list[Experiment] = []
    groups = _split(ranked_feature_nodes, ablation_groups)
    for g, nodes in enumerate(groups):
        for method in ("zero", "mean"):
            experiments.append(Experiment(f"feature_ablation/{method}/group{g:03d}", "feature_ablation", method,
                                          "test", group=g, nodes=tuple(nodes)))
    experiments.append(Experiment("activation_patching/control_nothing", "activation_patching", "control_nothing", "patching"))
    experiments.append(Experiment("activation_patching/control_everything", "activation_patching", "control_everything", "patching"))
    positions = [-k for k in range(1, min(patching_positions, max_offset) + 1)] + [ALL_POSITIONS]
    for layer in layers:
        for offset in positions:
            for variant in ("raw", "sae_features"):
                where = "all" if offset == ALL_POSITIONS else f"pos{offset}"
                experiments.append(Experiment(f"activation_patching/{variant}/layer{layer:03d}/{where}",
                                              "activation_patching", variant, "patching", layer=layer, offset=offset))
    for g, nodes in enumerate(groups):
        experiments.append(Experiment(f"resample_ablation/group{g:03d}", "resample_ablation", "resample", "test",
                                      group=g, nodes=tuple(nodes), samples=resample_samples))
    return experiments


def _split(items: Sequence, n_groups: int) -> list[list]:
    """Consecutive groups of near-equal size (rank 1..k, k+1..2k, ...); no empty groups."""
    n_groups = min(n_groups, len(items))
    if n_groups == 0:
        return []
    base, extra = divmod(len(items), n_groups)
    groups, start = [], 0
    for g in range(n_groups):
        size = base + (1 if g < extra else 0)
        groups.append(list(items[start : start + size]))
        start += size
    return groups
