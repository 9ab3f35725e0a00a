"""Render a checkpoint's model card (README.md) from its evaluation results and training artifacts.

    render_card(checkpoint_dir, results_path, *, train_log=None) -> Path of README.md

Checks everything first (results belong to these weights, have every required field, plots exist, an existing
README parses), then writes through a staging folder inside the checkpoint: images, the results copy and the card
each land with one rename, the card last, so a refused or failed render leaves the old card as it was.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from hf_sparse_attn.constants import CARD_FILE, CARD_IMAGES_DIR, RESULTS_FILE

from .checkpoint import CheckpointInfo, alpha_of_setting, base_model_from, read_checkpoint
from .errors import CardError
from .metadata import (METADATA_KEY, card_data_from, dataset_identity, headline_from_results, headline_from_training,
                       merge_metadata, our_metadata)
from .results import GRADIENT_METHOD, CardScores, card_scores, load_results, plot_sources
from .sections import merge_sections, parse_sections

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "model_card.md.j2"
# CARD_IMAGES_DIR in a checkpoint folder is owned by the card: replaced as a whole on every render.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")
MODEL_TYPE_NAMES = {"bert": "BERT", "roberta": "RoBERTa", "distilbert": "DistilBERT", "electra": "ELECTRA",
                    "xlm-roberta": "XLM-RoBERTa", "modernbert": "ModernBERT", "deberta-v2": "DeBERTa-v2"}
PLACEHOLDER_REPO_ID = "ORG/NAME"
GENERIC_FOLDER_NAMES = ("final", "best", "model", "checkpoint")
MAX_LOG_ROWS = 12


# ---------------------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------------------

def _num(value, digits: int = 3) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _mean_std(stat) -> str:
    if not isinstance(stat, dict):
        return _num(stat)
    if stat.get("std") is None:
        return _num(stat.get("mean"))
    return f"{_num(stat.get('mean'))} ± {_num(stat.get('std'))}"


def _cell(value) -> str:
    """A value fit for a markdown table cell: local absolute paths shrink to their name, pipes are escaped."""
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    if isinstance(value, str) and os.path.isabs(value):
        text = Path(value).name  # a card is public: do not publish the trainer's home directory
    if len(text) > 80:
        text = text[:77] + "..."
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------------------------
# Template context
# ---------------------------------------------------------------------------------------------------------------

def _attn_label(info: CheckpointInfo) -> str:
    spec = info.sparse_attention or {}
    impl = info.attn_impl
    if impl == "entmax":
        return f"alpha-entmax (alpha = {spec.get('alpha'):g})"
    if impl == "entmax_learned":
        return f"alpha-entmax with a learned alpha per layer and head (started at {spec.get('alpha_init') or 1.5:g})"
    if impl == "sparsegen_lin":
        return f"sparsegen-lin (lambda = {spec.get('lambda'):g})"
    return {"entmax15": "entmax15 (alpha-entmax, alpha = 1.5)", "sparsemax": "sparsemax"}.get(impl, impl)


def _setting_rows(info: CheckpointInfo) -> list[list[str]]:
    spec = info.sparse_attention or {}
    rows = [["mapping (`attn_impl`)", f"`{info.attn_impl}`"]]
    for key in ("alpha", "lambda", "alpha_init"):
        if spec.get(key) is not None:
            rows.append([key, _cell(spec[key])])
    rows.append(["learned alpha per layer x head", "yes" if spec.get("learnable") else "no"])
    if spec.get("layers") is not None:
        rows.append(["sparse layers (the others: softmax)", ", ".join(str(i) for i in spec["layers"])])
    if not spec:
        rows.append(["note", "stock checkpoint: no `sparse_attention` in config.json"])
    return rows


def _alpha_table(alphas: list[list[float]] | None) -> dict | None:
    if not alphas:
        return None
    n_heads = max(len(row) for row in alphas)
    header = ["layer"] + [f"head {h}" for h in range(n_heads)] + ["mean"]
    rows = [[str(layer)] + [_num(a) for a in row] + [_num(sum(row) / len(row))] for layer, row in enumerate(alphas)]
    return {"header": header, "rows": rows}


def _score_rows(scores: CardScores) -> list[list[str]]:
    method = scores.gradient_method
    tau_meaning = (f"rank agreement (Kendall tau-b) between a head's attention over tokens and the `{method}` gradient "
                   "importance of the input tokens, per example, averaged over examples and the layer's heads; "
                   "1 same order, 0 unrelated, -1 reversed")
    return [
        ["Mean attention sparsity", _num(scores.mean_attention_sparsity),
         "share of attention weights over non-padded keys that are exactly zero, averaged over layers and heads"],
        [f"Mean Kendall tau-b, attention vs gradient importance, best layer (layer {scores.best_layer})",
         _num(scores.tau_best_layer), tau_meaning + "; the layer where it is highest"],
        [f"Mean Kendall tau-b, attention vs gradient importance, last layer (layer {scores.last_layer})",
         _num(scores.tau_last_layer), "the same, at the layer that feeds the classifier"],
        ["Mean input-to-representation entropy", _num(scores.mean_input_to_repr_entropy),
         "normalised entropy of how strongly each input token influences a layer's representations, averaged over "
         "positions, examples and layers; 1 every input counts equally, 0 a single input"],
    ]


def _agreement(tau: float) -> str:
    if tau <= -0.1:
        return "inversely related to"
    if tau < 0.1:
        return "essentially unrelated to"
    if tau < 0.3:
        return "weakly aligned with"
    if tau < 0.5:
        return "moderately aligned with"
    return "strongly aligned with"


def _reading(scores: CardScores) -> list[str]:
    """Plain-language reading of the summary scores; each sentence states the number it rests on."""
    paragraphs = []
    sparsity = scores.mean_attention_sparsity
    if sparsity < 0.005:
        paragraphs.append("Attention here gives every token some weight: almost no weight is exactly zero, as with "
                          "softmax.")
    else:
        support = (f", so a query attends to {scores.mean_support_size:.1f} tokens on average"
                   if scores.mean_support_size is not None else "")
        paragraphs.append(f"On average {_pct(sparsity)} of the attention weights are exactly zero{support}: each head "
                          "puts its weight on a small subset of positions.")
    if scores.tau_best_layer is not None:
        best = (f"Where attention agrees best with gradient importance (layer {scores.best_layer}), the order in which "
                f"it ranks tokens is {_agreement(scores.tau_best_layer)} the gradient ranking "
                f"(tau-b {_num(scores.tau_best_layer, 2)})")
        if scores.best_layer == scores.last_layer or scores.tau_last_layer is None:
            best += "; that is also the last layer."
        else:
            best += (f"; at the last layer (layer {scores.last_layer}) it is "
                     f"{_agreement(scores.tau_last_layer)} it (tau-b {_num(scores.tau_last_layer, 2)}).")
        paragraphs.append(best + " High agreement in one layer does not carry over to the others, so the per-layer "
                                 "table below matters more than any single number.")
    entropy = scores.mean_input_to_repr_entropy
    if entropy is not None:
        if entropy >= 0.7:
            spread = "draw on many input tokens at once"
        elif entropy >= 0.4:
            spread = "draw on a moderate number of input tokens"
        else:
            spread = "are dominated by a few input tokens"
        text = (f"The representations a layer attends over {spread} (mean normalised influence entropy "
                f"{_num(entropy, 2)}; 1 would be every token equally).")
        if entropy >= 0.4:
            text += (" A position that receives attention therefore stands for a mixture of inputs, not for its own "
                     "token alone")
            text += (", and sparse attention over such mixtures does not single out a small set of influential words."
                     if sparsity >= 0.005 else ".")
        paragraphs.append(text)
    return paragraphs


def _head_table(results: dict, alphas: list[list[float]] | None, gradient_method: str) -> dict:
    methods = [gradient_method] + [m for m in results["importance_methods"] if m != gradient_method]
    header = ["layer", "head"] + (["alpha"] if alphas else []) + ["sparsity", "support size", "attention entropy"]
    header += [f"tau-b vs `{m}`" for m in methods]
    rows = []
    for rec in sorted(results["per_layer_head"], key=lambda r: (r["layer"], r["head"])):
        row = [str(rec["layer"]), str(rec["head"])]
        if alphas:
            layer_alphas = alphas[rec["layer"]] if rec["layer"] < len(alphas) else []
            row.append(_num(layer_alphas[rec["head"]]) if rec["head"] < len(layer_alphas) else "–")
        row += [_num(rec.get("sparsity")), _num(rec.get("support_size"), 2), _num(rec.get("attention_entropy"))]
        row += [_mean_std(rec["kendall_tau_b"].get(m)) for m in methods]
        rows.append(row)
    return {"header": header, "rows": rows}


def _layer_table(results: dict, scores: CardScores) -> dict:
    has_coindexed = any("coindexed_share" in r for r in results["per_layer"])
    header = ["layer", f"mean tau-b vs `{scores.gradient_method}` (over heads)", "input-to-representation entropy"]
    header += ["co-indexed share"] if has_coindexed else []
    rows = []
    for rec in sorted(results["per_layer"], key=lambda r: r["layer"]):
        row = [str(rec["layer"]), _num(scores.tau_by_layer[rec["layer"]]), _mean_std(rec["input_to_repr_entropy"])]
        if has_coindexed:
            row.append(_mean_std(rec.get("coindexed_share")))
        rows.append(row)
    return {"header": header, "rows": rows}


def _training_context(info: CheckpointInfo) -> dict:
    ctx: dict = {"has_training": bool(info.training_args or info.final_metrics or info.train_log)}
    ctx["args_rows"] = [[f"`{k}`", _cell(v)] for k, v in (info.training_args or {}).items()]
    metric_keys = ["accuracy", "macro_f1", "loss", "step", "epoch"]
    final = info.final_metrics or {}
    if final and all(isinstance(v, dict) for v in final.values()):
        ctx["final_header"] = ["split"] + metric_keys
        ctx["final_rows"] = [[split] + [_cell(m.get(k, "–")) for k in metric_keys] for split, m in final.items()]
    elif final:
        ctx["final_header"] = ["metric", "value"]
        ctx["final_rows"] = [[k, _cell(v)] for k, v in final.items()]
    else:
        ctx["final_header"], ctx["final_rows"] = [], []

    log = info.train_log
    ctx["log_summary"] = ""
    if log:
        ctx["log_name"] = info.train_log_path.name
        validation = [r for r in log if r.get("split") in ("validation", "val", "dev")]
        steps = [r.get("step") for r in log if isinstance(r.get("step"), (int, float))]
        summary = f"{len(log)} evaluation records"
        if steps:
            summary += f" from step {min(steps):g} to step {max(steps):g}"
        scored = [r for r in validation if isinstance(r.get("accuracy"), (int, float))]
        if scored:
            best = max(scored, key=lambda r: r["accuracy"])
            summary += (f"; best validation accuracy {_num(best['accuracy'])} at step {_cell(best.get('step', '–'))}"
                        f" (epoch {_cell(best.get('epoch', '–'))})")
        shown = log if len(log) <= MAX_LOG_ROWS else [log[round(i * (len(log) - 1) / (MAX_LOG_ROWS - 1))]
                                                       for i in range(MAX_LOG_ROWS)]
        if len(shown) < len(log):
            summary += f". {len(shown)} of them, evenly spaced, below; the full log is in `{ctx['log_name']}`."
        else:
            summary += "."
        ctx["log_summary"] = summary
        has_alpha = any(any("alpha" in h for h in r.get("per_layer_head") or []) for r in log)
        ctx["log_header"] = ["step", "epoch", "split", "loss", "accuracy", "macro-F1", "mean sparsity"]
        ctx["log_header"] += ["mean alpha"] if has_alpha else []
        ctx["log_rows"] = []
        for r in shown:
            heads = r.get("per_layer_head") or []
            sparsities = [h["sparsity"] for h in heads if isinstance(h.get("sparsity"), (int, float))]
            row = [_cell(r.get("step", "–")), _num(r.get("epoch"), 2), _cell(r.get("split", "–")), _num(r.get("loss")),
                   _num(r.get("accuracy")), _num(r.get("macro_f1")),
                   _num(sum(sparsities) / len(sparsities)) if sparsities else "–"]
            if has_alpha:
                alphas = [h["alpha"] for h in heads if isinstance(h.get("alpha"), (int, float))]
                row.append(_num(sum(alphas) / len(alphas)) if alphas else "–")
            ctx["log_rows"].append(row)
    return ctx


def _provenance_rows(info: CheckpointInfo, results: dict) -> list[list[str]]:
    rows = [
        ["results file", f"[{RESULTS_FILE}]({RESULTS_FILE})"],
        ["weights fingerprint (checked against the results)", f"`{info.fingerprint}`"],
        ["dataset", _cell(results["dataset"])],
        ["split", _cell(results["split"])],
        ["examples", str(results["n_examples"])],
        ["attention setting evaluated", f"`{results['attn_impl']}`"],
        ["importance methods", ", ".join(f"`{m}`" for m in results["importance_methods"])],
    ]
    config = results.get("config")
    if isinstance(config, dict):
        rows += [[f"eval `{k}`", _cell(v)] for k, v in config.items()]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Heatmaps when the evaluation wrote none
# ---------------------------------------------------------------------------------------------------------------

def _draw_heatmaps(results: dict, gradient_method: str, outdir: Path) -> list[tuple[str, str]]:
    """Layer x head heatmaps of sparsity and tau-b, for results.json files that list no plots."""
    from eval_suite.plots import layer_head_grid, save_layer_head_heatmap

    panels = [("sparsity", "Attention sparsity (share of exact zeros)", lambda r: r["sparsity"], (0, 1)),
              (f"kendall_tau_b_{gradient_method}", f"Kendall tau-b, attention vs {gradient_method}",
               lambda r: r["kendall_tau_b"][gradient_method]["mean"], (-1, 1))]
    drawn = []
    outdir.mkdir(parents=True, exist_ok=True)
    for name, title, value_of, (vmin, vmax) in panels:
        filename = f"{name}_heatmap.png"
        save_layer_head_heatmap(layer_head_grid(results, value_of), title, outdir / filename, vmin=vmin, vmax=vmax,
                                dpi=100)
        drawn.append((filename, title))
    return drawn


def _caption(rel_path: str) -> str:
    return Path(rel_path).stem.replace("_", " ").replace("-", " ").strip().capitalize()


def _image_destination(rel_path: str) -> str:
    """Where a plot lands in the checkpoint: under interpretability/, keeping its path below results.json."""
    return rel_path if rel_path.startswith(CARD_IMAGES_DIR + "/") else f"{CARD_IMAGES_DIR}/{rel_path}"


# ---------------------------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------------------------

def split_card(text: str, *, source: str) -> tuple[dict, str]:
    """(metadata dict, body) of a README; CardError when its YAML block does not parse."""
    match = REGEX_YAML_BLOCK.search(text)
    if not match:
        return {}, text
    try:
        metadata = yaml.safe_load(match.group(2)) or {}
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise CardError(f"{source} has a YAML metadata block that does not parse ({problem}); fix or remove it") from None
    if not isinstance(metadata, dict):
        raise CardError(f"{source} metadata block is not a mapping; fix or remove it")
    return metadata, text[match.end():]


def _folder_title(folder: Path) -> str:
    """The folder's name, or its parent's for generic names such as the training command's OUTDIR/final."""
    resolved = folder.resolve()
    return resolved.parent.name if resolved.name in GENERIC_FOLDER_NAMES and resolved.parent.name else resolved.name


def _check_results_match(results: dict, results_path, info: CheckpointInfo) -> None:
    folder = info.folder
    if results["weights_fingerprint"] != info.fingerprint:
        raise CardError(f"{results_path} was computed on other weights ({results['weights_fingerprint']}) than "
                        f"{folder} ({info.fingerprint}); evaluate this checkpoint or pass its own results.json")
    if info.n_layers is not None and (results["n_layers"], results["n_heads"]) != (info.n_layers, info.n_heads):
        raise CardError(f"{results_path} describes {results['n_layers']} layers x {results['n_heads']} heads but "
                        f"{folder} has {info.n_layers} x {info.n_heads}; evaluate this checkpoint")
    evaluated_impl = ((results.get("sparse_attention") or {}).get("attn_impl")
                      or results["attn_impl"].partition(":")[0].strip())
    if evaluated_impl != info.attn_impl:
        raise CardError(f"{results_path} was measured with attn_impl {evaluated_impl!r} but {folder} uses "
                        f"{info.attn_impl!r}; evaluate the checkpoint with its own attention setting")


def render_card(checkpoint_dir, results_path, *, train_log=None, repo_id: str | None = None,
                base_model: str | None = None, gradient_method: str | None = None) -> Path:
    """Write CHECKPOINT/README.md (and copy results.json and the plots) for the results of evaluating CHECKPOINT.

    ``results_path=None`` renders a card from the checkpoint and its training files alone (what a push straight
    after training publishes); its score sections say how to fill them, which a later render with results does.
    ``repo_id`` goes into the loading snippet (default: the one recorded by an earlier render, else ORG/NAME);
    ``base_model`` overrides the Hub id read from training_args.json; ``gradient_method`` names the importance
    whose agreement with attention the summary reports (default ``grad_norm``). Raises CardError, leaving the
    folder untouched, when the results belong to other weights or lack required fields.
    """
    folder = Path(checkpoint_dir)
    info = read_checkpoint(folder, train_log=train_log)
    card_path = folder / CARD_FILE
    old_text = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    old_metadata, old_body = split_card(old_text, source=str(card_path))
    parse_sections(old_body, source=str(card_path))  # refuse broken markers before any work
    recorded = old_metadata.get(METADATA_KEY) if isinstance(old_metadata.get(METADATA_KEY), dict) else {}
    gradient_method = gradient_method or recorded.get("gradient_method") or GRADIENT_METHOD
    repo_id = repo_id or recorded.get("repo_id")

    results = scores = None
    plots: list[tuple[str, Path]] = []
    if results_path is not None:
        results = load_results(results_path, gradient_method=gradient_method)
        _check_results_match(results, results_path, info)
        plots = plot_sources(results, results_path)
        scores = card_scores(results, gradient_method=gradient_method)
        headline = headline_from_results(results)
    else:
        headline = headline_from_training(info)

    model_name = (repo_id or "").split("/")[-1] or _folder_title(folder)
    base_model = base_model or base_model_from(info)
    ours = our_metadata(info, headline, scores, model_name=model_name, base_model=base_model, repo_id=repo_id,
                        results_file=RESULTS_FILE if results else None)
    metadata = merge_metadata(old_metadata, ours)
    card_data = card_data_from(metadata)

    image_sources = [(_image_destination(rel), source) for rel, source in plots]
    context = _template_context(folder, info, metadata, headline, repo_id, model_name)
    if results is not None:
        context.update(_score_context(info, results, scores, gradient_method))
    return _write_card(folder, card_path, card_data, context, old_metadata, old_body, results, image_sources,
                       gradient_method)


def _template_context(folder: Path, info: CheckpointInfo, metadata: dict, headline, repo_id: str | None,
                      model_name: str) -> dict:
    """What every card shows: the model, how to load it, its attention setting and its training."""
    shown_base = metadata.get("base_model") if isinstance(metadata.get("base_model"), str) else None
    has_tokenizer = any((folder / name).is_file() for name in TOKENIZER_FILES)
    remote_code = sorted(p.name for p in folder.glob("sparse_attn_*.py"))
    return dict(
        has_results=False,
        model_title=model_name,
        model_type=MODEL_TYPE_NAMES.get(info.model_type, info.model_type or "Transformer"),
        attn_label=_attn_label(info),
        headline=headline,
        dataset_name=dataset_identity(headline.dataset)[2] if headline else None,
        accuracy=_num(headline.accuracy) if headline else None,
        macro_f1=_num(headline.macro_f1) if headline else None,
        model_id=repo_id or PLACEHOLDER_REPO_ID,
        tokenizer_id="model_id" if has_tokenizer or not shown_base else json.dumps(shown_base),
        has_tokenizer=has_tokenizer,
        base_model=shown_base,
        remote_code_files=", ".join(f"`{name}`" for name in remote_code),
        has_remote_code=bool(remote_code),
        setting_rows=_setting_rows(info),
        alpha_table=_alpha_table(info.learned_alphas),
        alpha_learned=bool((info.sparse_attention or {}).get("learnable")),
        sparse_layers=", ".join(str(i) for i in (info.sparse_attention or {}).get("layers") or []),
        fixed_alpha=_num(alpha_of_setting(info.sparse_attention), 2) if not info.learned_alphas else None,
        folder_name=folder.name,
        **_training_context(info),
    )


def _score_context(info: CheckpointInfo, results: dict, scores: CardScores, gradient_method: str) -> dict:
    """What a card with evaluation results adds: scores, their reading, per-head tables and provenance."""
    return dict(
        has_results=True,
        n_examples=results["n_examples"],
        sparsity_sentence=(f"{_pct(scores.mean_attention_sparsity)} of its attention weights are exactly zero "
                           "(mean over layers and heads)."),
        score_rows=_score_rows(scores),
        reading=_reading(scores),
        head_table=_head_table(results, info.learned_alphas, gradient_method),
        head_table_note=("Sparsity: share of exact zeros over non-padded keys; support size: non-zero weights "
                         "per query; attention entropy: normalised entropy of a query's attention; tau-b: "
                         "mean ± std over examples."),
        layer_table=_layer_table(results, scores),
        provenance_rows=_provenance_rows(info, results),
    )


def _write_card(folder: Path, card_path: Path, card_data, context: dict, old_metadata: dict, old_body: str,
                results: dict | None, image_sources: list, gradient_method: str) -> Path:
    """Stage images, the results copy and the card inside the folder, then rename each into place (card last)."""
    staging = Path(tempfile.mkdtemp(prefix=".hub_cards-", dir=folder))
    try:
        images = staging / CARD_IMAGES_DIR
        images.mkdir()
        if results is not None:
            for destination, source in image_sources:
                (staging / destination).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, staging / destination)
            if image_sources:
                context["plots"] = [{"caption": _caption(dest), "path": dest} for dest, _ in image_sources]
            else:
                drawn = _draw_heatmaps(results, gradient_method, images)
                context["plots"] = [{"caption": title, "path": f"{CARD_IMAGES_DIR}/{name}"} for name, title in drawn]

        rendered = ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **context)
        body = merge_sections(old_body, rendered.text.lstrip("\n")).lstrip("\n")
        text = f"---\n{card_data.to_yaml(original_order=list(old_metadata))}\n---\n\n{body}"
        text += "" if text.endswith("\n") else "\n"
        _check_round_trip(text, expected_metrics=len(card_data.eval_results or []))
        (staging / CARD_FILE).write_text(text, encoding="utf-8")

        if results is not None:
            results_copy = dict(results)
            results_copy["plots"] = [dest for dest, _ in image_sources]  # relative to results.json, now in CHECKPOINT
            results_copy["checkpoint"] = "."  # the folder it now sits in (and no local path on the Hub)
            (staging / RESULTS_FILE).write_text(json.dumps(results_copy, indent=2) + "\n", encoding="utf-8")
            target = folder / CARD_IMAGES_DIR
            if target.exists():
                os.replace(target, staging / "previous-images")
            os.replace(images, target)
            os.replace(staging / RESULTS_FILE, folder / RESULTS_FILE)
        os.replace(staging / CARD_FILE, card_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return card_path


def _check_round_trip(text: str, *, expected_metrics: int) -> None:
    """The card we are about to write must load back with huggingface_hub with its model-index intact."""
    try:
        card = ModelCard(text)
    except ValueError as err:
        raise CardError(f"the rendered card does not parse with huggingface_hub ({err}); this is a bug in hub_cards") from None
    if len(card.data.eval_results or []) != expected_metrics:
        raise CardError("the rendered card lost model-index entries on reload; this is a bug in hub_cards")
