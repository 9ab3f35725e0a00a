"""Render a checkpoint's model card (README.md) from its evaluation results and training artifacts.

    render_card(checkpoint_dir, results_path, *, train_log=None) -> Path of README.md

The card's first screen says what the model is, how to load it, its accuracy with n and interval, the headline
agreement of attention with gradient importance with its interval, and where the full report is; everything else is
folded (``<details>``), and every layer x head with the heatmaps goes to ``interpretability/scores.md``. Text taken
from files (results.json, training files, file names) is escaped (escape.py); ids are checked (hub_ids.py).

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
from importlib import metadata as package_metadata
from pathlib import Path

import jinja2
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from eval_suite.agreement import HEADLINE, RAW
from eval_suite.report import write_report
from hf_sparse_attn.constants import CARD_FILE, CARD_IMAGES_DIR, REPORT_FILE, RESULTS_FILE
from hf_sparse_attn.sparse_attn_modeling import ATTN_IMPLS

from .checkpoint import CheckpointInfo, alpha_of_setting, base_model_from, read_checkpoint
from .errors import CardError
from .escape import cell, code, text, url
from .hub_ids import base_model_problem, is_hub_id, license_problem, repo_id_problem
from .metadata import (METADATA_KEY, Headline, base_model_license, card_data_from, choose_headline,
                       dataset_identity, merge_metadata, our_metadata)
from .results import (GRADIENT_METHOD, CardScores, card_scores, load_results, load_token_examples, null_is_zero,
                      plot_sources, stat_mean)
from .sections import merge_sections, parse_sections

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
CARD_TEMPLATE = "model_card.md.j2"
SCORES_TEMPLATE = "scores.md.j2"
SCORES_PAGE = "scores.md"  # every layer x head and every heatmap, in CARD_IMAGES_DIR beside the images
# CARD_IMAGES_DIR in a checkpoint folder is owned by the card: replaced as a whole on every render.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")
MODEL_TYPE_NAMES = {"bert": "BERT", "roberta": "RoBERTa", "distilbert": "DistilBERT", "electra": "ELECTRA",
                    "xlm-roberta": "XLM-RoBERTa", "modernbert": "ModernBERT", "deberta-v2": "DeBERTa-v2"}
PLACEHOLDER_REPO_ID = "ORG/NAME"
GENERIC_FOLDER_NAMES = ("final", "best", "model", "checkpoint")
MAX_LOG_ROWS = 12
PACKAGE = "hf-sparse-attn"


# ---------------------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------------------

def _num(value, digits: int = 3) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


# ---------------------------------------------------------------------------------------------------------------
# Template context
# ---------------------------------------------------------------------------------------------------------------

def _attn_label(info: CheckpointInfo) -> str:
    impl = ATTN_IMPLS.get(info.attn_impl)
    return info.attn_impl if impl is None else impl.describe(info.sparse_attention or {})


def _setting_rows(info: CheckpointInfo) -> list[list[str]]:
    spec = info.sparse_attention or {}
    rows = [["mapping (`attn_impl`)", code(info.attn_impl)]]
    for key in ("alpha", "lambda", "alpha_init"):
        if spec.get(key) is not None:
            rows.append([key, cell(spec[key])])
    rows.append(["learned alpha per layer x head", "yes" if spec.get("learnable") else "no"])
    if spec.get("layers") is not None:
        rows.append(["sparse layers (the others: softmax)", cell(", ".join(str(i) for i in spec["layers"]))])
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


def _stat(stat, digits: int = 3, *, with_reason: bool = True) -> str:
    """A stat as a table cell: mean [95% interval] (n), or "undefined" with the reason."""
    if not isinstance(stat, dict):
        return _num(stat, digits)
    if not stat.get("defined") or stat.get("mean") is None:
        reason = stat.get("reason") if with_reason else None
        return "undefined" + (f" ({text(reason)})" if reason else "")
    ci = stat.get("ci95")
    interval = f" [{_num(ci[0], digits)}, {_num(ci[1], digits)}]" if ci else ""
    return f"{_num(stat['mean'], digits)}{interval} (n={stat.get('n')})"


def _score_rows(scores: CardScores) -> list[list[str]]:
    method = code(scores.gradient_method)
    excess_meaning = (f"Kendall tau-b between a head's attention over content tokens and the {method} importance of "
                      "the input tokens, minus the tau-b that the two vectors' zero patterns alone give (the "
                      "structure-preserving null: importance values shuffled among their own non-zero positions); "
                      "0 = no agreement beyond shared zeros, pooled over examples and the defined heads")
    last = scores.layer(scores.last_layer)
    rows = [["Excess tau-b over the shared-zeros null, all layers", _stat(scores.overall_excess), excess_meaning],
            ["Raw Kendall tau-b, all layers", _stat(scores.overall_raw),
             "the same rank agreement before subtracting the null (ties of shared zeros count as agreement)"],
            ["Shared-zeros null, all layers", _stat(scores.overall_null),
             "the tau-b the zero patterns alone give, subtracted from the raw tau-b"
             + ("; exactly 0 on every value here, so the excess equals the raw tau-b"
                if null_is_zero(scores.overall_null) else "")],
            [f"Excess tau-b, last layer (layer {scores.last_layer}; {last.n_heads_defined} of {last.n_heads} heads "
             "defined)", _stat(last.excess),
             f"the layer nearest the classifier, fixed in advance; raw tau-b there: {_stat(last.raw)}"]]
    rows += [
        ["Attention sparsity over content tokens", _stat(scores.attention_sparsity),
         "share of the content tokens (not [CLS]/[SEP], not padding) that get exactly zero attention from the "
         "evaluated query, pooled over examples and defined heads (the training log's sparsity counts every query "
         "row over all real keys instead)"],
        ["Attention mass on special tokens", _stat(scores.special_mass),
         "share of the evaluated query's attention that goes to [CLS]/[SEP]; the content-token scores above "
         "rest on the rest"],
        ["Heads defined", f"{scores.heads_defined.get('n')} of {scores.heads_defined.get('of')}",
         "heads whose content-token attention exists on enough examples; undefined heads are left out of every "
         "mean, never averaged in"],
    ]
    if scores.input_to_repr_entropy is not None:
        rows.append(["Input-to-representation entropy, layers 1 and up", _stat(scores.input_to_repr_entropy),
                     "normalised entropy of how strongly each input token influences a layer's representations (eq. 5); "
                     "1 every input counts equally, 0 a single input (layer 0 is 0 by construction and left out)"])
    rows += [list(row) for row in scores.diagnostics]
    return rows


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
    sparsity = stat_mean(scores.attention_sparsity)
    if sparsity is not None:
        paragraphs.append("Attention here gives every content token some weight, as softmax does." if sparsity < 0.005
                          else f"On average {_pct(sparsity)} of the content tokens get exactly zero attention from the "
                               "evaluated query.")
    excess, raw = stat_mean(scores.overall_excess), stat_mean(scores.overall_raw)
    if excess is not None:
        sentence = (f"Over all layers, attention's ranking of the tokens is {_agreement(excess)} the "
                    f"{code(scores.gradient_method)} ranking beyond what shared zeros give (excess {_num(excess, 2)}; "
                    f"raw tau-b {_num(raw, 2)}).")
        if raw is not None and raw - excess > 0.1:
            sentence += (" Much of the raw agreement comes from tokens that are zero in both vectors: a key that gets "
                         "no attention also has no influence through it, so the two agree there by construction.")
        paragraphs.append(sentence)
    paragraphs.append(f"No layer is singled out as the best: the largest of {len(scores.layers)} layer means, picked "
                      "and reported on the same examples, would overstate that layer's agreement. The card reports all "
                      f"layers pooled and the last layer ({scores.last_layer}), both fixed in advance; the per-layer "
                      "table shows every layer.")
    defined = scores.heads_defined
    if defined.get("n") is not None and defined.get("n") < defined.get("of", 0):
        paragraphs.append(f"{defined['of'] - defined['n']} of {defined['of']} heads are undefined: on most examples "
                          "they put all their attention on special tokens, so no ranking of content tokens exists; the "
                          "tables show them as such.")
    entropy = stat_mean(scores.input_to_repr_entropy)
    if entropy is not None:
        spread = ("draw on many input tokens at once" if entropy >= 0.7 else
                  "draw on a moderate number of input tokens" if entropy >= 0.4 else "are dominated by a few input tokens")
        sentence = (f"The representations a layer attends over {spread} (normalised influence entropy "
                    f"{_num(entropy, 2)}, layers 1 and up; 1 would be every token equally).")
        if entropy >= 0.4:
            sentence += (" A position that receives attention therefore stands for a mixture of inputs, not for its "
                         "own token alone.")
        paragraphs.append(sentence)
    return paragraphs


def _head_table(results: dict, alphas: list[list[float]] | None, gradient_method: str) -> dict:
    methods = [gradient_method] + [m for m in results["importance_methods"] if m != gradient_method]
    header = ["layer", "head"] + (["alpha"] if alphas else []) + ["defined on", "sparsity", "special mass",
                                                                  f"excess tau-b vs {code(gradient_method)}",
                                                                  f"raw tau-b vs {code(gradient_method)}"]
    header += [f"excess vs {code(m)}" for m in methods[1:]]
    rows = []
    for rec in sorted(results["per_layer_head"], key=lambda r: (r["layer"], r["head"])):
        row = [cell(rec["layer"]), cell(rec["head"])]
        if alphas:
            layer_alphas = alphas[rec["layer"]] if rec["layer"] < len(alphas) else []
            row.append(_num(layer_alphas[rec["head"]]) if rec["head"] < len(layer_alphas) else "–")
        entropy = rec.get("attention_entropy") or {}
        defined_on = f"{cell(entropy.get('n', '–'))} of {cell(rec.get('n_examples', '–'))}"
        if rec.get("undefined_reason"):  # "defined on n of N examples (...): why" -> the why
            defined_on += f" — undefined: {text(str(rec['undefined_reason']).split(': ', 1)[-1])}"
        shown = lambda stat, digits=3: _stat(stat, digits, with_reason=False)  # noqa: E731  (reason shown once)
        row += [defined_on, shown(rec.get("attention_sparsity")), shown(rec.get("special_mass")),
                shown(rec[HEADLINE].get(gradient_method)),
                shown(rec[RAW].get(gradient_method))]
        row += [shown(rec[HEADLINE].get(m), 2) for m in methods[1:]]
        rows.append(row)
    return {"header": header, "rows": rows}


def _layer_table(results: dict, scores: CardScores) -> dict:
    method = code(scores.gradient_method)
    eq5 = scores.input_to_repr_entropy is not None  # eq. 5 was measured
    header = ["layer", "heads defined", f"excess tau-b vs {method}", "raw tau-b", "shared-zeros null",
              "tau-b on attention's support"]
    header += ["input-to-representation entropy", "co-indexed share"] if eq5 else []
    rows = []
    for score, rec in zip(scores.layers, sorted(results["per_layer"], key=lambda r: r["layer"])):
        row = [str(score.layer), f"{score.n_heads_defined} of {score.n_heads}", _stat(score.excess),
               _stat(score.raw), _stat(score.null), _stat(score.on_support)]
        rows.append(row + ([_stat(rec["input_to_repr_entropy"]), _stat(rec.get("coindexed_share"))] if eq5 else []))
    zero = [str(score.layer) for score in scores.layers if null_is_zero(score.null)]
    note = ("Layers count from 0; the last layer is the one the card reports alone, fixed in advance, never the "
            "highest of these rows (picked on the same examples it would overstate its agreement).")
    if zero:
        note += (f" In {'every layer' if len(zero) == len(scores.layers) else 'layers ' + ', '.join(zero)} the "
                 "shared-zeros null is exactly 0 on every value (the importance has no exact zeros), so the excess "
                 "equals the raw tau-b there.")
    return {"header": header, "rows": rows, "note": note}


def _mixing_table(results: dict, gradient_method: str) -> dict | None:
    """One row per context-mixing method and view (results summary.mixing): its agreement with the gradient
    method and its entropy and sparsity beside attention's; None when no context mixing was measured."""
    summary = results["summary"]
    mixing = summary.get("mixing")
    if not mixing:
        return None
    header = ["method", "view", f"excess tau-b vs {code(gradient_method)}", "raw tau-b", "entropy",
              "attention entropy", "sparsity", "attention sparsity"]
    rows = []
    for method, views in mixing.items():
        for view, block in views.items():
            agreement = block.get("agreement", {}).get(gradient_method, {})
            rows.append([code(method), text(view), _stat(agreement.get(HEADLINE)),
                         _stat(agreement.get(RAW)), _stat(block.get("entropy")),
                         _stat(summary.get("attention_entropy")), _stat(block.get("sparsity")),
                         _stat(summary.get("attention_sparsity"))])
    note = ("The classification token's context mixing over content tokens: per head (`head`), for the whole "
            "attention block with its residual and LayerNorm (`layer`), both pooled over every layer, and the "
            "inputs' contributions to the final representation through every layer (`inputs`). Each is compared "
            f"with {code(gradient_method)} like attention (excess: tau-b minus the shared-zeros null); entropy and "
            "sparsity over content tokens, attention's beside them.")
    return {"header": header, "rows": rows, "note": note}


def _measures_sentence(scores: CardScores, results: dict) -> str:
    """Which measurements the evaluation ran and which it left out (the card shows only what ran)."""
    selection = results.get("measure_selection")
    ran = ", ".join(code(m) for m in scores.measures)
    sentence = f"Measured: {ran}" + (f" (selection {code(selection)})" if selection else "") + "."
    if scores.not_measured:
        sentence += (" Not measured, so not reported here: " + ", ".join(code(m) for m in scores.not_measured)
                     + " (`python -m eval_suite ... --measures full` adds them).")
    return sentence


def _training_context(info: CheckpointInfo) -> dict:
    ctx: dict = {"has_training": bool(info.training_args or info.final_metrics or info.train_log)}
    ctx["args_rows"] = [[code(k), cell(v)] for k, v in (info.training_args or {}).items()]
    metric_keys = ["accuracy", "macro_f1", "loss", "step", "epoch"]
    final = info.final_metrics or {}
    if final and all(isinstance(v, dict) for v in final.values()):
        ctx["final_header"] = ["split"] + metric_keys
        ctx["final_rows"] = [[cell(split)] + [cell(m.get(k, "–")) for k in metric_keys] for split, m in final.items()]
    elif final:
        ctx["final_header"] = ["metric", "value"]
        ctx["final_rows"] = [[cell(k), cell(v)] for k, v in final.items()]
    else:
        ctx["final_header"], ctx["final_rows"] = [], []

    log = info.train_log
    ctx["log_summary"] = ""
    if log:
        ctx["log_name"] = code(info.train_log_path.name)
        validation = [r for r in log if r.get("split") in ("validation", "val", "dev")]
        steps = [r.get("step") for r in log if isinstance(r.get("step"), (int, float))]
        summary = f"{len(log)} evaluation records"
        if steps:
            summary += f" from step {min(steps):g} to step {max(steps):g}"
        scored = [r for r in validation if isinstance(r.get("accuracy"), (int, float))]
        if scored:
            best = max(scored, key=lambda r: r["accuracy"])
            summary += (f"; best validation accuracy {_num(best['accuracy'])} at step {cell(best.get('step', '–'))}"
                        f" (epoch {cell(best.get('epoch', '–'))})")
        shown = log if len(log) <= MAX_LOG_ROWS else [log[round(i * (len(log) - 1) / (MAX_LOG_ROWS - 1))]
                                                       for i in range(MAX_LOG_ROWS)]
        if len(shown) < len(log):
            summary += f". {len(shown)} of them, evenly spaced, below; the full log is in {ctx['log_name']}."
        else:
            summary += "."
        ctx["log_summary"] = summary
        has_alpha = any(any("alpha" in h for h in r.get("per_layer_head") or []) for r in log)
        ctx["log_header"] = ["step", "epoch", "split", "loss", "accuracy", "macro-F1",
                             "mean sparsity (every query row over real keys)"]
        ctx["log_header"] += ["mean alpha"] if has_alpha else []
        ctx["log_rows"] = []
        for r in shown:
            heads = r.get("per_layer_head") or []
            sparsities = [h["sparsity"] for h in heads if isinstance(h.get("sparsity"), (int, float))]
            row = [cell(r.get("step", "–")), _num(r.get("epoch"), 2), cell(r.get("split", "–")), _num(r.get("loss")),
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
        ["dataset", cell(results["dataset"])],
        ["split", cell(results["split"])],
        ["examples", str(results["n_examples"])],
        ["attention setting evaluated", code(results["attn_impl"])],
        ["importance methods", ", ".join(code(m) for m in results["importance_methods"])],
        ["measurements", ", ".join(code(m) for m in results.get("measures") or []) or "all (older results file)"],
    ]
    config = results.get("config")
    if isinstance(config, dict):
        rows += [[f"eval {code(k)}", cell(v)] for k, v in config.items()]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Heatmaps when the evaluation wrote none
# ---------------------------------------------------------------------------------------------------------------

def _draw_heatmaps(results: dict, gradient_method: str, outdir: Path) -> list[tuple[str, str]]:
    """Layer x head heatmaps of sparsity and tau-b, for results.json files that list no plots."""
    from eval_suite.plots import layer_head_grid, save_layer_head_heatmap

    panels = [("attention_sparsity", "Attention sparsity over content tokens (share of exact zeros)",
               lambda r: stat_mean(r["attention_sparsity"]), (0, 1)),
              (f"{HEADLINE}_{gradient_method}", f"Excess tau-b over the shared-zeros null, attention vs "
               f"{gradient_method}", lambda r: stat_mean(r[HEADLINE][gradient_method]), (-1, 1))]
    drawn = []
    outdir.mkdir(parents=True, exist_ok=True)
    for name, title, value_of, (vmin, vmax) in panels:
        filename = f"{name}_heatmap.png"
        save_layer_head_heatmap(layer_head_grid(results, value_of), title, outdir / filename, vmin=vmin, vmax=vmax,
                                dpi=100)
        drawn.append((filename, title))
    return drawn


def _caption(rel_path: str) -> str:
    return text(Path(rel_path).stem.replace("_", " ").replace("-", " ").strip().capitalize())


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


def _checked_ids(repo_id, base_model, license_id, recorded: dict, card_path: Path) -> str | None:
    """The repo id the snippet shows (given, else the one an earlier render recorded), after checking every id the
    caller passed as push checks a repo id; CardError naming the flag otherwise."""
    problem = (repo_id is not None and repo_id_problem(repo_id)
               or base_model is not None and base_model_problem(base_model)
               or license_id is not None and license_problem(license_id))
    if problem:
        raise CardError(problem)
    if repo_id is None and recorded.get("repo_id") is not None:
        repo_id = recorded["repo_id"]
        if repo_id_problem(repo_id):
            raise CardError(f"{card_path} records {METADATA_KEY}.repo_id {repo_id!r}, which is not a Hub repo id; "
                            "pass --repo-id ORG/NAME or delete that line")
    return repo_id


def render_card(checkpoint_dir, results_path, *, train_log=None, repo_id: str | None = None,
                base_model: str | None = None, gradient_method: str | None = None,
                license: str | None = None) -> Path:  # noqa: A002 - the Hub's metadata key and the CLI flag
    """Write CHECKPOINT/README.md (and copy results.json and the plots) for the results of evaluating CHECKPOINT.

    ``results_path=None`` renders a card from the checkpoint and its training files alone (what a push straight
    after training publishes); its score sections say how to fill them, which a later render with results does.
    ``repo_id`` goes into the loading snippet (default: the one recorded by an earlier render, else ORG/NAME);
    ``base_model`` overrides the Hub id read from training_args.json; ``gradient_method`` names the importance
    whose agreement with attention the summary reports (default ``grad_norm``); ``license`` overrides the license
    (default: the card's own, else the base model's). Raises CardError, leaving the folder untouched, when the
    results belong to other weights or lack required fields, or an id is not a valid Hub id.
    """
    folder = Path(checkpoint_dir)
    card_path = folder / CARD_FILE
    info = read_checkpoint(folder, train_log=train_log)
    old_text = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    old_metadata, old_body = split_card(old_text, source=str(card_path))
    parse_sections(old_body, source=str(card_path))  # refuse broken markers before any work
    recorded = old_metadata.get(METADATA_KEY) if isinstance(old_metadata.get(METADATA_KEY), dict) else {}
    repo_id = _checked_ids(repo_id, base_model, license, recorded, card_path)
    gradient_method = gradient_method or recorded.get("gradient_method") or GRADIENT_METHOD

    results = scores = token_examples = None
    plots: list[tuple[str, Path]] = []
    if results_path is not None:
        results = load_results(results_path, gradient_method=gradient_method)
        _check_results_match(results, results_path, info)
        plots = plot_sources(results, results_path)
        token_examples = load_token_examples(results_path)
        scores = card_scores(results, gradient_method=gradient_method)
    headline = choose_headline(info, results)

    model_name = (repo_id or "").split("/")[-1] or _folder_title(folder)
    base_model = base_model or base_model_from(info)
    license_id = license or old_metadata.get("license") or base_model_license(base_model)
    ours = our_metadata(info, headline, scores, model_name=model_name, base_model=base_model, repo_id=repo_id,
                        results_file=RESULTS_FILE if results else None, license_id=license_id)
    metadata = merge_metadata(old_metadata, ours)
    card_data = card_data_from(metadata)

    image_sources = [(_image_destination(rel), source) for rel, source in plots]
    context = _template_context(folder, info, metadata, headline, repo_id, model_name)
    if results is not None:
        context.update(_score_context(info, results, scores, gradient_method))
    return _write_card(folder, card_path, card_data, context, old_metadata, old_body, results, image_sources,
                       gradient_method, token_examples)


def _accuracy_fact(headline: Headline | None) -> str:
    """The first screen's accuracy: value, interval and n, on what, from which file."""
    if headline is None:
        return "Accuracy: not measured yet (train with the hf-sparse-attn training command, or evaluate the model)."
    interval = (f", 95% {headline.interval_kind} interval [{_num(headline.accuracy_ci95[0])}, "
                f"{_num(headline.accuracy_ci95[1])}]" if headline.accuracy_ci95 else "")
    n = f"n = {headline.n_examples:,} examples" if headline.n_examples else "n not recorded"
    return (f"Accuracy **{_num(headline.accuracy)}**{interval}, {n}: {text(dataset_identity(headline.dataset).name)}, "
            f"{text(headline.describe())} ({code(headline.source)}); macro-F1 {_num(headline.macro_f1)}.")


def _render_command(folder: Path) -> str:
    return code(f"python -m hub_cards render {folder.name} --results OUT/results.json")


def _agreement_fact(scores: CardScores | None, folder: Path) -> str:
    """The first screen's headline agreement: excess tau-b over all layers with interval and n, and why it equals
    the raw tau-b where the null is exactly 0 (or the null it subtracted)."""
    if scores is None:
        return ("Attention vs gradient importance: not measured yet (evaluate the model with the hf-sparse-attn "
                f"evaluation suite, then {_render_command(folder)}).")
    method, excess, defined = code(scores.gradient_method), scores.overall_excess, scores.heads_defined
    lead = f"Attention vs {method} importance: excess Kendall tau-b over the shared-zeros null"
    if stat_mean(excess) is None:
        return f"{lead}: {_stat(excess)}."
    ci = excess.get("ci95") or [None, None]
    fact = (f"{lead} **{_num(excess['mean'])}** [{_num(ci[0])}, {_num(ci[1])}] (95% bootstrap interval), all layers "
            f"pooled: n = {excess['n']:,} head x example values ({defined.get('n')} of {defined.get('of')} heads "
            f"defined, {scores.n_examples:,} examples); 0 = no agreement beyond shared zeros.")
    null = scores.overall_null
    if null_is_zero(null):
        fact += (f" It equals the raw tau-b because the shared-zeros null is exactly 0 on all {null['n']:,} values: "
                 "the importance has no exact zeros, so the zero patterns alone predict no agreement.")
    elif stat_mean(null) is not None:
        fact += f" (Raw tau-b {_num(stat_mean(scores.overall_raw))} minus null {_num(stat_mean(null))}.)"
    return fact


def _install_sentence() -> str:
    try:
        version = f" {package_metadata.version(PACKAGE)}"
    except package_metadata.PackageNotFoundError:
        version = ""
    return (f"{PACKAGE}{version} wrote this card. It is not published on a package index: install it from a copy of "
            f"its source (`pip install ./{PACKAGE}`). It registers the mappings with transformers, so the model loads "
            "without remote code, and brings the evaluation suite that measured the scores below.")


def _template_context(folder: Path, info: CheckpointInfo, metadata: dict, headline, repo_id: str | None,
                      model_name: str) -> dict:
    """What every card shows: the model, how to load it, its attention setting and its training."""
    shown_base = metadata.get("base_model") if is_hub_id(metadata.get("base_model")) else None
    has_tokenizer = any((folder / name).is_file() for name in TOKENIZER_FILES)
    remote_code = sorted(p.name for p in folder.glob("sparse_attn_*.py"))
    license_id = metadata.get("license") if license_problem(metadata.get("license")) is None else None
    return dict(
        has_results=False,
        model_title=text(model_name),
        model_type=text(MODEL_TYPE_NAMES.get(info.model_type, info.model_type or "Transformer")),
        attn_label=text(_attn_label(info)),
        accuracy_fact=_accuracy_fact(headline),
        agreement_fact=_agreement_fact(None, folder),
        dataset_name=text(dataset_identity(headline.dataset).name) if headline else None,
        model_id=repo_id or PLACEHOLDER_REPO_ID,
        placeholder=repo_id is None,
        tokenizer_id="model_id" if has_tokenizer or not shown_base else json.dumps(shown_base),
        has_tokenizer=has_tokenizer,
        base_model=shown_base,
        license=license_id,
        install_sentence=_install_sentence(),
        remote_code_files=", ".join(code(name) for name in remote_code),
        has_remote_code=bool(remote_code),
        setting_rows=_setting_rows(info),
        alpha_table=_alpha_table(info.learned_alphas),
        alpha_learned=bool((info.sparse_attention or {}).get("learnable")),
        sparse_layers=text(", ".join(str(i) for i in (info.sparse_attention or {}).get("layers") or [])),
        fixed_alpha=_num(alpha_of_setting(info.sparse_attention), 2) if not info.learned_alphas else None,
        render_command=_render_command(folder),
        scores_page=f"{CARD_IMAGES_DIR}/{SCORES_PAGE}",
        **_training_context(info),
    )


def _score_context(info: CheckpointInfo, results: dict, scores: CardScores, gradient_method: str) -> dict:
    """What a card with evaluation results adds: scores, their reading, per-head tables and provenance."""
    sparsity = stat_mean(scores.attention_sparsity)
    return dict(
        has_results=True,
        agreement_fact=_agreement_fact(scores, info.folder),
        n_examples=results["n_examples"],
        n_layers=len(scores.layers),
        sparsity_sentence=(f"{_pct(sparsity)} of the content tokens get exactly zero attention from the evaluated "
                           f"query (pooled over {scores.n_examples} evaluated examples and the defined heads)."
                           if sparsity is not None else
                           "Its attention sparsity is undefined on the evaluated examples."),
        eval_description=text(f"{results['split']} split, {results['n_examples']} examples"
                              + (f" of {results['n_split']}" if results.get("n_split", results["n_examples"])
                                 > results["n_examples"] else "")),
        eval_dataset=text(dataset_identity(results["dataset"]).name),
        score_rows=_score_rows(scores),
        measures_sentence=_measures_sentence(scores, results),
        reading=_reading(scores),
        head_table=_head_table(results, info.learned_alphas, gradient_method),
        head_table_note=("Every value: mean [95% bootstrap interval] (n = examples it rests on). Sparsity: share of "
                         "content tokens with exactly zero attention from the evaluated query; special mass: its "
                         "attention on [CLS]/[SEP]; excess: tau-b minus the shared-zeros null. \"undefined\": fewer "
                         "examples than the minimum, with the reason."),
        layer_table=_layer_table(results, scores),
        mixing_table=_mixing_table(results, gradient_method),
        provenance_rows=_provenance_rows(info, results),
    )


_TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), keep_trailing_newline=True)


def _write_card(folder: Path, card_path: Path, card_data, context: dict, old_metadata: dict, old_body: str,
                results: dict | None, image_sources: list, gradient_method: str,
                token_examples: dict | None = None) -> Path:
    """Stage images, the scores page, the results copy, the report and the card inside the folder, then rename each
    into place (card last)."""
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
                context["plots"] = [{"caption": text(title), "path": f"{CARD_IMAGES_DIR}/{name}"}
                                    for name, title in drawn]
            for plot in context["plots"]:  # the scores page sits in CARD_IMAGES_DIR: its links are relative to it
                plot["path"] = url(plot["path"][len(CARD_IMAGES_DIR) + 1:])
            (images / SCORES_PAGE).write_text(_TEMPLATES.get_template(SCORES_TEMPLATE).render(**context),
                                              encoding="utf-8")

        rendered = _TEMPLATES.get_template(CARD_TEMPLATE).render(**context)
        body = merge_sections(old_body, rendered.lstrip("\n")).lstrip("\n")
        text_out = f"---\n{card_data.to_yaml(original_order=list(old_metadata))}\n---\n\n{body}"
        text_out += "" if text_out.endswith("\n") else "\n"
        _check_round_trip(text_out, expected_metrics=len(card_data.eval_results or []))
        (staging / CARD_FILE).write_text(text_out, encoding="utf-8")

        if results is not None:
            results_copy = dict(results)
            results_copy["plots"] = [dest for dest, _ in image_sources]  # relative to results.json, now in CHECKPOINT
            results_copy["checkpoint"] = "."  # the folder it now sits in (and no local path on the Hub)
            (staging / RESULTS_FILE).write_text(json.dumps(results_copy, indent=2) + "\n", encoding="utf-8")
            write_report(staging, results_copy, token_examples)  # drawn from the published copy: no local paths
            target = folder / CARD_IMAGES_DIR
            if target.exists():
                os.replace(target, staging / "previous-images")
            os.replace(images, target)
            os.replace(staging / RESULTS_FILE, folder / RESULTS_FILE)
            os.replace(staging / REPORT_FILE, folder / REPORT_FILE)
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
