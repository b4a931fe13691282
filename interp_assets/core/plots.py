"""Small PNG figures for the Dagster UI (rendered off-screen with matplotlib's Agg backend)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:  # noqa: ANN001
    """The figure as PNG bytes, then closed. No timestamps or software tags in the PNG, so the
    same figure gives the same bytes."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


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
    return _png(fig)


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
    return _png(fig)


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that the Dagster UI renders as an inline image."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def attribution_graph_figure(
    nodes: Sequence[dict], edges: Sequence[dict], title: str, top_per_layer: int = 10,
) -> bytes:
    """The pruned graph's top nodes by layer (one row per layer, the strongest on the left):
    area ∝ |attribution|, blue supports the behaviour, red opposes it, squares are SAE error terms,
    labels read ``f<feature>@<offset>`` (offset −1 is the last token); edges between the drawn
    nodes with opacity ∝ |weight|. ``nodes``: layer, offset, feature, attribution;
    ``edges``: source_index, target_index, weight (indices into ``nodes``)."""
    layers = sorted({n["layer"] for n in nodes})
    shown: dict[int, tuple[float, float]] = {}
    for row, layer in enumerate(layers):
        members = sorted((i for i, n in enumerate(nodes) if n["layer"] == layer), key=lambda i: -abs(nodes[i]["attribution"]))
        for column, index in enumerate(members[:top_per_layer]):
            shown[index] = (float(column), float(row))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 1.3 * max(len(layers), 1)), dpi=100)
    biggest = max((abs(nodes[i]["attribution"]) for i in shown), default=1.0) or 1.0
    drawn_edges = [e for e in edges if e["source_index"] in shown and e["target_index"] in shown]
    heaviest = max((abs(e["weight"]) for e in drawn_edges), default=1.0) or 1.0
    for e in drawn_edges:
        (x0, y0), (x1, y1) = shown[e["source_index"]], shown[e["target_index"]]
        ax.plot([x0, x1], [y0, y1], color="tab:blue" if e["weight"] > 0 else "tab:red",
                alpha=0.1 + 0.7 * abs(e["weight"]) / heaviest, linewidth=0.4 + 2.0 * abs(e["weight"]) / heaviest, zorder=1)
    for index, (x, y) in shown.items():
        n = nodes[index]
        ax.scatter([x], [y], s=30 + 500 * abs(n["attribution"]) / biggest, zorder=2,
                   marker="s" if n["feature"] < 0 else "o",
                   color="tab:blue" if n["attribution"] > 0 else "tab:red", edgecolors="black", linewidths=0.4)
        label = ("err" if n["feature"] < 0 else f"f{n['feature']}") + f"@{n['offset']}"
        ax.annotate(label, (x, y), xytext=(0, -14), textcoords="offset points", ha="center", fontsize=7)
    ax.set_yticks(range(len(layers)), [f"layer {layer}" for layer in layers])
    ax.set_xticks([])
    ax.set_xlim(-0.6, top_per_layer - 0.4)
    ax.set_ylim(-0.6, len(layers) - 0.4)
    ax.set_xlabel(f"top {top_per_layer} nodes per layer by |attribution| (strongest left)", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def faithfulness_figure(rows: Sequence[dict[str, float]], title: str) -> bytes:
    """Faithfulness of the top-n circuit and of its complement against n."""
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    sizes = [r["circuit_size"] for r in rows]
    ax.plot(sizes, [r["faithfulness"] for r in rows], marker="o", label="circuit C", color="tab:blue")
    ax.plot(sizes, [r["complement_faithfulness"] for r in rows], marker="s", label="complement M∖C", color="tab:red")
    ax.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xlabel("nodes in circuit (by |attribution|)")
    ax.set_ylabel("(F − F(∅)) / (F(M) − F(∅))")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)
