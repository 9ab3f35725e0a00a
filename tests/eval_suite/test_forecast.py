"""The cost forecast and --budget: the forecast recorded in run_info.json against the measured time of the same
run, and a refusal that is one line naming the cheaper command, exit status 2, with nothing written."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from eval_suite.cli import main
from eval_suite.forecast import Cheaper, Forecast, Machine, batch_shapes, cheaper_options
from eval_suite.settings import MeasureConfig
from eval_suite.cost import BatchShape, ModelShape, stage_costs
from eval_suite.registry import tiers
from tests.helpers.tiny_models import make_text_csv, make_tiny_checkpoint


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast")
    return {"root": root, "checkpoint": make_tiny_checkpoint(root / "ckpt", layers=3),
            # long enough that measuring, not per-batch overhead, is most of the time
            "data": make_text_csv(root / "data.csv", n=40, min_words=30, max_words=50)}


def _args(ws, out, *extra):
    return [ws["checkpoint"], "--dataset", ws["data"], "--split", "train", "--limit", "20", "--batch-size", "4",
            "--plot-examples", "0", "--output-dir", str(out), *extra]


def test_forecast_is_within_30_percent_of_the_measured_time(workspace):
    """On this run's own batches (same lengths, same sizes), calibrated on a probe of its longest examples.

    A shared, loaded machine makes single timings noisy; the bound is the one the forecast promises."""
    out = workspace["root"] / "paper"
    assert main(_args(workspace, out, "--measures", "paper")) == 0
    info = json.loads((out / "run_info.json").read_text())
    forecast, measured = info["forecast"]["measure_seconds"], info["measure_seconds"]
    assert info["forecast"]["calibration_batch"] is not None
    assert 0 < info["forecast"]["probe_examples"] < 4  # a probe, not the first batch of 4, calibrates it
    assert set(info["forecast"]["stage_seconds"]) == set(info["stage_seconds_main_process"])
    assert 0.7 < forecast / measured < 1.3, (forecast, measured, info)


def test_the_forecast_grows_with_the_tier_and_the_length():
    model = ModelShape(n_layers=6, n_heads=12, d_model=384, d_ff=1536)
    config = MeasureConfig.of()
    machine = Machine(flop_rate=1e11, call_seconds=1e-3)
    short, long = BatchShape((20,) * 8, (18,) * 8), BatchShape((200,) * 8, (198,) * 8)
    seconds = {}
    for tier, members in tiers().items():
        for name, shape in (("short", short), ("long", long)):
            seconds[tier, name] = sum(machine.seconds(c) for c in stage_costs(shape, model, config, members).values())
    assert seconds["quick", "short"] < seconds["paper", "short"] < seconds["full", "short"]
    # eq. 5 and representation leave-one-out grow with length squared or more; the quick tier about linearly
    assert seconds["paper", "long"] / seconds["paper", "short"] > 3 * seconds["quick", "long"] / seconds["quick", "short"]
    # sampling eq. 5's positions makes the long documents' eq. 5 stage cheaper
    sampled = MeasureConfig.of(input_to_repr_sample=8, measures="paper")
    exact_eq5 = stage_costs(long, model, MeasureConfig.of(measures="paper"), tiers()["paper"])["input_to_repr"]
    sampled_eq5 = stage_costs(long, model, sampled, sampled.measures)["input_to_repr"]
    assert sampled_eq5.flops < exact_eq5.flops / 10


def _encodings(lengths):
    return [{"input_ids": [5] * n, "special_tokens_mask": [1] + [0] * (n - 2) + [1]} for n in lengths]


def test_the_probe_is_the_longest_examples_and_only_one_when_two_would_be_dear():
    """The probe sees the lengths that dominate the total; a paper run's two longest sentences cost many seconds
    before the forecast is printed, so it takes the longest alone (as it does from 256 tokens on)."""
    from eval_suite.schedule import PROBE_SECONDS, probe_members

    model = ModelShape(n_layers=6, n_heads=12, d_model=384, d_ff=1536)
    encodings = _encodings([20, 61, 58, 300, 30, 40])
    batches = [(0, [0, 4]), (1, [1, 2, 5]), (2, [3])]
    shapes = batch_shapes(encodings, [m for _, m in batches])
    fast = Machine(flop_rate=1e13, call_seconds=1e-4)
    slow = Machine(flop_rate=1e10, call_seconds=1e-3)
    for tier, machine, expected in (("quick", fast, [2, 1]), ("paper", fast, [2, 1]), ("paper", slow, [1])):
        forecast = Forecast(model, MeasureConfig.of(measures=tier), machine, shapes)
        pair = sum(forecast.shape_seconds(batch_shapes(encodings, [[1, 2]])[0]).values())
        assert (pair > PROBE_SECONDS) == (len(expected) == 1), (tier, pair)
        assert probe_members(encodings, batches[:2], forecast) == (1, expected)
        assert probe_members(encodings, batches, forecast) == (2, [3])  # from 256 tokens on, one example


def test_cheaper_options_name_the_largest_tier_that_fits():
    model = ModelShape(n_layers=2, n_heads=4, d_model=32, d_ff=37)
    config = MeasureConfig.of(measures="full")
    shapes = [BatchShape((30,) * 4, (28,) * 4)] * 5
    forecast = Forecast(model, config, Machine(flop_rate=1e9, call_seconds=1e-3), shapes)
    per_process = [list(range(5))]
    quick, _ = forecast.with_measures(tiers()["quick"]).total(per_process)
    paper, _ = forecast.with_measures(tiers()["paper"]).total(per_process)
    full, _ = forecast.total(per_process)
    assert quick < paper < full
    fits_paper = cheaper_options(forecast, per_process, (paper + full) / 2, 20)
    assert fits_paper.measures == "paper" and fits_paper.measures_seconds == pytest.approx(paper)
    assert 10 <= fits_paper.limit < 20
    fits_quick = cheaper_options(forecast, per_process, (quick + paper) / 2, 20)
    assert fits_quick.measures == "quick"
    assert cheaper_options(forecast, per_process, quick / 1000, 20) == Cheaper(None, None, None)


def test_budget_refusal_is_one_line_naming_the_cheaper_command_and_writes_nothing(workspace, capsys):
    out = workspace["root"] / "refused"
    argv = _args(workspace, out, "--measures", "full", "--budget", "2s")
    code = main(argv)
    assert code == 2
    # the progress bar of the calibration batch (carriage returns) comes first; the error is one line, the last
    err = [part for part in re.split(r"[\r\n]", capsys.readouterr().err) if part.strip()]
    errors = [part for part in err if part.startswith("error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    line = errors[0]
    assert line.startswith("error: the forecast is ") and "over --budget 2 s" in line
    assert "run instead: python -m eval_suite " in line
    # each cheaper command is this command with one option replaced (--measures TIER or --limit N)
    for command in line.split("run instead: ")[1].split(" or "):
        words = shlex.split(command.split(" (")[0])[3:]
        option = "--measures" if "--measures" in words[-2:] else "--limit"
        assert words[-2] == option and option in ("--measures", "--limit")
        original = [w for k, w in enumerate(argv) if w != option and (k == 0 or argv[k - 1] != option)]
        assert words[:-2] == original
        if option == "--limit":
            assert 1 <= int(words[-1]) < 20
    assert not out.exists()


def test_budget_refusal_when_nothing_fits_says_raise_the_budget(workspace, capsys):
    out = workspace["root"] / "nothing_fits"
    assert main(_args(workspace, out, "--measures", "quick", "--budget", "0.001s")) == 2
    line = [part for part in re.split(r"[\r\n]", capsys.readouterr().err) if part.strip()][-1]
    assert line.endswith("run instead: nothing smaller fits: raise --budget")
    assert not out.exists()


def test_the_probe_leaves_the_results_as_they_were(workspace, monkeypatch):
    """Forecast from the probe alone (first batch too dear to measure first) or from the probe and the first batch:
    the probe's rows never reach the results, which are the same bytes either way."""
    from eval_suite import schedule

    outputs = {}
    for name, cheap in (("probe_only", 0.0), ("first_batch", float("inf"))):
        monkeypatch.setattr(schedule, "CHEAP_BATCH_SECONDS", cheap)
        out = workspace["root"] / name
        assert main(_args(workspace, out, "--measures", "quick", "--limit", "8")) == 0
        info = json.loads((out / "run_info.json").read_text())["forecast"]
        assert info["probe_examples"] == 2 and len(info["batches_measured"]) == (0 if cheap == 0 else 1)
        outputs[name] = (out / "results.json").read_bytes()
    assert outputs["probe_only"] == outputs["first_batch"]
