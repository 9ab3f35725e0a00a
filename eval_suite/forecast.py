"""How long an evaluation will take, known seconds after the model is loaded and refined as batches run.

The cost model (:mod:`eval_suite.cost`, each measure's own in its declaration) gives, for every planned batch and
stage, its FLOPs and its number of model calls. Two numbers of this machine turn them into seconds (:class:`Machine`:
the model's own FLOP rate on a mid-size input and the time of a call on a minimal one), and a per-stage factor
corrects for what the model leaves out (a stage's efficiency, adaptive integrated-gradient steps, deduplicated
faithfulness variants): forecast(batch, stage) = factor(stage) x model seconds(batch, stage). The factors come first
from a probe: the two longest examples of the longest planned batch, or the longest alone where two would be dear
(:func:`eval_suite.schedule.probe_members`), measured apart from the plan, so the forecast is printed after
seconds, not after the minutes a whole first batch of a paper run takes, and it sees the lengths that dominate the
total (work grows with the square of the length); a run that would not fit in memory fails there too. Every
measured batch then refines them (measured over model seconds, summed over the batches so far), which the progress
bar's ETA follows.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from .cost import BatchShape, Cost, ModelShape, stage_costs
from .registry import STANDARD_TIERS, describe_selection, registry, stage_labels, tiers


@dataclass(frozen=True)
class Machine:
    """This machine running this model: FLOP/s of a forward pass on a mid-size input, seconds of a minimal call."""

    flop_rate: float
    call_seconds: float

    @classmethod
    def measure(cls, classifier, model: ModelShape) -> "Machine":
        """Time the model itself (a few forward passes, and one backward pass to warm it up)."""
        device = classifier.device
        vocab = int(getattr(classifier.model.config, "vocab_size", 100))
        mid_length = min(32, classifier.max_length)  # a model with fewer positions cannot take 32 tokens
        ids = {(1, 4): None, (4, mid_length): None}
        for shape in ids:
            ids[shape] = torch.randint(min(5, vocab - 1), vocab, shape, device=device)
        with torch.enable_grad():
            embeds = classifier.word_embeddings(ids[(1, 4)]).detach().requires_grad_(True)
            torch.autograd.grad(classifier.model(inputs_embeds=embeds).logits.sum(), embeds)

        def seconds(shape):
            times = []
            with torch.inference_mode():
                for _ in range(3):
                    start = time.perf_counter()
                    classifier.model(input_ids=ids[shape])
                    _synchronize(device)
                    times.append(time.perf_counter() - start)
            return statistics.median(times)

        call = seconds((1, 4))
        mid = seconds((4, mid_length))
        flops = model.n_layers * model.layer_flops(4, mid_length)
        return cls(flop_rate=flops / max(mid - call, 1e-3 * mid, 1e-9), call_seconds=call)

    def seconds(self, cost: Cost) -> float:
        return cost.flops / self.flop_rate + cost.calls * self.call_seconds

    def to_dict(self) -> dict:
        return {"model_gflop_per_second": self.flop_rate / 1e9, "seconds_per_call": self.call_seconds}


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def batch_shapes(encodings: list[dict], batches: list[list[int]]) -> list[BatchShape]:
    """The shape of every planned batch, from its members' encodings."""
    shapes = []
    for members in batches:
        lengths = tuple(len(encodings[k]["input_ids"]) for k in members)
        content = tuple(len(encodings[k]["input_ids"]) - sum(encodings[k]["special_tokens_mask"]) for k in members)
        shapes.append(BatchShape(lengths, content))
    return shapes


class Forecast:
    """Seconds per planned batch and stage for one selection; calibrated on measured batches (module docstring)."""

    def __init__(self, model: ModelShape, config, machine: Machine, shapes: list[BatchShape], measures=None):
        self.model, self.config, self.machine, self.shapes = model, config, machine, shapes
        self.measures = tuple(config.measures if measures is None else measures)
        self.factors: dict[str, float] = {}
        self.calibrated_on: int | None = None  # the planned batch the probe was taken from
        self.probe_seconds = 0.0  # spent measuring the probe (part of the forecast total)
        self.probe_shape: BatchShape | None = None
        self.probe_cpu_seconds = 0.0
        self._observed: dict[str, list[float]] = {}  # stage -> [measured seconds, model seconds] over full batches
        self.measured: dict[int, dict[str, float]] = {}  # planned batches already measured: seconds per stage

    def with_measures(self, measures) -> "Forecast":
        """The same calibration applied to another selection (stages it shares keep their factors)."""
        other = Forecast(self.model, self.config, self.machine, self.shapes, measures)
        # The probe measured this selection; another one would probe itself, at a cost its batches' forecast covers.
        other.factors, other.calibrated_on = dict(self.factors), self.calibrated_on
        return other

    def model_seconds(self, batch_id: int) -> dict[str, float]:
        return self.shape_seconds(self.shapes[batch_id])

    def shape_seconds(self, shape: BatchShape) -> dict[str, float]:
        costs = stage_costs(shape, self.model, self.config, self.measures)
        return {stage: self.machine.seconds(cost) for stage, cost in costs.items()}

    def calibrate(self, shape: BatchShape, measured: dict[str, float], *, batch_id: int | None = None,
                  seconds: float = 0.0) -> None:
        """Set each stage's factor from the seconds it took on a probe of ``shape`` (taken from planned batch
        ``batch_id``; ``seconds`` in all, counted in the total)."""
        for stage, model_seconds in self.shape_seconds(shape).items():
            if stage in measured and model_seconds > 0:
                self.factors[stage] = measured[stage] / model_seconds
        self.calibrated_on, self.probe_seconds, self.probe_shape = batch_id, seconds, shape

    def observe(self, batch_id: int, measured: dict[str, float]) -> None:
        """Refine the factors with a measured planned batch: each stage's measured seconds over its model seconds,
        summed over every batch observed so far (the probe's factors are replaced by these)."""
        self.measured[batch_id] = dict(measured)
        for stage, model_seconds in self.model_seconds(batch_id).items():
            if stage in measured and model_seconds > 0:
                spent = self._observed.setdefault(stage, [0.0, 0.0])
                spent[0] += measured[stage]
                spent[1] += model_seconds
                self.factors[stage] = spent[0] / spent[1]

    def batch_seconds(self, batch_id: int) -> dict[str, float]:
        """Forecast seconds of every stage of one batch (stages not calibrated yet: factor 1)."""
        return {stage: self.factors.get(stage, 1.0) * seconds for stage, seconds in self.model_seconds(batch_id).items()}

    def total(self, batch_ids_per_process: list[list[int]]) -> tuple[float, dict[str, float]]:
        """(wall seconds: the busiest process's sum plus the probe, seconds per stage summed over every process);
        batches already measured count with their measured seconds."""
        per_stage: dict[str, float] = {}
        busiest = 0.0
        for batch_ids in batch_ids_per_process:
            own = 0.0
            for batch_id in batch_ids:
                seconds_of = self.measured.get(batch_id) or self.batch_seconds(batch_id)
                for stage, seconds in seconds_of.items():
                    per_stage[stage] = per_stage.get(stage, 0.0) + seconds
                    own += seconds
            busiest = max(busiest, own)
        return busiest + self.probe_seconds, per_stage


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def stage_shares(per_stage: dict[str, float]) -> str:
    """"repr_loo 48%, eq. 5 37%, ...": each stage's share of the forecast, largest first."""
    spent = sum(per_stage.values()) or 1.0
    shares = sorted(per_stage.items(), key=lambda kv: -kv[1])
    labels = stage_labels()
    return ", ".join(f"{labels.get(stage, stage)} {seconds / spent:.0%}" for stage, seconds in shares
                     if seconds / spent >= 0.005)


def describe(total: float, per_stage: dict[str, float], n_examples: int, n_batches: int, processes: int) -> str:
    """One line: the forecast total and each stage's share."""
    where = f" on {processes} processes" if processes > 1 else ""
    return (f"forecast: {format_seconds(total)} to measure {n_examples} examples in {n_batches} batches{where} "
            f"({stage_shares(per_stage)})")


@dataclass(frozen=True)
class Cheaper:
    """What would fit a budget: a smaller selection and its forecast, and/or a smaller --limit."""

    measures: str | None
    measures_seconds: float | None
    limit: int | None

    def options(self) -> list[tuple[str, str, str]]:
        """(option, value, note) for each way to fit."""
        out = []
        if self.measures:
            out.append(("--measures", self.measures, f"forecast {format_seconds(self.measures_seconds)}"))
        if self.limit:
            out.append(("--limit", str(self.limit), "same measures, fewer examples"))
        return out


def cheaper_options(forecast: Forecast, batch_ids_per_process: list[list[int]], budget: float,
                    n_examples: int) -> Cheaper:
    """The largest standard tier inside the current selection that fits ``budget``, and the largest --limit that
    fits with the current selection (examples drawn at random have the same length mix, so time scales with N)."""
    total, _ = forecast.total(batch_ids_per_process)
    best = None
    current = set(forecast.measures)
    named = tiers()
    # standard tiers only: a family tier (mixing) alone measures no importance to compare its methods with
    for name, members in ((tier, named[tier]) for tier in reversed(STANDARD_TIERS)):
        if not members or not set(members) < current:
            continue
        seconds, _ = forecast.with_measures(members).total(batch_ids_per_process)
        if seconds <= budget:
            best = (name, seconds)
            break
    batches = total - forecast.probe_seconds  # what scales with the number of examples
    limit = int(math.floor(n_examples * budget / batches)) if batches > 0 else None
    return Cheaper(best[0] if best else None, best[1] if best else None, limit if limit and limit >= 1 else None)


def selection_name(measures) -> str:
    return describe_selection(tuple(m for m in registry() if m in measures))
