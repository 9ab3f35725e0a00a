"""The measuring loop of one process: forecast from a probe, keep to a budget, measure, show progress.

Each process measures its share of the planned batches longest first. Before any of them, the main process
measures a probe (one or two of the longest examples, apart from the plan) that calibrates the forecast
(:mod:`eval_suite.forecast`), prints the forecast (total time and each stage's share) and, when ``--budget`` is
given and the forecast exceeds it, every process stops with one line naming a cheaper command before anything is
written. Every measured batch refines the forecast. The progress bar counts examples and advances after every stage
(and within the long ones), each stage weighted by its forecast share of the batch, so its ETA covers every
measure of every remaining batch; with several processes the main process counts for all of them (they take
equal shares of the batches).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from .errors import EvalError
from .cost import ModelShape
from .forecast import Forecast, Machine, batch_shapes, cheaper_options, describe, format_seconds, stage_shares
from .registry import stage_labels


class BudgetExceeded(EvalError):
    """The forecast exceeds ``--budget``; ``cheaper`` (a :class:`eval_suite.forecast.Cheaper`) holds what would fit.
    The command line turns it into the cheaper command itself."""

    def __init__(self, message: str, cheaper):
        self.reason, self.cheaper = message, cheaper
        options = " or ".join(f"{option} {value} ({note})" for option, value, note in cheaper.options())
        super().__init__(f"{message}; " + (f"fits with {options}" if options else
                                            "nothing smaller fits: raise --budget"))


@dataclass
class LoopResult:
    computed: list = field(default_factory=list)  # (batch_id, arrays, token_maps)
    timings: dict = field(default_factory=dict)  # seconds per stage, this process
    forecast: dict | None = None  # what was forecast (main process), for run_info.json
    measure_seconds: float = 0.0
    measure_cpu_seconds: float = 0.0  # this process's CPU time (all its threads), probe included


def _broadcast(state, value):
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    holder = [value]
    broadcast_object_list(holder, from_process=0)
    return holder[0]


def run_batches(plan, remaining: list[int], state, *, budget_seconds: float | None, n_done: int,
                on_ready, save) -> LoopResult:
    """Measure this process's share of ``remaining`` (module docstring). ``on_ready()`` runs once, after the
    budget check and before the first ``save(batch_id, arrays, token_maps)``."""
    from tqdm.auto import tqdm

    classifier = plan.classifier
    per_process = [sorted(remaining[k::state.num_processes], reverse=True) for k in range(state.num_processes)]
    mine = per_process[state.process_index]
    result = LoopResult()
    model = ModelShape.of(classifier.model.config)
    forecast = Forecast(model, plan.measure, Machine.measure(classifier, model),
                        batch_shapes(plan.encodings, plan.batches))
    scale = state.num_processes if state.num_processes > 1 else 1
    # The count advances in fractions of examples (stage by stage); show it rounded.
    bar = tqdm(total=len(plan.indices), initial=n_done, unit="ex", desc="eval_suite", dynamic_ncols=True,
               disable=not state.is_main_process, smoothing=0.1,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} ex [{elapsed}<{remaining}]{postfix}")
    labels = stage_labels(plan.measure.measures)

    started, cpu_started = time.perf_counter(), time.process_time()
    try:  # closed before an error propagates: the error line stays the last thing on stderr
        position, deferred = float(n_done), []
        if state.is_main_process and remaining:
            _probe(plan, forecast, *probe_members(plan.encodings, [(b, plan.batches[b]) for b in remaining],
                                                  forecast), bar)
            if mine and sum(forecast.batch_seconds(mine[0]).values()) <= CHEAP_BATCH_SECONDS:
                # Cheap enough to measure before the forecast: the first (longest) batch calibrates it better than
                # the probe (per-batch overheads), and it is stored only once the run is within its budget.
                position = _measure_one(plan, mine[0], forecast, bar, position, scale, labels, result,
                                        lambda *stored: deferred.append(stored))
        _check_budget(plan, forecast, per_process, state, budget_seconds, result, bar)
        on_ready()
        for stored in deferred:
            save(*stored)
        for batch_id in mine[len(deferred):]:
            position = _measure_one(plan, batch_id, forecast, bar, position, scale, labels, result, save)
    finally:
        bar.close()
    result.measure_seconds = time.perf_counter() - started
    result.measure_cpu_seconds = time.process_time() - cpu_started
    return result


PROBE_EXAMPLES = 2  # the longest examples measured before the forecast
LONG_PROBE_TOKENS = 256  # from this length on, one example
# Above this forecast before calibration (every stage's factor 1) the probe is the one longest example: a paper
# run's two longest MR sentences cost 12 CPU-s. Shorter examples would be cheaper still but mislead: per-call costs
# dominate them, and a probe of two 6-token sentences forecast a quarter of a 100-sentence paper run's time.
PROBE_SECONDS = 2.0
CHEAP_BATCH_SECONDS = 5.0  # a first batch forecast under this is measured before the forecast is printed


def probe_members(encodings: list[dict], batches: list[tuple[int, list[int]]], forecast: Forecast
                  ) -> tuple[int, list[int]]:
    """(planned batch, examples) of the probe: the two longest examples of the longest batch, or its one longest
    when those two would cost more than :data:`PROBE_SECONDS` or it has :data:`LONG_PROBE_TOKENS` tokens. Work
    grows with the square of the length, so the longest examples are the ones whose cost the forecast must get
    right."""
    batch_id, members = max(batches, key=lambda b: (max(len(encodings[k]["input_ids"]) for k in b[1]), b[0]))
    members = sorted(members, key=lambda k: len(encodings[k]["input_ids"]))[-PROBE_EXAMPLES:]
    shape = batch_shapes(encodings, [members])[0]
    if shape.length >= LONG_PROBE_TOKENS or sum(forecast.shape_seconds(shape).values()) > PROBE_SECONDS:
        members = members[-1:]
    return batch_id, members


def _probe(plan, forecast: Forecast, batch_id: int, members: list[int], bar) -> None:
    """Measure the probe's examples apart from the plan (their rows are dropped) and calibrate the forecast on
    them: seconds, not the minutes a whole first batch of a paper run takes."""
    from .batching import collate
    from .batch_rows import measure_batch

    classifier = plan.classifier
    members = sorted(members, key=lambda k: len(plan.encodings[k]["input_ids"]))
    bar.set_postfix_str("forecast", refresh=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    timings: dict = {}
    batch = collate([plan.encodings[k] for k in members], classifier.tokenizer.pad_token_id or 0)
    config = dataclasses.replace(plan.measure, token_map_indices=frozenset())
    measure_batch(classifier, batch, [plan.labels[k] for k in members], [plan.indices[k] for k in members], config,
                  timings=timings)
    seconds = time.perf_counter() - started
    timings["bookkeeping"] = max(0.0, seconds - sum(timings.values()))
    shape = batch_shapes(plan.encodings, [members])[0]
    forecast.calibrate(shape, timings, batch_id=batch_id, seconds=seconds)
    forecast.probe_cpu_seconds = time.process_time() - cpu_started


def _measure_one(plan, batch_id: int, forecast: Forecast, bar, position: float, scale: int, labels: dict,
                 result: LoopResult, save) -> float:
    """Measure and store one planned batch, advancing the bar stage by stage (each stage weighted by its share of
    the batch's forecast) and refining the forecast with its timings; returns the bar's new position."""
    from .batching import collate
    from .batch_rows import measure_batch

    classifier = plan.classifier
    members = plan.batches[batch_id]
    stage_seconds = forecast.batch_seconds(batch_id)
    batch_total = sum(stage_seconds.values()) or 1.0
    done_shares: dict[str, float] = {}
    base = position

    def advance(stage, share):
        nonlocal position
        if stage not in done_shares:
            bar.set_postfix_str(labels.get(stage, stage), refresh=False)
        done_shares[stage] = max(done_shares.get(stage, 0.0), share)
        weight = sum(stage_seconds.get(s, 0.0) * f for s, f in done_shares.items()) / batch_total
        target = base + len(members) * scale * min(1.0, weight)
        if target > position:
            bar.update(target - position)
            position = target

    timings: dict = {}
    batch_started = time.perf_counter()
    batch = collate([plan.encodings[k] for k in members], classifier.tokenizer.pad_token_id or 0)
    arrays, token_maps = measure_batch(classifier, batch, [plan.labels[k] for k in members],
                                       [plan.indices[k] for k in members], plan.measure, timings=timings,
                                       progress=advance)
    save(batch_id, arrays, token_maps)
    # Everything the batch took outside its measurement stages (collating, converting, storing the rows).
    timings["bookkeeping"] = max(0.0, time.perf_counter() - batch_started - sum(timings.values()))
    for stage, seconds in timings.items():
        result.timings[stage] = result.timings.get(stage, 0.0) + seconds
    forecast.observe(batch_id, timings)
    result.computed.append((batch_id, arrays, token_maps))
    end = base + len(members) * scale
    if end > position:
        bar.update(end - position)
        position = end
    return position


def _check_budget(plan, forecast: Forecast, per_process, state, budget_seconds, result: LoopResult, bar) -> None:
    """Print the forecast (main process) and stop every process when it exceeds the budget."""
    verdict = None
    if state.is_main_process:
        total, per_stage = forecast.total(per_process)
        n_examples = sum(len(plan.batches[b]) for ids in per_process for b in ids)
        n_batches = sum(len(ids) for ids in per_process)
        line = describe(total, per_stage, n_examples, n_batches, state.num_processes)
        probe = forecast.probe_shape
        if probe is not None:
            examples = "the longest example" if probe.size == 1 else f"the {probe.size} longest examples"
            line += f"; calibrated on {examples} ({probe.length} tokens, {forecast.probe_seconds:.1f} s)"
        for batch_id, seconds in forecast.measured.items():
            line += f" and batch {batch_id} ({forecast.shapes[batch_id].size} examples, {sum(seconds.values()):.1f} s)"
        result.forecast = {"measure_seconds": total, "stage_seconds": per_stage,
                           "calibration_batch": forecast.calibrated_on, "batches_measured": list(forecast.measured),
                           "probe_examples": probe.size if probe else 0, "probe_seconds": forecast.probe_seconds,
                           "probe_cpu_seconds": forecast.probe_cpu_seconds, "factors": dict(forecast.factors),
                           "machine": forecast.machine.to_dict(), "processes": state.num_processes}
        if n_batches:
            bar.write("eval_suite: " + line)
        if budget_seconds is not None and total > budget_seconds:
            cheaper = cheaper_options(forecast, per_process, budget_seconds, len(plan.indices))
            verdict = (f"the forecast is {format_seconds(total)}, over --budget {format_seconds(budget_seconds)} "
                       f"({stage_shares(per_stage)})", cheaper)
    verdict = _broadcast(state, verdict)
    if verdict is not None:
        bar.close()
        raise BudgetExceeded(*verdict)
