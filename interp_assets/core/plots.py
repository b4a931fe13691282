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


def density_histogram_figure(histogram: dict, title: str) -> bytes:
    """A layer's log10 feature-density histogram over latents (``core.dashboards.density_histogram``),
    dead latents as a bar of their own at the left, as PNG bytes."""
    edges, counts = histogram["edges"], histogram["counts"]
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.bar(edges[:-1], counts, width=[high - low for low, high in zip(edges, edges[1:])], align="edge",
           color="tab:blue", label="firing latents")
    step = edges[1] - edges[0]
    ax.bar([edges[0] - 2 * step], [histogram["dead"]], width=step, align="edge", color="tab:red",
           label=f"dead ({histogram['dead']})")
    ax.set_xlabel(f"log10 firing frequency over {histogram['n_tokens']:,} held-out tokens")
    ax.set_ylabel("latents")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def pareto_figure(points: Sequence[dict], chosen: str, front: Sequence[str], metric: str, max_l0: float | None,
                  title: str) -> bytes:
    """L0 against the selection's metric, one point per variant (``{"variant", "l0", "score"}``), the
    Pareto front joined, the chosen variant ringed, the L0 bound dashed, and for each variant a
    random SAE of its shape (``"random_l0"``, ``"random_score"``: chance). The axes fit the trained
    variants; a chance point beyond them sits on the edge with its value written."""
    def limits(values: list[float], minimum_pad: float) -> tuple[float, float]:
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        pad = max(0.15 * (high - low), minimum_pad)
        return low - pad, high + pad

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    usable = [p for p in points if p["score"] is not None]
    (x_low, x_high), (y_low, y_high) = limits([p["l0"] for p in usable] + ([max_l0] if max_l0 else []), 1.0), limits([p["score"] for p in usable], 0.02)
    chance_points = set()
    for point in usable:
        ax.scatter(point["l0"], point["score"], color="tab:blue" if point["variant"] in front else "tab:gray", zorder=3)
        ax.annotate(point["variant"], (point["l0"], point["score"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if point.get("random_score") is not None:
            chance_points.add((point.get("random_l0", point["l0"]), point["random_score"]))  # same shape: one point
    for x, y in sorted(chance_points):
        shown = (min(max(x, x_low), x_high), min(max(y, y_low), y_high))
        ax.scatter(*shown, marker="x", color="tab:red", zorder=3, clip_on=False)
        if shown != (x, y):  # beyond the trained variants' axes: drawn on the edge, its values written
            ax.annotate(f"L0 {x:.3g}, {y:.3g}", shown, fontsize=6, color="tab:red", xytext=(-4, 4),
                        textcoords="offset points", ha="right")
    line = sorted((p for p in usable if p["variant"] in front), key=lambda p: p["l0"])
    ax.plot([p["l0"] for p in line], [p["score"] for p in line], color="tab:blue", linewidth=1, label="Pareto front")
    for point in usable:
        if point["variant"] == chosen:
            ax.scatter(point["l0"], point["score"], s=180, facecolors="none", edgecolors="tab:green", linewidths=2,
                       label=f"chosen: {chosen}", zorder=4)
    if any(p.get("random_score") is not None for p in usable):
        ax.scatter([], [], marker="x", color="tab:red", label="random SAE of that shape (chance)")
    if max_l0 is not None:
        ax.axvline(max_l0, color="tab:orange", linestyle="--", linewidth=1, label=f"max_l0 {max_l0:g}")
    ax.set_xlim(x_low, x_high)
    ax.set_ylim(y_low, y_high)
    ax.set_xlabel("held-out L0 (latents per token)", fontsize=8)
    ax.set_ylabel(f"held-out {metric}", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that the Dagster UI renders as an inline image."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def attribution_graph_figure(
    nodes: Sequence[dict], edges: Sequence[dict], title: str, top_per_layer: int = 8, logit_label: str = "metric",
) -> bytes:
    """The graph as a reader scans it: token embeddings at the bottom, one row per key layer, the
    logit node on top; in each row the strongest nodes by |attribution| (strongest left), area ∝
    |attribution|, blue supports the behaviour and red opposes it; circles are SAE features,
    squares SAE error terms, triangles token embeddings; labels are the nodes' clerps; edges
    between drawn nodes with width and opacity ∝ |weight|, into the logit too. A legend says so.
    ``nodes``: layer, offset, feature, attribution, kind ("embedding"/"feature"/"error"), label;
    ``edges``: source_index, target_index (−1: the logit), weight (indices into ``nodes``)."""
    from matplotlib.lines import Line2D

    rows_of = sorted({n["layer"] for n in nodes})  # the embedding layer (−1) sorts first
    shown: dict[int, tuple[float, float]] = {}
    for row, layer in enumerate(rows_of):
        members = sorted((i for i, n in enumerate(nodes) if n["layer"] == layer), key=lambda i: -abs(nodes[i]["attribution"]))
        for column, index in enumerate(members[:top_per_layer]):
            shown[index] = (float(column), float(row))
    logit_xy = ((top_per_layer - 1) / 2, float(len(rows_of)))
    fig, ax = plt.subplots(figsize=(11, 1.6 + 1.25 * (len(rows_of) + 1)), dpi=100)
    biggest = max((abs(nodes[i]["attribution"]) for i in shown), default=1.0) or 1.0
    drawn_edges = [e for e in edges if e["source_index"] in shown and (e["target_index"] == -1 or e["target_index"] in shown)]
    heaviest = max((abs(e["weight"]) for e in drawn_edges), default=1.0) or 1.0
    for e in sorted(drawn_edges, key=lambda e: abs(e["weight"])):  # heaviest drawn last, on top
        (x0, y0) = shown[e["source_index"]]
        (x1, y1) = logit_xy if e["target_index"] == -1 else shown[e["target_index"]]
        strength = abs(e["weight"]) / heaviest
        ax.plot([x0, x1], [y0, y1], color="tab:blue" if e["weight"] > 0 else "tab:red",
                alpha=0.15 + 0.6 * strength, linewidth=0.3 + 4.0 * strength, zorder=1)
    markers = {"embedding": "^", "error": "s", "feature": "o"}
    for index, (x, y) in shown.items():
        n = nodes[index]
        ax.scatter([x], [y], s=30 + 500 * abs(n["attribution"]) / biggest, zorder=2, marker=markers[n["kind"]],
                   color="tab:blue" if n["attribution"] > 0 else "tab:red" if n["attribution"] < 0 else "lightgray",
                   edgecolors="black", linewidths=0.4)
        label = n["label"] if len(n["label"]) <= 18 else n["label"][:17] + "…"
        ax.annotate(f"{label}\n@{n['offset']}", (x, y), xytext=(0, -16), textcoords="offset points", ha="center",
                    va="top", fontsize=6)
    ax.scatter([logit_xy[0]], [logit_xy[1]], s=400, marker="D", color="gold", edgecolors="black", zorder=2)
    ax.annotate(logit_label, logit_xy, xytext=(0, 12), textcoords="offset points", ha="center", fontsize=8)
    names = ["embeddings" if layer < 0 else f"layer {layer}" for layer in rows_of] + ["logit"]
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks([])
    ax.set_xlim(-0.6, top_per_layer - 0.4)
    ax.set_ylim(-0.8, len(rows_of) + 0.6)
    legend = [
        Line2D([], [], marker="o", linestyle="", color="tab:blue", markeredgecolor="black", label="SAE feature (supports)"),
        Line2D([], [], marker="o", linestyle="", color="tab:red", markeredgecolor="black", label="opposes the behaviour"),
        Line2D([], [], marker="s", linestyle="", color="white", markeredgecolor="black", label="SAE error term"),
        Line2D([], [], marker="^", linestyle="", color="white", markeredgecolor="black", label="token embedding"),
        Line2D([], [], marker="D", linestyle="", color="gold", markeredgecolor="black", label="logit (metric)"),
        Line2D([], [], color="gray", linewidth=3.0, label=f"edge, width ∝ |weight| (max {heaviest:.3g})"),
    ]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.set_xlabel(f"top {top_per_layer} nodes per row by |attribution| (strongest left); area ∝ |attribution|; "
                  "@k: position from the end", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def faithfulness_figure(rows: Sequence[dict[str, float]], title: str) -> bytes:
    """Faithfulness of the top-n circuit (95 % bootstrap CI as error bars), completeness (1 − the
    complement's faithfulness), and random circuits of the same size (mean ± 1 s.d. over draws),
    against n; the denominator F(M) − F(∅) in logits is printed on the plot."""
    import math

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    sizes = [r["circuit_size"] for r in rows]
    faith = [r["faithfulness"] for r in rows]
    ax.errorbar(sizes, faith, yerr=[[f - r["faithfulness_ci_low"] for f, r in zip(faith, rows, strict=True)],
                                    [r["faithfulness_ci_high"] - f for f, r in zip(faith, rows, strict=True)]],
                marker="o", capsize=3, label="circuit C: faithfulness (95 % CI)", color="tab:blue")
    complete = [r["completeness"] for r in rows]
    ax.errorbar(sizes, complete, yerr=[[c - r["completeness_ci_low"] for c, r in zip(complete, rows, strict=True)],
                                       [r["completeness_ci_high"] - c for c, r in zip(complete, rows, strict=True)]],
                marker="s", capsize=3, label="completeness 1 − F(M∖C) (95 % CI)", color="tab:green")
    random_rows = [r for r in rows if not math.isnan(r["random_faithfulness_mean"])]
    if random_rows:
        mean = [r["random_faithfulness_mean"] for r in random_rows]
        spread = [0.0 if math.isnan(r["random_faithfulness_std"]) else r["random_faithfulness_std"] for r in random_rows]
        xs = [r["circuit_size"] for r in random_rows]
        ax.plot(xs, mean, color="gray", linestyle="--", marker="x", label=f"random circuits, same size (mean ± s.d., "
                                                               f"{int(random_rows[0]['random_draws'])} draws)")
        ax.fill_between(xs, [m - s for m, s in zip(mean, spread, strict=True)],
                        [m + s for m, s in zip(mean, spread, strict=True)], color="gray", alpha=0.25)
    ax.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
    ax.axhline(0.0, color="black", linewidth=0.6)
    if rows:
        r = rows[0]
        ax.text(0.02, 0.97, f"F(M) − F(∅) = {r['denominator']:.3g} logits "
                            f"[{r['denominator_ci_low']:.3g}, {r['denominator_ci_high']:.3g}]",
                transform=ax.transAxes, fontsize=8, va="top")
    ax.set_xlabel("nodes in circuit (by |attribution|)")
    ax.set_ylabel("(F − F(∅)) / (F(M) − F(∅))")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)
