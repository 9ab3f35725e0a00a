"""The study's figures: sweep curves, and layer x head grids drawn with eval_suite's one heatmap function."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval_suite.agreement import RAW
from eval_suite.plots import draw_layer_head_heatmap, pyplot, save_figure, save_layer_head_heatmap

from .records import INPUT_PAIR, MAPPING_ORDER, REPR_PAIR


def sweep_figure(rows: list[dict], knob: str, path: Path) -> None:
    """Input-importance entropy and tau(attention, importance) against the sparsity knob."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    xs = [r["knob"] for r in rows]
    for method in INPUT_PAIR:
        axes[0].plot(xs, [r["entropy"][method] for r in rows], "o-", label=method)
        axes[1].plot(xs, [r["tau"][method] for r in rows], "o-", label=f"tau(att, {method})")
    axes[1].plot(xs, [r["tau"]["repr_grad_norm"] for r in rows], "s--", label="tau(att, repr_grad_norm)")
    axes[0].set(xlabel=knob, ylabel="mean normalised entropy", title="input importance entropy")
    axes[1].set(xlabel=knob, ylabel="Kendall tau-b", title="attention vs importance")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    plt.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=90)


def layer_head_figure(by_mapping: dict[str, dict], path: Path, title: str) -> None:
    """tau(attention, importance) per layer x head: one row of panels per mapping, one column per method."""
    plt = pyplot()
    methods = INPUT_PAIR + REPR_PAIR
    mappings = [m for m in MAPPING_ORDER if m in by_mapping]
    fig, axes = plt.subplots(len(mappings), len(methods), figsize=(3.2 * len(methods), 2.2 * len(mappings) + 0.5),
                             squeeze=False)
    for i, mapping in enumerate(mappings):
        record = by_mapping[mapping]
        grid_shape = (record["eval"]["n_layers"], record["eval"]["n_heads"])
        for j, method in enumerate(methods):
            grid = np.full(grid_shape, np.nan)
            for h in record["eval"]["per_layer_head"]:
                value = h[RAW].get(method, {}).get("mean")
                grid[h["layer"], h["head"]] = np.nan if value is None else value
            image = draw_layer_head_heatmap(axes[i, j], grid, title=f"{mapping}: tau(att, {method})", vmin=-0.2,
                                            vmax=1.0, annotate=False)
    fig.colorbar(image, ax=axes, shrink=0.6)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=90)


def alpha_figure(record: dict, path: Path, title: str) -> None:
    """The learned alpha of every layer x head."""
    alphas = record.get("learned_alpha") or []
    grid = np.full((max(a["layer"] for a in alphas) + 1, max(a["head"] for a in alphas) + 1), np.nan)
    for a in alphas:
        grid[a["layer"], a["head"]] = a["alpha"]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_layer_head_heatmap(grid, title, path, vmin=1.0, vmax=2.0, cmap="magma", colorbar_label="learned alpha",
                            dpi=90)
