"""The paper study (studies/paper): --quick end to end on real MR data, caching, partial reports, errors."""

from __future__ import annotations

import json
import shutil

import pytest

import torch

from eval_suite.metrics import jensen_shannon
from studies.paper import cli as reproduce
from studies.paper.adversarial import AdversarialConfig, AdversarialError, differentiable_jsd, train_adversary
from studies.paper.plan import plan_units

# Tiny real study: the paper's Transformer (softmax, sparsemax) on mr, a lambda sweep whose lambda=0 point reuses the
# sparsemax model, the adversary and its lambda=0 control. Five models are trained and evaluated (seconds each).
QUICK_ARGS = ["--quick", "--parts", "scratch-mr,sweep,adversarial", "--mappings", "softmax,sparsemax",
              "--alphas", "1.0,2.0", "--lambdas", "0.0,0.5"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper")
    code = reproduce.main(["--output-dir", str(out), *QUICK_ARGS])
    return out, code


def test_quick_study_writes_report_results_and_figures(study):
    out, code = study
    assert code == 0
    results = {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}
    expected = {"scratch-mr-softmax-s0", "scratch-mr-sparsemax-s0", "sweep-mr-alpha1-s0", "sweep-mr-alpha2-s0",
                "sweep-mr-lambda0-s0", "sweep-mr-lambda0.5-s0", "adversarial-mr-s0", "adversarial-control-mr-s0"}
    assert set(results) == expected
    for name, record in results.items():
        heads = record["eval"]["per_layer_head"]
        assert len(heads) == record["eval"]["n_layers"] * record["eval"]["n_heads"] == 2  # paper-roberta: 2 x 1
        assert record["eval"]["n_examples"] == 4
        assert set(heads[0]["kendall_tau_b"]) >= {"grad_norm", "loo", "repr_grad_norm", "repr_loo"}
    # Sweep end points share the named mappings' models: identical numbers, no second training.
    assert results["sweep-mr-alpha2-s0"]["eval"] == results["scratch-mr-sparsemax-s0"]["eval"]
    assert results["sweep-mr-lambda0-s0"]["eval"] == results["scratch-mr-sparsemax-s0"]["eval"]
    assert results["sweep-mr-alpha1-s0"]["eval"]["attn_impl"] == "softmax"
    assert results["sweep-mr-lambda0.5-s0"]["eval"]["sparse_attention"]["attn_impl"] == "sparsegen_lin"
    adversarial = results["adversarial-mr-s0"]["adversarial"]
    assert 0.0 <= adversarial["jsd_bits"]["mean"] <= 1.0
    assert adversarial["jsd_nats"]["mean"] == pytest.approx(adversarial["jsd_bits"]["mean"] * 0.6931471805599453)
    assert adversarial["accuracy_change"] == pytest.approx(
        adversarial["adversary_accuracy"] - adversarial["baseline_accuracy"])
    control = results["adversarial-control-mr-s0"]["adversarial"]
    assert control["settings"]["lambda_adv"] == 0.0 and adversarial["settings"]["lambda_adv"] == 1.0
    assert control["baseline_accuracy"] == adversarial["baseline_accuracy"]  # same baseline, same test subset
    # The JSD term must act on training: same seed and data, so only lambda_adv can make the runs differ.
    assert adversarial["train_log"] != control["train_log"]

    report = (out / "REPORT.md").read_text()
    assert "Table 1" in report and "Table 5" in report
    assert ".72 / .33" in report  # the paper's SST numbers beside ours
    softmax_row = next(line for line in report.splitlines() if line.startswith("| Transformer (a) softmax | .72"))
    assert softmax_row.split("|")[3].strip() != "not run"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sweep"]["lambda"]["n_points"] == 2
    assert {f["key"] for f in summary["findings"]} >= {"input_to_repr", "repr_vs_input", "adversarial"}
    assert all(f["verdict"] in ("agrees", "partly agrees", "disagrees", "not run") for f in summary["findings"])
    assert (out / "figures" / "sweep_lambda.png").stat().st_size > 1000
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
    assert "--scratch-steps 2 (now 3)" in error and "delete" in error


def test_report_from_partial_results_marks_missing_cells(study, tmp_path):
    out, _ = study
    partial = tmp_path / "partial"
    (partial / "results").mkdir(parents=True)
    shutil.copy(out / "results" / "scratch-mr-softmax-s0.json", partial / "results")
    assert reproduce.main(["--output-dir", str(partial), *QUICK_ARGS, "--report-only"]) == 0
    report = (partial / "REPORT.md").read_text()
    table5 = report.split("## Table 5")[1].split("##")[0]
    assert "not run" in table5
    assert "Not run in this sitting:" in report and "adversarial-mr-s0" in report
    sparsemax_row = next(line for line in report.splitlines() if line.startswith("| Transformer (a) sparsemax"))
    assert sparsemax_row.split("|")[3].strip() == "not run"


def test_plan_reuses_sweep_end_points_and_orders_parts():
    args = reproduce.parse_args(["--output-dir", "unused", "--parts", "sweep,scratch-mr", "--alphas", "1.0,1.1,1.5,2.0",
                                 "--lambdas=-1,0"])
    units = plan_units(args)
    by_name = {u.name: u for u in units}
    assert [u.part for u in units][:6] == ["sweep"] * 6 and units[-1].part == "scratch-mr"
    assert by_name["sweep-mr-alpha1-s0"].reuse == "scratch-mr-softmax-s0"
    assert by_name["sweep-mr-alpha1.5-s0"].reuse == "scratch-mr-entmax15-s0"
    assert by_name["sweep-mr-alpha1.1-s0"].reuse is None
    assert by_name["sweep-mr-alpha1.1-s0"].attn_impl == "entmax:alpha=1.1"
    assert by_name["sweep-mr-lambda-1-s0"].attn_impl == "sparsegen_lin:lambda=-1"
    assert by_name["sweep-mr-lambda0-s0"].reuse == "scratch-mr-sparsemax-s0"


@pytest.mark.parametrize("argv, message", [
    (["--alphas", "2.5"], "--alphas must lie in [1, 2]"),
    (["--lambdas", "1.0"], "--lambdas must be < 1"),
    (["--parts", "scratch-mr,imdb"], "unknown --parts"),
    (["--mappings", "relu"], "unknown --mappings"),
    (["--seeds", "0"], "--seeds must be >= 1"),
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
