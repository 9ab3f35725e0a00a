"""The paper study (studies/paper): --quick end to end on real MR data, caching, partial reports, errors."""

from __future__ import annotations

import json
import shutil

import pytest

import torch

from eval_suite.metrics import jensen_shannon
from studies.paper import cli as reproduce
from studies.paper.adversarial import AdversarialConfig, AdversarialError, differentiable_jsd, train_adversary
from studies.paper.plan import PART_ORDER, plan_units

# Tiny real study: the lr search (one value, whose model is the softmax seed-0 model), the paper's architecture (a)
# with softmax and sparsemax pooling on mr over two seeds, a sweep whose points all reuse those models, the adversary,
# its lambda=0 control and the seed-to-seed JSD. Six models are trained, six evaluated (seconds each).
QUICK_ARGS = ["--quick", "--parts", "pooling-mr,sweep,adversarial", "--mappings", "softmax,sparsemax",
              "--alphas", "1.0,2.0", "--lambdas", "0.0", "--scratch-lrs", "3e-3"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    code = reproduce.main(["--output-dir", str(out), *QUICK_ARGS])
    return out, code


def test_quick_study_writes_report_results_and_figures(study):
    out, code = study
    assert code == 0
    results = {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}
    models = {f"pooling-mr-{m}-s{s}" for m in ("softmax", "sparsemax") for s in (0, 1)}
    expected = models | {"lr-scratch-mr-lr0.003", "sweep-mr-alpha1-s0", "sweep-mr-alpha2-s0", "sweep-mr-lambda0-s0",
                         "adversarial-mr-lambda1-s0", "adversarial-control-mr-s0", "adversarial-seed-jsd-mr"}
    assert set(results) == expected
    for name in models:
        record = results[name]
        heads = record["eval"]["per_layer_head"]
        # paper-pooling: 2 softmax self-attention layers + the pooling, one head each; the pooling carries the mapping
        assert record["eval"]["n_layers"] == 3 and len(heads) == 3
        assert record["eval"]["sparse_attention"]["layers"] == [2]  # the pooling, resolved
        assert record["eval"]["n_examples"] == 4
        assert set(heads[2]["kendall_tau_b"]) >= {"grad_norm", "loo", "repr_grad_norm", "repr_loo"}
        assert record["lr"] == 3e-3 and record["lr_search"]["chosen"] == 3e-3
        assert record["train_metrics"]["train"]["stopped_at_step"] >= record["train_metrics"]["train"]["step"]
    assert results["pooling-mr-softmax-s0"]["eval"]["weights_fingerprint"] != \
        results["pooling-mr-softmax-s1"]["eval"]["weights_fingerprint"]
    # No model is trained twice: the lr search's winner is the softmax seed-0 model.
    trained = {p.parent.parent.name for p in (out / "runs").glob("*/final/config.json")}
    assert trained == {"lr-scratch-mr-lr0.003", "pooling-mr-sparsemax-s0", "pooling-mr-softmax-s1",
                       "pooling-mr-sparsemax-s1", "adversarial-mr-lambda1-s0", "adversarial-control-mr-s0"}
    assert results["pooling-mr-softmax-s0"]["model_run"] == "lr-scratch-mr-lr0.003"
    assert results["pooling-mr-softmax-s0"]["train_metrics"] == results["lr-scratch-mr-lr0.003"]["train_metrics"]
    # Sweep end points share the named mappings' models: identical numbers, no second training.
    assert results["sweep-mr-alpha2-s0"]["eval"] == results["pooling-mr-sparsemax-s0"]["eval"]
    assert results["sweep-mr-lambda0-s0"]["eval"] == results["pooling-mr-sparsemax-s0"]["eval"]
    adversarial = results["adversarial-mr-lambda1-s0"]["adversarial"]
    assert 0.0 <= adversarial["jsd_bits"]["mean"] <= 1.0
    assert adversarial["jsd_nats"]["mean"] == pytest.approx(adversarial["jsd_bits"]["mean"] * 0.6931471805599453)
    assert adversarial["accuracy_change"] == pytest.approx(
        adversarial["adversary_accuracy"] - adversarial["baseline_accuracy"])
    assert adversarial["chance_loss"] == pytest.approx(0.6931471805599453) and adversarial["adversary_loss"] > 0
    control = results["adversarial-control-mr-s0"]["adversarial"]
    assert control["settings"]["lambda_adv"] == 0.0 and adversarial["settings"]["lambda_adv"] == 1.0
    assert control["baseline_accuracy"] == adversarial["baseline_accuracy"]  # same baseline, same test subset
    # The JSD term must act on training: same seed and data, so only lambda_adv can make the runs differ.
    assert adversarial["train_log"] != control["train_log"]
    # The adversary trains like the baseline: validation accuracy every eval_every steps, early stopping, best kept.
    training = results["adversarial-mr-lambda1-s0"]["train_metrics"]["train"]
    assert training["step_cap"] == 4 and training["best_step"] in (2, 4) and training["stopped_at_step"] <= 4
    assert [r["step"] for r in adversarial["train_log"]] == [2, 4][:len(adversarial["train_log"])]
    assert all("validation_accuracy" in r for r in adversarial["train_log"])
    # Per-example test numbers (paired comparisons) and validation numbers (choosing lambda_adv) are recorded.
    assert len(adversarial["per_example"]["jsd_bits_content"]) == 4 and "jsd_bits_content" in adversarial["validation"]
    seed_pairs = results["adversarial-seed-jsd-mr"]["adversarial"]
    assert set(seed_pairs["pairs"]) == {"pooling-mr-softmax-s0|pooling-mr-softmax-s1"}
    assert len(seed_pairs["pairs"]["pooling-mr-softmax-s0|pooling-mr-softmax-s1"]["per_example"]) == 4

    report = (out / "REPORT.md").read_text()
    assert "REDUCED RUN" in report.split("## Where")[0]
    assert "Where our setting differs from the paper's" in report and "Table 5" in report
    row = next(line for line in report.splitlines() if line.startswith("| mr | softmax |"))
    assert ".72 / .33" in row and "(n=2)" in row  # the paper's SST numbers beside ours, over two seeds
    summary = json.loads((out / "summary.json").read_text())
    cell = summary["cells"]["pooling/mr/softmax"]
    assert cell["accuracy"]["n"] == 2 and len(cell["accuracy"]["ci95"]) == 2
    assert set(cell) >= {"kendall_tau_b/grad_norm", "kendall_tau_b_excess/grad_norm", "kendall_tau_b_on_support/grad_norm"}
    assert summary["lr"] == {"scratch/mr": 3e-3}
    assert summary["sweep"]["lambda"]["n_points"] == 1
    assert {f["key"] for f in summary["findings"]} >= {"input_to_repr", "repr_vs_input", "adversarial"}
    # The verdicts are those of the interval rules on this study's own records (two seeds of each mapping on mr;
    # trec did not run), read here from the stored results.
    from studies.paper.verdicts import (TAU_DIFFERENCE_RANGE, UNIT_RANGE, band_verdict, combine, difference_interval,
                                        mean_interval, sign_verdict)

    verdicts = {f["key"]: f["verdict"] for f in summary["findings"]}

    def last_layer(mapping, key):
        return [results[f"pooling-mr-{mapping}-s{s}"]["eval"]["per_layer"][-1][key] for s in (0, 1)]

    # Table 1: the last layer's excess tau-b (attention vs input gradients), softmax minus sparsemax paired by seed.
    excess = {m: [a["grad_norm"]["kendall_tau_b_excess"]["mean"] for a in last_layer(m, "agreement")]
              for m in ("softmax", "sparsemax")}
    assert verdicts["table1_softmax_vs_sparsemax"] == sign_verdict(
        difference_interval(excess["softmax"], excess["sparsemax"], paired=True, bounds=TAU_DIFFERENCE_RANGE), +1)
    entropy = {m: [e["mean"] for e in last_layer(m, "input_to_repr_entropy")] for m in ("softmax", "sparsemax")}
    assert verdicts["input_to_repr"] == combine([band_verdict(mean_interval(entropy[m], UNIT_RANGE), 0.5, 0.9)
                                                 for m in ("softmax", "sparsemax")])
    assert all(f["verdict"] in ("agrees", "disagrees", "inconclusive", "not run", "not reached")
               for f in summary["findings"])
    assert (out / "figures" / "sweep_alpha.png").stat().st_size > 1000
    assert "runs/" in (out / ".gitignore").read_text()
    study_record = json.loads((out / "study.json").read_text())
    assert study_record["sittings"][-1]["failed"] == []


def test_second_invocation_is_a_no_op(study, capsys):
    out, _ = study
    before = {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")}
    checkpoints = sorted(p for p in (out / "runs").rglob("*.safetensors"))
    weights_before = {p: p.stat().st_mtime_ns for p in checkpoints}
    capsys.readouterr()
    assert reproduce.main(["--output-dir", str(out), *QUICK_ARGS]) == 0
    assert "ran 0 unit(s)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "results").glob("*.json")} == before
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == weights_before


def test_changed_sizes_on_a_cached_study_are_refused(study, capsys):
    out, _ = study
    assert reproduce.main(["--output-dir", str(out), *QUICK_ARGS, "--scratch-steps", "3"]) == 2
    error = capsys.readouterr().err
    assert "--scratch-steps 4 (now 3)" in error and "delete" in error


def test_report_from_partial_results_marks_missing_cells(study, tmp_path):
    out, _ = study
    partial = tmp_path / "partial"
    (partial / "results").mkdir(parents=True)
    shutil.copy(out / "results" / "pooling-mr-softmax-s0.json", partial / "results")
    assert reproduce.main(["--output-dir", str(partial), *QUICK_ARGS, "--report-only"]) == 0
    report = (partial / "REPORT.md").read_text()
    table5 = report.split("## Table 5")[1].split("##")[0]
    assert "not run" in table5
    assert "Not run yet:" in report and "adversarial-mr-lambda1-s0" in report
    header = report.split("## Where")[0]
    assert "PARTIAL — 1 of the plan's" in header and "pooling-mr (1 of 4)" in header  # how much ran, up front
    assert "wall-clock min" in report.split("## What ran")[1]
    assert not any(line.startswith("| mr | sparsemax |") for line in report.splitlines())
    softmax_row = next(line for line in report.splitlines() if line.startswith("| mr | softmax |"))
    assert "(n=1)" in softmax_row  # one seed: a mean without an interval


def test_plan_reuses_sweep_end_points_orders_parts_and_searches_lr_before_its_part():
    args = reproduce.parse_args(["--output-dir", "unused", "--parts", "sweep,pooling-mr,minilm-last-trec",
                                 "--alphas", "1.0,1.1,1.5,2.0", "--lambdas=-1,0", "--seeds", "2", "--sweep-seeds", "3"])
    units = plan_units(args)
    by_name = {u.name: u for u in units}
    assert [u.name for u in units[:3]] == ["lr-scratch-mr-lr0.001", "lr-scratch-mr-lr0.003", "lr-scratch-mr-lr0.01"]
    minilm_lr = next(i for i, u in enumerate(units) if u.name == "lr-minilm-trec-lr0.0001")
    assert all(u.part != "minilm-last-trec" for u in units[:minilm_lr])  # its search comes just before it
    assert by_name["sweep-mr-alpha1-s0"].reuse == "pooling-mr-softmax-s0"
    assert by_name["sweep-mr-alpha1.5-s1"].reuse == "pooling-mr-entmax15-s1"
    assert by_name["sweep-mr-alpha1.5-s2"].reuse is None  # only two pooling seeds exist
    assert by_name["sweep-mr-alpha1.1-s0"].reuse is None
    assert by_name["sweep-mr-alpha1.1-s0"].attn_impl == "entmax:alpha=1.1"
    assert by_name["sweep-mr-lambda-1-s2"].attn_impl == "sparsegen_lin:lambda=-1"
    assert by_name["sweep-mr-lambda0-s0"].reuse == "pooling-mr-sparsemax-s0"
    assert len([u for u in units if u.part == "sweep"]) == 3 * 6
    assert len([u for u in units if u.part == "pooling-mr"]) == 2 * 3
    minilm = [u for u in units if u.part == "minilm-last-trec"]
    assert len(minilm) == 2 * 3 and all(u.encoder == "minilm-last" and u.family == "minilm" for u in minilm)
    # softmax is softmax in every layer: the last-layer softmax model is the every-layer one
    assert by_name["minilm-last-trec-softmax-s1"].reuse == "minilm-trec-softmax-s1"


def _trainings(units):
    """The units that train a model of their own (not a copy, not the lr winner's model, not the seed-pair JSD)."""
    from studies.paper.plan import lr_twin

    return [u for u in units if u.reuse is None and not lr_twin(u) and u.mapping != "seed_jsd"]


def test_the_default_plan_is_the_studys_plan():
    args = reproduce.parse_args(["--output-dir", "unused"])
    units = plan_units(args)
    per_part = {}
    for unit in _trainings(units):
        per_part[unit.part] = per_part.get(unit.part, 0) + 1
    # lr: {1e-3, 3e-3, 1e-2} x {mr, trec} from scratch, one MiniLM lr (its model is MiniLM softmax seed 0);
    # (a): 3 mappings x 2 datasets x 5 seeds less the two lr winners; sweeps: 5 knob values beyond the named mappings
    # x 5 seeds; adversary: 3 lambda_adv + control; (b): 3 x 3 seeds; MiniLM: softmax + 2 sparse x 2 layer choices,
    # 2 seeds (the lr unit is the first softmax).
    assert per_part == {"lr": 7, "pooling-mr": 14, "pooling-trec": 14, "sweep": 25, "adversarial": 4,
                        "scratch-mr": 9, "minilm-mr": 5, "minilm-last-mr": 4}
    sweep = [u for u in units if u.part == "sweep"]
    for knob_value in {u.name.rsplit("-s", 1)[0] for u in sweep}:
        assert len([u for u in sweep if u.name.rsplit("-s", 1)[0] == knob_value]) == 5  # 5 seeds per knob value
    assert sorted({u.knob.get("alpha") for u in sweep} - {None}) == [1.0, 1.25, 1.5, 1.75, 2.0]
    assert sorted({u.knob.get("lambda") for u in sweep} - {None}) == [-1.0, 0.0, 0.5, 0.75]
    assert {u.mapping for u in units if u.part.startswith(("pooling", "scratch", "minilm"))} == {
        "softmax", "sparsemax", "entmax15"}
    assert args.scratch_steps == 2000 and args.patience == 5 and args.eval_every == 100
    assert args.scratch_limits == {"mr": 400, "trec": None}


def test_no_model_is_trained_twice(tmp_path):
    from hf_sparse_attn.training.config import RESULT_FIELDS
    from studies.paper.run import train_config

    args = reproduce.parse_args(["--output-dir", str(tmp_path), "--parts", ",".join(PART_ORDER),
                                 "--mappings", "softmax,sparsemax,entmax15,learned_alpha"])
    chosen = {"scratch": 3e-3, "minilm": 1e-4}
    seen = {}
    for unit in _trainings(plan_units(args)):
        if unit.part == "adversarial":
            continue
        config = train_config(unit, args, tmp_path / unit.name, unit.knob.get("lr", chosen[unit.family]))
        key = {k: getattr(config, k) for k in RESULT_FIELDS}
        if key["attn_impl"].startswith("softmax"):  # softmax in some layers = softmax everywhere
            key["attn_impl"], key["attn_layers"] = "softmax", None
        key = json.dumps(key, sort_keys=True)
        assert key not in seen, f"{unit.name} trains the model of {seen.get(key)}"
        seen[key] = unit.name


def test_two_processes_on_different_datasets_never_share_an_lr_unit():
    mr = plan_units(reproduce.parse_args(["--output-dir", "u", "--parts", "pooling-mr,sweep"]))
    trec = plan_units(reproduce.parse_args(["--output-dir", "u", "--parts", "pooling-trec,scratch-mr"]))
    first_model = next(i for i, u in enumerate(trec) if u.part != "lr")
    assert {u.name for u in trec[:first_model]} == {f"lr-scratch-trec-lr{lr:g}" for lr in (1e-3, 3e-3, 1e-2)}
    assert not {u.name for u in mr if u.part == "lr"} & {u.name for u in trec[:first_model]}
    # trec's process reaches the mr search only after all of (a) on trec: by then the mr process has run it
    assert all(u.part == "pooling-trec" for u in trec[first_model:first_model + 15])


def test_a_unit_whose_inputs_have_not_been_made_waits_instead_of_failing(study, tmp_path, capsys):
    out, _ = study
    other = tmp_path / "other"
    (other / "results").mkdir(parents=True)
    shutil.copy(out / "results" / "lr-scratch-mr-lr0.003.json", other / "results")
    capsys.readouterr()
    assert reproduce.main(["--output-dir", str(other), *QUICK_ARGS[:2], "adversarial", *QUICK_ARGS[3:]]) == 0
    printed = capsys.readouterr().out
    assert "FAILED" not in printed and "waiting for other units 3" in printed
    assert sorted(p.stem for p in (other / "results").glob("*.json")) == ["lr-scratch-mr-lr0.003"]


def test_the_adversary_stops_early_and_keeps_its_best_weights(study, tmp_path):
    from studies.paper.adversarial import _accuracy, _tokenized_splits

    out, _ = study
    baseline = out / "runs" / "lr-scratch-mr-lr0.003" / "final"
    config = AdversarialConfig(baseline=str(baseline), output_dir=str(tmp_path / "adv"), lambda_adv=1.0, max_steps=40,
                               eval_every=2, patience=1, batch_size=8, max_length=24, max_train_examples=48,
                               max_eval_examples=16, limit=4)
    result = train_adversary(config)
    training = result["training"]
    # 20 evaluations on 16 validation examples cannot all improve: patience 1 stops it before the cap
    assert training["stopped_early"] and training["stopped_at_step"] < 40
    assert training["stopped_at_step"] - training["best_step"] == 2  # one evaluation without improvement
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "adv" / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "adv" / "final")
    _, validation, _ = _tokenized_splits(config, tokenizer)
    assert _accuracy(model, validation, tokenizer) == training["best_validation_accuracy"]


def test_same_seed_softmax_and_sparsemax_models_start_from_the_same_weights(tmp_path):
    from accelerate.utils import set_seed

    from hf_sparse_attn.training.loop import _load_splits, load_tokenizer_and_model
    from studies.paper.run import train_config

    args = reproduce.parse_args(["--output-dir", str(tmp_path), "--quick", "--parts", "pooling-mr",
                                 "--mappings", "softmax,sparsemax"])
    units = {u.name: u for u in plan_units(args)}
    weights, data = {}, None
    for name in ("pooling-mr-softmax-s1", "pooling-mr-sparsemax-s1", "pooling-mr-softmax-s0"):
        config = train_config(units[name], args, tmp_path / name, 1e-3)
        data, labels = _load_splits(config) if data is None else (data, labels)  # the same data for all three
        set_seed(config.seed)  # as hf_sparse_attn.training does, before building the model
        _, model = load_tokenizer_and_model(config, data, len(labels), labels)
        weights[name] = model.state_dict()
    soft, sparse, other = (weights[n] for n in ("pooling-mr-softmax-s1", "pooling-mr-sparsemax-s1",
                                                "pooling-mr-softmax-s0"))
    assert soft.keys() == sparse.keys()
    assert all(torch.equal(soft[k], sparse[k]) for k in soft)  # paired: only the mapping differs
    assert not all(torch.equal(soft[k], other[k]) for k in soft)  # another seed, another initialisation


def test_units_train_their_encoder_with_early_stopping(tmp_path):
    from studies.paper.run import train_config

    args = reproduce.parse_args(["--output-dir", str(tmp_path)])
    units = {u.encoder: u for u in plan_units(reproduce.parse_args(["--output-dir", str(tmp_path), "--parts",
                                                                     "pooling-mr,scratch-last-mr,minilm-mr"]))}
    pooled = train_config(units["pooling"], args, tmp_path / "a", 1e-3)
    assert pooled.from_scratch == "paper-pooling" and pooled.attn_impl.endswith("layers=[-1]")
    assert pooled.patience == 5 and pooled.lr == 1e-3 and pooled.max_steps == 2000
    last = train_config(units["scratch-last"], args, tmp_path / "c", 1e-3)
    assert last.from_scratch == "paper-roberta" and last.attn_layers == "[-1]"
    minilm = train_config(units["minilm"], args, tmp_path / "m", 1e-4)
    assert minilm.from_scratch is None and minilm.attn_layers is None and minilm.max_steps == 2000


@pytest.mark.parametrize("argv, message", [
    (["--alphas", "2.5"], "--alphas must lie in [1, 2]"),
    (["--lambdas", "1.0"], "--lambdas must be < 1"),
    (["--parts", "scratch-mr,imdb"], "unknown --parts"),
    (["--mappings", "relu"], "unknown --mappings"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--scratch-lrs", "0"], "--scratch-lrs and --minilm-lrs need"),
    (["--patience", "0"], "--patience must be >= 1"),
    (["--scratch-limits", "mr=0"], "--scratch-limits and --minilm-limits take"),
    (["--minilm-limits", "imdb=4"], "--scratch-limits and --minilm-limits take"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(["--output-dir", str(out), *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_adversarial_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(AdversarialError, match="has no config.json"):
        train_adversary(AdversarialConfig(baseline=str(tmp_path), output_dir=str(tmp_path / "adv")))
    assert not (tmp_path / "adv").exists()


def test_training_jsd_matches_the_metric_and_has_a_gradient():
    torch.manual_seed(0)
    logits = torch.randn(4, 7, requires_grad=True)
    p = torch.softmax(logits, dim=-1)
    q = torch.softmax(torch.randn(4, 7), dim=-1)
    q[0] = torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0])  # exact zeros, as sparse attention gives
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 5:] = False  # padding
    jsd = differentiable_jsd(p, q, mask)
    assert torch.allclose(jsd.double(), jensen_shannon(p, q, mask), atol=1e-6)
    jsd.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert float(differentiable_jsd(q, q, mask).max()) == pytest.approx(0.0, abs=1e-7)
