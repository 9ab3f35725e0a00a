"""PNG heatmaps of a results dict (matplotlib, Agg backend): layer x head tables and token-level examples.

Sized for where they are read: a model card on the Hub shows an image at its own pixel width, scaled down to the
card's text column when wider. Figures here are drawn so that every label is at least ``MIN_LABEL_PT`` points
as shown there (:func:`shown_points` is that arithmetic). Undefined cells (NaN) are hatched grey and labelled
"n/a", never left blank. Every file is written to a temporary name in the target folder and renamed into place.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from hf_sparse_attn.constants import PLOTS_DIR
from hf_sparse_attn.files import atomic_path

from .agreement import HEADLINE, RAW

# Width in CSS pixels of the text column of a model card on huggingface.co (desktop layout); a wider image is
# scaled down to it, and its labels with it.
HUB_CARD_WIDTH_PX = 730
MIN_LABEL_PT = 10
FONT_PT = 10.5  # drawn size; at DPI it is shown at 10.9 pt when the image fits the column
DPI = 100
UNDEFINED_FACE = "#e6e6e6"
UNDEFINED_HATCH = "////"
_CELL_IN = 0.46  # a head's column when it fits
_MIN_ANNOTATED_CELL_IN = 0.38  # room for "-.25" at FONT_PT
_FRAME_IN = 1.9  # layer labels and colorbar beside the cells
_ROW_IN = 0.32
_MAX_ANNOTATED_HEADS = 16


def shown_points(font_pt: float, *, dpi: float, image_width_px: float,
                 column_px: float = HUB_CARD_WIDTH_PX) -> float:
    """The size (CSS points, 96 px per inch) at which text drawn at ``font_pt`` in an image saved at ``dpi`` is
    shown in a column ``column_px`` wide: the image keeps its pixel width unless wider than the column."""
    scale = min(1.0, column_px / image_width_px)
    return font_pt * dpi / 96.0 * scale


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, *, dpi: int = DPI) -> None:
    """Write ``fig`` to ``path`` atomically (no timestamp metadata, so equal figures give equal bytes), then close it."""
    with atomic_path(path, fsync=False) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None}, format=path.suffix.lstrip("."))
    pyplot().close(fig)


def stat_mean(value) -> float | None:
    """The mean of a results statistic: a number, or a ``{"mean", ..., "defined"}`` dict (None when undefined)."""
    from .report import statistic

    mean, *_, defined, _reason = statistic(value)
    return mean if defined else None


def layer_head_grid(results: dict, getter) -> np.ndarray:
    """[n_layers, n_heads] of ``getter(per_layer_head entry)`` (a number or a statistic dict); NaN where undefined."""
    grid = np.full((results["n_layers"], results["n_heads"]), np.nan)
    for entry in results["per_layer_head"]:
        try:
            value = stat_mean(getter(entry))
        except (KeyError, TypeError):  # a field this results file does not have: undefined, drawn as such
            value = None
        grid[entry["layer"], entry["head"]] = np.nan if value is None else value
    return grid


def _cell_text(value: float) -> str:
    """Two decimals without the leading zero (".25", "-.07", "1.00"): fits a head's column at 10 pt."""
    text = f"{value:.2f}"
    text = "0.00" if text == "-0.00" else text
    return text.replace("0.", ".", 1) if text.lstrip("-").startswith("0.") else text


def draw_layer_head_heatmap(ax, grid: np.ndarray, *, title: str, vmin=None, vmax=None, cmap="viridis",
                            annotate: bool = True, fontsize: float = FONT_PT, columns=None):
    """Draw a layer x head grid on ``ax`` (layers down, heads across, 0-based); returns the image for a colorbar.

    ``columns`` names the columns when they are not heads (then labelled with those names, "view" below).
    NaN cells are hatched grey and, when annotated, labelled "n/a". Annotation is skipped for more than
    16 heads, where values at ``fontsize`` would not fit their cells. The one heatmap of the project: evaluation
    plots, model cards and the paper study all draw with it.
    """
    from matplotlib.patches import Rectangle

    n_layers, n_heads = grid.shape
    ax.set_facecolor("white")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xlabel("head" if columns is None else "view", fontsize=fontsize)
    ax.set_ylabel("layer", fontsize=fontsize)
    ax.set_xticks(range(n_heads))
    if columns is not None:
        ax.set_xticklabels(list(columns))
    ax.set_yticks(range(n_layers))
    ax.tick_params(labelsize=fontsize)
    ax.set_title(title, fontsize=fontsize + 0.5)
    annotate = annotate and n_heads <= _MAX_ANNOTATED_HEADS
    for (layer, head), value in np.ndenumerate(grid):
        if not np.isfinite(value):
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, facecolor=UNDEFINED_FACE, edgecolor="#9a9a9a",
                                   hatch=UNDEFINED_HATCH, linewidth=0.0))
            if annotate:
                ax.text(head, layer, "n/a", ha="center", va="center", fontsize=fontsize, color="#444444")
        elif annotate:
            r, g, b, _ = image.cmap(image.norm(value))
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"  # readable on the cell
            ax.text(head, layer, _cell_text(value), ha="center", va="center", fontsize=fontsize, color=ink)
    return image


def save_layer_head_heatmap(grid: np.ndarray, title: str, path: Path, *, vmin=None, vmax=None, cmap="viridis",
                            colorbar_label: str | None = None, dpi: int = DPI, note: str | None = None,
                            columns=None) -> None:
    """One layer x head heatmap with its colorbar (and an optional note below it), written to ``path``."""
    plt = pyplot()
    n_layers, n_heads = grid.shape
    # As wide as the card's column at most: a wider image is shrunk and its labels with it. Values are written
    # in the cells only where a cell still has room for them at FONT_PT.
    cell = min(_CELL_IN, (HUB_CARD_WIDTH_PX / dpi - _FRAME_IN) / n_heads)
    if columns is not None:  # named columns ("layer", "inputs") need room for their names
        cell = max(cell, min(3 * _CELL_IN, (HUB_CARD_WIDTH_PX / dpi - _FRAME_IN) / n_heads))
    fig, ax = plt.subplots(figsize=(_FRAME_IN + cell * n_heads, 1.3 + _ROW_IN * n_layers))
    image = draw_layer_head_heatmap(ax, grid, title=title, vmin=vmin, vmax=vmax, cmap=cmap,
                                    annotate=cell >= _MIN_ANNOTATED_CELL_IN, columns=columns)
    if n_heads > 24:  # every head's number no longer fits under its column
        ax.set_xticks(range(0, n_heads, 2))
    colorbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    colorbar.ax.tick_params(labelsize=FONT_PT)
    if colorbar_label:
        colorbar.set_label(colorbar_label, fontsize=FONT_PT)
    n_undefined = int(np.isnan(grid).sum())
    lines = [note] if note else []
    if n_undefined:
        lines.append(f"hatched n/a: undefined in {n_undefined} of {grid.size} {'heads' if columns is None else 'cells'}"
                     " (reasons in report.html)")
    if lines:
        ax.set_xlabel(("head" if columns is None else "view") + "\n" + "\n".join(lines), fontsize=FONT_PT)
    save_figure(fig, path, dpi=dpi)


def file_part(name: str) -> str:
    """A method's name as part of a file name: characters other than letters, digits, ``_``, ``-`` and ``.``
    become ``_`` (``captum:NoiseTunnel(Saliency)`` -> ``captum_NoiseTunnel_Saliency_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _symmetric_limit(grid: np.ndarray) -> float:
    """Half-width of a diverging scale centred on 0: the largest |value| rounded up to 0.1 (at least 0.1)."""
    finite = np.abs(grid[np.isfinite(grid)])
    return max(0.1, math.ceil(float(finite.max()) * 10) / 10) if finite.size else 1.0


def _has_field(results: dict, key: str) -> bool:
    return any(key in entry for entry in results["per_layer_head"])


def layer_head_plots(results: dict, out_dir: Path) -> list[str]:
    """tau-b per layer x head for each importance method (and its excess over the null where measured), sparsity
    and attention entropy; returns the paths relative to ``out_dir``."""
    plots_dir = out_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    label = results.get("attn_impl", "")
    for method in results["importance_methods"]:
        grid = layer_head_grid(results, lambda e, m=method: e[RAW][m])
        name = f"{RAW}_{file_part(method)}.png"
        save_layer_head_heatmap(grid, f"Kendall tau-b: attention vs {method}\n({label}, mean over examples)",
                                plots_dir / name, vmin=-1, vmax=1, cmap="RdBu_r")
        written.append(f"{PLOTS_DIR}/{name}")
        if _has_field(results, HEADLINE):
            grid = layer_head_grid(results, lambda e, m=method: e[HEADLINE][m])
            limit = _symmetric_limit(grid)
            name = f"{HEADLINE}_{file_part(method)}.png"
            save_layer_head_heatmap(grid, f"tau-b excess over the null: attention vs {method}\n({label})",
                                    plots_dir / name, vmin=-limit, vmax=limit, cmap="RdBu_r",
                                    note="0 = no more agreement than the structure-preserving null")
            written.append(f"{PLOTS_DIR}/{name}")
    save_layer_head_heatmap(layer_head_grid(results, lambda e: e["attention_sparsity"]),
                            f"attention sparsity: share of exact zeros\n({label})",
                            plots_dir / "attention_sparsity.png", vmin=0, vmax=1)
    written.append(f"{PLOTS_DIR}/attention_sparsity.png")
    save_layer_head_heatmap(layer_head_grid(results, lambda e: e["attention_entropy"]),
                            f"normalised attention entropy\n({label})", plots_dir / "attention_entropy.png",
                            vmin=0, vmax=1)
    written.append(f"{PLOTS_DIR}/attention_entropy.png")
    return written + mixing_plots(results, out_dir)


def mixing_against(results: dict) -> str | None:
    """The importance method the context-mixing plots compare with: the first input method measured (the
    gradient, in every standard tier), else the first method measured; None when nothing was compared."""
    methods = results.get("input_methods") or results.get("importance_methods") or []
    return methods[0] if methods else None


def mixing_grid(results: dict, method: str, against: str) -> tuple[np.ndarray, list[str] | None]:
    """Excess tau-b of one context-mixing method against ``against``: [layers, heads] from the per-head view where
    the method has one, else [layers, views] from the per-layer figures (column names returned, None for heads)."""
    views = results["mixing_methods"][method]
    if "head" in views:
        return layer_head_grid(results, lambda e: e["mixing"][method][HEADLINE][against]), None
    grid = np.full((results["n_layers"], len(views)), np.nan)
    for entry in results["per_layer"]:
        for column, view in enumerate(views):
            agreement = entry["mixing"][method][view]["agreement"].get(against)
            value = stat_mean(agreement[HEADLINE]) if agreement else None
            grid[entry["layer"], column] = np.nan if value is None else value
    return grid, views


def mixing_plots(results: dict, out_dir: Path) -> list[str]:
    """One heatmap per context-mixing method: its excess tau-b over the null against the first input method, per
    layer and head (or per layer and view); returns the paths relative to ``out_dir``."""
    against = mixing_against(results)
    if not results.get("mixing_methods") or against is None:
        return []
    written = []
    label = results.get("attn_impl", "")
    for method in results["mixing_methods"]:
        grid, columns = mixing_grid(results, method, against)
        limit = _symmetric_limit(grid)
        name = f"mixing_{HEADLINE}_{method}_{file_part(against)}.png"
        save_layer_head_heatmap(grid, f"tau-b excess over the null: {method} vs {against}\n({label})",
                                out_dir / PLOTS_DIR / name, vmin=-limit, vmax=limit, cmap="RdBu_r", columns=columns,
                                note="[CLS] row over content tokens; inputs: through layers 0..l")
        written.append(f"{PLOTS_DIR}/{name}")
    return written


def class_name(label_names, label: int) -> str:
    """The name of class ``label`` when the dataset names its classes, else the number."""
    if label_names and 0 <= int(label) < len(label_names):
        return str(label_names[int(label)])
    return str(label)


def example_title(index, example: dict, label_names=None) -> str:
    """'example 12: label fresh, predicted rotten (p = 0.73)' (p = the predicted class's probability, when stored)."""
    title = (f"example {index}: label {class_name(label_names, example['label'])}, "
             f"predicted {class_name(label_names, example['prediction'])}")
    probability = example.get("probability")
    return title + (f" (p = {probability:.2f})" if isinstance(probability, (int, float)) else "")


def _short_map_name(name: str) -> str:
    return name.replace("attention layer ", "attention L").replace("projected layer ", "projected L")


def _hatch_undefined_columns(ax, columns: list[int], n_tokens: int) -> None:
    """Hatch whole columns of a token plot grey and label them "n/a" (a map with no weight on any content token has
    no distribution to draw: NaN in token_examples.json), as the layer x head heatmaps draw undefined cells."""
    from matplotlib.patches import Rectangle

    for column in columns:
        ax.add_patch(Rectangle((column - 0.5, -0.5), 1, n_tokens, facecolor=UNDEFINED_FACE, edgecolor="#9a9a9a",
                               hatch=UNDEFINED_HATCH, linewidth=0.0))
        ax.text(column, min(n_tokens - 1, 0), "n/a", ha="center", va="center", fontsize=FONT_PT, color="#444444",
                rotation=90 if n_tokens > 1 else 0)


SECOND_TEXT_COLOR = "#1f4e9c"


def _mark_second_text(ax, segments) -> str | None:
    """A text pair: a line where the [SEP] between the two texts was and the second text's tokens in blue; returns
    the note that says so (None for a single text)."""
    if not segments or max(segments) < 1:
        return None
    for position in range(1, len(segments)):
        if segments[position] != segments[position - 1]:
            ax.axhline(position - 0.5, color="black", linewidth=2.0)
    for label, segment in zip(ax.get_yticklabels(), segments):
        if segment > 0:
            label.set_color(SECOND_TEXT_COLOR)
    return "line: the [SEP] between the texts;\nblue: the second text"


def token_plots(token_maps: dict, out_dir: Path, label_names=None) -> list[str]:
    """One heatmap per stored example: tokens down, attention and importance maps across (each sums to 1 over the
    content tokens; a map with no weight on them, such as a layer whose heads all attend only to special tokens,
    is a hatched "n/a" column), titled with the class names and the predicted probability; returns relative paths.

    Tokens run down the page so that a long text grows the image's height, which the Hub never scales, and
    not its width, which it does.
    """
    plt = pyplot()
    plots_dir = out_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in sorted(token_maps, key=int):
        example = token_maps[index]
        names = list(example["maps"])
        grid = np.array([[np.nan if v is None else v for v in example["maps"][n]] for n in names], dtype=float).T
        tokens = example["tokens"]
        fig, ax = plt.subplots(figsize=(2.4 + 0.36 * len(names), 2.6 + 0.24 * len(tokens)))
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="Reds", aspect="auto", vmin=0)
        ax.set_yticks(range(len(tokens)))
        ax.set_yticklabels(tokens, fontsize=FONT_PT)
        ax.set_xticks(range(len(names)))
        ax.xaxis.tick_top()
        ax.set_xticklabels([_short_map_name(n) for n in names], rotation=60, ha="left", fontsize=FONT_PT)
        undefined = [column for column in range(len(names)) if not np.isfinite(grid[:, column]).any()]
        _hatch_undefined_columns(ax, undefined, len(tokens))
        notes = [_mark_second_text(ax, example.get("segments"))]
        claim = "each defined column sums to 1" if undefined else "each column sums to 1"
        ax.set_title(f"{example_title(index, example, label_names)}\n{claim} over the content tokens",
                     fontsize=FONT_PT + 0.5, loc="left")
        if undefined:
            notes.append(f"hatched n/a: {len(undefined)} of {len(names)} maps put\nno weight on content tokens "
                         "(attention:\nall on special tokens)")
        if any(notes):
            ax.set_xlabel("\n".join(note for note in notes if note), fontsize=FONT_PT)
        colorbar = fig.colorbar(image, ax=ax, fraction=0.06, pad=0.03)
        colorbar.ax.tick_params(labelsize=FONT_PT)
        name = f"tokens_{int(index)}.png"
        save_figure(fig, plots_dir / name)
        written.append(f"{PLOTS_DIR}/{name}")
    return written
