"""Choosing one SAE per layer from a sweep: a rule over held-out figures, and the L0-vs-fidelity
Pareto front the choice is shown against. Pure data: no torch, no Dagster."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


class SelectionError(ValueError):
    """No variant of a layer satisfies the rule; the message says which bound excluded which."""


@dataclass(frozen=True)
class Candidate:
    """One variant's SAE of a layer, as the rule sees it (all figures held out)."""

    variant: str
    l0: float
    score: float | None
    """The rule's metric; None where it is undefined (e.g. CE-recovered over a zero denominator)."""

    @property
    def scored(self) -> bool:
        return self.score is not None and math.isfinite(self.score) and math.isfinite(self.l0)


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    return a > b if higher_is_better else a < b


def pareto_front(candidates: Sequence[Candidate], higher_is_better: bool) -> list[str]:
    """Variants no other variant beats on both axes (L0 no higher and score no worse, one strictly):
    the sparsity/fidelity trade-offs worth choosing between."""
    scored = [c for c in candidates if c.scored]
    front = []
    for c in scored:
        dominated = any(
            o is not c and o.l0 <= c.l0 and not _better(c.score, o.score, higher_is_better)  # type: ignore[arg-type]
            and (o.l0 < c.l0 or _better(o.score, c.score, higher_is_better))  # type: ignore[arg-type]
            for o in scored
        )
        if not dominated:
            front.append(c.variant)
    return front


def select_variant(candidates: Sequence[Candidate], higher_is_better: bool, max_l0: float | None) -> Candidate:
    """The best-scoring candidate with L0 ≤ ``max_l0`` (None: any); ties go to the earliest."""
    eligible = [c for c in candidates if c.scored and (max_l0 is None or c.l0 <= max_l0)]
    if not eligible:
        seen = ", ".join(f"{c.variant} (L0 {c.l0:.4g}, score {c.score})" for c in candidates)
        bound = f"held-out L0 ≤ {max_l0:g}" if max_l0 is not None else "a defined score"
        raise SelectionError(f"no variant has {bound}: {seen}. Raise sae_selection.max_l0, or add a sparser "
                             "variant to sae_variants")
    best = eligible[0]
    for c in eligible[1:]:
        if _better(c.score, best.score, higher_is_better):  # type: ignore[arg-type]
            best = c
    return best
