"""PNG heatmaps of a results dict (matplotlib, Agg backend): layer x head tables and token-level examples.

Every file is written to a temporary name in the target folder and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _grid(results: dict, getter) -> np.ndarray:
    grid = np.full((results["n_layers"], results["n_heads"]), np.nan)
    for entry in results["per_layer_head"]:
        value = getter(entry)
        grid[entry["layer"], entry["head"]] = np.nan if value is None else value
    return grid


def _heatmap(plt, grid: np.ndarray, title: str, path: Path, vmin=None, vmax=None, cmap="viridis") -> None:
    n_layers, n_heads = grid.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n_heads, 1.0 + 0.45 * n_layers))
    image = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_title(title, fontsize=9)
    if n_layers * n_heads <= 160:
        for (layer, head), value in np.ndenumerate(grid):
            if np.isfinite(value):
                r, g, b, _ = image.cmap(image.norm(value))
                ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"  # readable on the cell
                ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=6, color=ink)
    fig.colorbar(image, ax=ax)
    _save(fig, path)
    plt.close(fig)


def layer_head_plots(results: dict, out_dir: Path) -> list[str]:
    """tau-b per layer x head for each importance method, sparsity and attention entropy; returns relative paths."""
    plt = _pyplot()
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    label = results.get("attn_impl", "")
    for method in results["importance_methods"]:
        grid = _grid(results, lambda e, m=method: e["kendall_tau_b"][m]["mean"])
        name = f"kendall_tau_b_{method}.png"
        _heatmap(plt, grid, f"mean Kendall tau-b: attention vs {method} ({label})", plots_dir / name, -1, 1, "RdBu_r")
        written.append(f"plots/{name}")
    _heatmap(plt, _grid(results, lambda e: e["sparsity"]), f"attention sparsity (share of exact zeros, {label})",
             plots_dir / "sparsity.png", 0, 1)
    written.append("plots/sparsity.png")
    _heatmap(plt, _grid(results, lambda e: e["attention_entropy"]), f"normalised attention entropy ({label})",
             plots_dir / "attention_entropy.png", 0, 1)
    written.append("plots/attention_entropy.png")
    return written


def token_plots(token_maps: dict, out_dir: Path) -> list[str]:
    """One heatmap per example: rows = attention maps and importance methods, columns = content tokens."""
    plt = _pyplot()
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in sorted(token_maps, key=int):
        example = token_maps[index]
        names = list(example["maps"])
        grid = np.array([example["maps"][n] for n in names], dtype=float)
        tokens = example["tokens"]
        fig, ax = plt.subplots(figsize=(2.5 + 0.35 * len(tokens), 1.0 + 0.35 * len(names)))
        image = ax.imshow(grid, cmap="Reds", aspect="auto", vmin=0)
        ax.set_xticks(range(len(tokens)))
        ax.set_xticklabels(tokens, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=7)
        ax.set_title(f"example {index}: label {example['label']}, predicted {example['prediction']} "
                     "(each row normalised over the tokens)", fontsize=8)
        fig.colorbar(image, ax=ax)
        name = f"tokens_{int(index)}.png"
        _save(fig, plots_dir / name)
        plt.close(fig)
        written.append(f"plots/{name}")
    return written
