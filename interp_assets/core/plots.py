"""Small PNG figures for the Dagster UI (rendered off-screen with matplotlib's Agg backend)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def logit_diff_histogram(clean: Sequence[float], corrupted: Sequence[float], title: str) -> bytes:
    """Histogram of per-prompt logit differences on clean vs corrupted prompts, as PNG bytes."""
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    values = list(clean) + list(corrupted)
    bins = 30 if values else 1
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    ax.hist(clean, bins=bins, range=(low, high), alpha=0.6, label="clean", color="tab:blue")
    ax.hist(corrupted, bins=bins, range=(low, high), alpha=0.6, label="corrupted", color="tab:red")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("logit(target) − logit(foil)")
    ax.set_ylabel("prompts")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    # No timestamps or software tags in the PNG, so the same figures give the same bytes.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def training_curves(history: Sequence[dict[str, float]], title: str) -> bytes:
    """Loss, explained variance, L0 and dead fraction against step, as PNG bytes."""
    steps = [record["step"] for record in history]
    panels = [
        ("losses/overall", "loss", True),
        ("metrics/explained_variance", "explained variance (R²)", False),
        ("metrics/l0", "L0", False),
        ("sparsity/dead_fraction", "dead fraction", False),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.8), dpi=100)
    for ax, (key, label, log_scale) in zip(axes, panels, strict=True):
        ax.plot(steps, [record.get(key, float("nan")) for record in history], color="tab:blue")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if log_scale:
            ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that the Dagster UI renders as an inline image."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
