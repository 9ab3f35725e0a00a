"""PNG heatmaps of a results dict (matplotlib, Agg backend): layer x head tables and token-level examples.

Every file is written to a temporary name in the target folder and renamed into place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hf_sparse_attn.constants import PLOTS_DIR
from hf_sparse_attn.files import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, *, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` atomically (no timestamp metadata, so equal figures give equal bytes), then close it."""
    with atomic_path(path, fsync=False) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None}, format=path.suffix.lstrip("."))
    pyplot().close(fig)


def layer_head_grid(results: dict, getter) -> np.ndarray:
    """[n_layers, n_heads] of ``getter(per_layer_head entry)``; NaN where it gives None."""
    grid = np.full((results["n_layers"], results["n_heads"]), np.nan)
    for entry in results["per_layer_head"]:
        value = getter(entry)
        grid[entry["layer"], entry["head"]] = np.nan if value is None else value
    return grid


def draw_layer_head_heatmap(ax, grid: np.ndarray, *, title: str, vmin=None, vmax=None, cmap="viridis",
                            annotate: bool = True, fontsize: int = 6):
    """Draw a layer x head grid on ``ax`` (layers down, heads across, 0-based); returns the image for a colorbar.

    The one heatmap of the project: evaluation plots, model cards and the paper study all draw with it.
    """
    n_layers, n_heads = grid.shape
    image = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_title(title, fontsize=9)
    if annotate and n_layers * n_heads <= 160:
        for (layer, head), value in np.ndenumerate(grid):
            if np.isfinite(value):
                r, g, b, _ = image.cmap(image.norm(value))
                ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"  # readable on the cell
                ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=fontsize, color=ink)
    return image


def save_layer_head_heatmap(grid: np.ndarray, title: str, path: Path, *, vmin=None, vmax=None, cmap="viridis",
                            colorbar_label: str | None = None, dpi: int = 110) -> None:
    """One layer x head heatmap with its colorbar, written to ``path``."""
    plt = pyplot()
    n_layers, n_heads = grid.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n_heads, 1.0 + 0.45 * n_layers))
    image = draw_layer_head_heatmap(ax, grid, title=title, vmin=vmin, vmax=vmax, cmap=cmap)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    save_figure(fig, path, dpi=dpi)


def _mean(stat):
    return stat.get("mean") if isinstance(stat, dict) else stat


def layer_head_plots(results: dict, out_dir: Path) -> list[str]:
    """Per layer x head: the excess of tau-b over the shared-zeros null and the raw tau-b for each importance
    method, attention sparsity and entropy (undefined cells blank); returns the files' paths relative to out_dir."""
    plots_dir = out_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    label = results.get("attn_impl", "")
    for method in results["importance_methods"]:
        for metric, title in (("kendall_tau_b_excess", "tau-b excess over the shared-zeros null"),
                              ("kendall_tau_b", "raw Kendall tau-b")):
            grid = layer_head_grid(results, lambda e, m=method, k=metric: _mean(e[k][m]))
            name = f"{metric}_{method}.png"
            save_layer_head_heatmap(grid, f"{title}: attention vs {method} ({label})", plots_dir / name,
                                    vmin=-1, vmax=1, cmap="RdBu_r")
            written.append(f"{PLOTS_DIR}/{name}")
    for key, title in (("attention_sparsity", "attention sparsity over content tokens (share of exact zeros)"),
                       ("attention_entropy", "normalised attention entropy over content tokens")):
        save_layer_head_heatmap(layer_head_grid(results, lambda e, k=key: _mean(e[k])), f"{title} ({label})",
                                plots_dir / f"{key}.png", vmin=0, vmax=1)
        written.append(f"{PLOTS_DIR}/{key}.png")
    return written


def token_plots(token_maps: dict, out_dir: Path) -> list[str]:
    """One heatmap per example: rows = attention maps and importance methods, columns = content tokens."""
    plt = pyplot()
    plots_dir = out_dir / PLOTS_DIR
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
        save_figure(fig, plots_dir / name)
        written.append(f"{PLOTS_DIR}/{name}")
    return written
