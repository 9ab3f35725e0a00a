"""Every setting of an evaluation, as dataclasses with help text: :class:`EvalRequest` holds the data, model and
output settings, :class:`MeasureConfig` what is measured (with each measure's own parameters nested, declared by the
measure) and :class:`AggregateConfig` the statistics (:mod:`eval_suite.statistics` computes them).

The command line is generated from these fields (:func:`build_parser`), the way training's ``TrainConfig`` is:
each field with help text is one ``--flag`` (its name with hyphens), in the group its ``group`` metadata names,
typed by its annotation (``parse`` metadata for a custom reader, ``choices`` for a fixed set). Written with
argparse rather than transformers' ``HfArgumentParser`` because that one imports transformers (1.3 s on this
machine, most of the ``--help`` budget), lists every option twice (``--x_y`` and ``--x-y``) and has no nested
dataclasses. This module imports no model library.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field

from .errors import EvalError
from .registry import DEFAULT_SPEC, STANDARD_TIERS, MethodLists, families, get, parameter_types, registry, \
    resolve_measures, tiers

GROUPS = {
    "data": "data: what is evaluated",
    "model": "model and device",
    "measures": "measures: what is measured (each measure's own parameters below)",
    "statistics": "statistics: how rows become aggregates",
    "output": "output",
}


def setting(help: str, group: str | None = None, **kwargs):
    """A dataclass field that is a command-line option: ``help`` (str, or a callable that returns it), ``group``
    (a key of :data:`GROUPS`), and optional ``choices``, ``parse`` (str -> value), ``metavar``, ``flag``."""
    metadata = {"help": help, "group": group}
    for key in ("choices", "parse", "metavar", "flag", "positional"):
        if key in kwargs:
            metadata[key] = kwargs.pop(key)
    return field(metadata=metadata, **kwargs)


# Rows x length of one extra forward pass (leave-one-out variants, representation leave-one-out, faithfulness).
# Larger chunks are slower on CPU, not faster: at 16,384 tokens a chunk's FFN activations (100 MB) and attention
# scores leave the caches. MiniLM paper tier, one thread, A/B in one process: 16,384 tokens took 57 CPU-s on 24 MR
# sentences, 2,048 tokens 44-46 (docs/performance.md, chunk size of extra forward passes).
EXTRA_PASS_TOKENS = 2048
# The same for passes that keep a graph (eq. 5, integrated gradients): 1,024-4,096 measured alike.
GRAPH_PASS_TOKENS = 4096


@dataclass
class AggregateConfig:
    """How per-example rows become aggregates (recorded in results.json as config.aggregation)."""

    min_examples: int = setting("a value is defined when it rests on at least min(this, N) examples", "statistics",
                                default=10)
    bootstrap_resamples: int = setting("resamples of the 95% bootstrap intervals", "statistics", default=1000)
    bootstrap_seed: int = field(default=0, metadata={"cli": False})  # the command line's --seed
    confidence: float = field(default=0.95, metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.min_examples < 1 or self.bootstrap_resamples < 10 or not 0 < self.confidence < 1:
            raise EvalError(f"--min-examples must be >= 1 and --bootstrap-resamples >= 10 (got {self.min_examples} "
                            f"and {self.bootstrap_resamples}), the confidence in (0, 1)")

    def to_dict(self) -> dict:
        return {"min_examples": self.min_examples, "bootstrap_resamples": self.bootstrap_resamples,
                "bootstrap_seed": self.bootstrap_seed, "confidence": self.confidence}


def _measures_help() -> str:
    named = tiers()
    extra = [name for name in named if name not in STANDARD_TIERS]
    adapters = "".join(f"; {f.prefix}:<name>, e.g. {', '.join(f.examples)}" for f in families().values())
    return (f"tiers and/or measure names, comma-separated ('-NAME' drops one). Tiers: {' < '.join(STANDARD_TIERS)}"
            + "".join(f"; {t} ({', '.join(named[t])}, in full)" for t in extra)
            + f". Measures: {', '.join(n for n in registry() if not any(n in named[t] for t in extra))}{adapters}. "
            "docs/eval_suite.md: each one's question, tier and cost")


def _default_params() -> dict:
    out = {}
    for owner, params_type in parameter_types():
        out[owner] = params_type()
    return out


@dataclass
class MeasureConfig:
    """What is measured and how (all recorded in results.json as ``config``)."""

    measures: tuple = setting(_measures_help, "measures", default=DEFAULT_SPEC, metavar="SPEC")
    attention_query: str = setting("the attention compared: the classification token's (cls) or the mean over all "
                                   "non-padding queries (mean)", "measures", default="cls", choices=("cls", "mean"))
    seed: int = setting("seed of the example subset, the random ranking, tie-breaking, sampling and the bootstrap",
                        "measures", default=0)
    sample_positions: int = setting("K: LOO, repr-LOO and eq. 5 of a long document use one seeded sample of K "
                                    "positions", "measures", default=64, metavar="K")
    sample_above: int = setting("a document with more content tokens than this is long", "measures", default=128)
    longest_content: int | None = None  # the longest document of the run (set by the runner): sampled rows or not
    max_tokens: int = EXTRA_PASS_TOKENS  # rows x length of one extra forward pass
    max_grad_tokens: int = GRAPH_PASS_TOKENS  # the same for passes that keep a graph
    token_map_indices: frozenset = field(default_factory=frozenset)  # examples whose token-level maps to keep
    params: dict = field(default_factory=_default_params)  # measure (or "family:*") -> its parameters dataclass
    left_out: dict = field(default_factory=dict, compare=False)  # measurement -> why a tier's member was dropped

    def __post_init__(self) -> None:
        spec = self.measures
        measures = resolve_measures(spec)
        named = {str(p).strip() for p in (spec.split(",") if isinstance(spec, str) else spec)}
        self.params = {**_default_params(), **self.params}
        for name in measures:
            entry = get(name)
            reason = entry.left_out(self) if entry.left_out is not None and name not in named else None
            if reason:
                self.left_out = {**self.left_out, name: reason}
        self.measures = tuple(m for m in measures if m not in self.left_out)

    @classmethod
    def of(cls, **settings) -> "MeasureConfig":
        """A config from flat names: its own fields and any measure's parameter (``ig_steps=4``, ``fractions=...``)."""
        own = {f.name for f in dataclasses.fields(cls)}
        params = _default_params()
        for key in [k for k in settings if k not in own]:
            owner = next((o for o, p in params.items() if hasattr(p, key)), None)
            if owner is None:
                raise TypeError(f"MeasureConfig has no setting {key!r}")
            params[owner] = dataclasses.replace(params[owner], **{key: settings.pop(key)})
        params.update(settings.pop("params", {}))
        return cls(**settings, params=params)

    def params_of(self, owner: str):
        """The parameters of measure ``owner`` (a family member reads its family's, ``"<prefix>:*"``)."""
        if owner not in self.params and ":" in owner:
            owner = owner.split(":", 1)[0] + ":*"
        return self.params[owner]

    def __getattr__(self, name: str):
        # A measure's parameter by its own name (config.ig_steps): each is declared once, by its measure.
        params = self.__dict__.get("params") or {}
        for value in params.values():
            if name in getattr(value, "__dataclass_fields__", {}):
                return getattr(value, name)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    @property
    def methods(self) -> MethodLists:
        return MethodLists.of(self.measures)

    def validate(self) -> None:
        """One-line EvalError for a value out of range (each measure checks its own parameters)."""
        if self.attention_query not in ("cls", "mean"):
            raise EvalError(f"--attention-query must be 'cls' or 'mean', got {self.attention_query!r}")
        if self.sample_positions < 2 or self.sample_above < 0:
            raise EvalError(f"--sample-positions must be >= 2 (a standard error needs two positions) and "
                            f"--sample-above >= 0, got {self.sample_positions} and {self.sample_above}")
        for value in self.params.values():
            if hasattr(value, "validate"):
                value.validate()

    def to_dict(self) -> dict:
        out = {"attention_query": self.attention_query, "seed": self.seed, "measures": list(self.measures),
               "sample_positions": self.sample_positions, "sample_above": self.sample_above}
        for value in self.params.values():
            out.update({k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(value).items()})
        return out


def _duration(text: str) -> float:
    """Seconds from "90s", "10m", "1.5h" or a bare number of minutes."""
    value = text.strip().lower()
    units = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    for suffix in sorted(units, key=len, reverse=True):
        if value.endswith(suffix):
            number, scale = value[: -len(suffix)], units[suffix]
            break
    else:
        number, scale = value, 60.0
    try:
        return float(number) * scale
    except ValueError:
        raise ValueError(f"--budget takes a duration such as 90s, 10m or 1.5h, got {text!r}") from None


@dataclass
class EvalRequest:
    """Everything ``python -m eval_suite`` takes; each field's help is its ``--flag``'s."""

    checkpoint: str = setting("checkpoint folder (ours or a stock HF sequence classifier) or a Hub model id", "model",
                              positional=True)
    output_dir: str = setting("folder for results.json, per_layer_head.csv, report.html and plots/", "output",
                              default="out/eval", metavar="DIR")
    dataset: str = setting("mr, trec, a local .csv/.jsonl/.parquet file or folder, or a Hub dataset name", "data",
                           default="mr", metavar="NAME")
    split: str = setting("split to evaluate (train / validation / test)", "data", default="test")
    limit: int | None = setting("evaluate a seeded random subset of this many examples (default: the whole split)",
                                "data", default=None)
    attn_impl: str | None = setting("evaluate under this attention mapping (sparsemax, entmax15, entmax:alpha=1.3, "
                                    "...; default: the checkpoint's own, softmax for stock checkpoints)", "model",
                                    default=None, metavar="MAPPING")
    text_column: str = setting("column holding the text, in a local file or Hub dataset", "data", default="text")
    text_pair_column: str | None = setting("second text of sentence pairs (NLI, paraphrase), encoded with the "
                                           "first as one pair", "data", default=None)
    label_column: str = setting("column holding the label (integer class or a name)", "data", default="label")
    batch_size: int = setting("examples measured together (larger needs more memory and is not faster on CPU)",
                              "model", default=32)
    max_length: int | None = setting("truncate texts to this many tokens (default: the model's limit)", "data",
                                     default=None)
    resume: bool = setting("skip batches whose rows are already in OUTDIR/rows", "output", default=False)
    overwrite: bool = setting("replace the results of another run in --output-dir (once the new ones are "
                              "complete)", "output", default=False)
    label_map: str | None = setting("label values to use, numbered 0..K-1 in this order (as in training)", "data",
                                    default=None, metavar="RAW=NAME,...")
    plot_examples: int = setting("token-level views (plots, report) for this many examples", "output", default=3)
    no_plots: bool = setting("write no PNG plots (half a CPU-second each); results, CSV, report and cards "
                             "need none", "output", default=False)
    cpu: bool = setting("run on CPU even when a GPU is visible (= --device cpu)", "model", default=False)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    aggregation: AggregateConfig = field(default_factory=AggregateConfig)
    device: str = setting("auto (a GPU when one is visible), cpu, cuda or cuda:N (one process)", "model",
                          default="auto")
    budget_seconds: float | None = setting("refuse, before writing anything, when the forecast exceeds this (90s, "
                                           "10m, 1.5h); the error names a cheaper command", "measures", default=None,
                                           flag="budget", parse=_duration, metavar="DURATION")
    max_batch_tokens: int = setting("at most this many padded tokens per batch (long documents: fewer examples)",
                                    "model", default=4096)
    max_padding: float = setting("padding tokens per real token a batch may hold (each costs what a real one does)",
                                 "model", default=0.2)

    def validate(self) -> None:
        """One-line EvalError for settings that are wrong before anything is loaded."""
        from hf_sparse_attn.limits import LimitError, check_seed
        from hf_sparse_attn.output_dir import OutputDirError, check_output_dir

        self.measure.validate()
        for name in ("batch_size", "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise EvalError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.max_padding >= 0:  # NaN too
            raise EvalError(f"--max-padding must be a number >= 0 (padding tokens per real token), got "
                            f"{self.max_padding}")
        if self.limit is not None and self.limit < 1:
            raise EvalError(f"--limit must be a positive number of examples, got {self.limit}; leave it out to "
                            "evaluate the whole split")
        if self.max_length is not None and self.max_length < 3:
            raise EvalError(f"--max-length must be >= 3 tokens, got {self.max_length}")
        if self.plot_examples < 0:
            raise EvalError(f"--plot-examples must be >= 0, got {self.plot_examples}")
        try:
            check_seed(self.measure.seed)
        except LimitError as error:
            raise EvalError(str(error)) from None
        if self.resume and self.overwrite:
            raise EvalError("--resume and --overwrite contradict each other; pass one")
        if self.label_map is not None:
            from hf_sparse_attn.data import parse_label_map

            parse_label_map(self.label_map)  # DataError in one line
        try:
            check_output_dir(self.output_dir)
        except OutputDirError as error:
            raise EvalError(str(error)) from None
        if self.budget_seconds is not None and not (self.budget_seconds > 0 and math.isfinite(self.budget_seconds)):
            raise EvalError(f"--budget must be a positive duration (e.g. 90s, 10m, 1.5h), got {self.budget_seconds}")
        self._validate_device()

    def _validate_device(self) -> None:
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise EvalError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.device.startswith("cuda") and not self.cpu:
            import torch

            if not torch.cuda.is_available():
                raise EvalError(f"--device {self.device}: no CUDA device is visible to this process; use --device cpu "
                                "(or auto)")


# ----------------------------------------------------------------------------------------------- command line


def _reader(parse, flag: str):
    def read(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error) or f"{flag}: cannot read {text!r}") from None
    return read


def _add(group, f: dataclasses.Field, hint) -> None:
    meta = f.metadata
    help_text = meta["help"]() if callable(meta["help"]) else meta["help"]
    help_text = help_text.replace("%", "%%")
    if meta.get("positional"):
        group.add_argument(f.name, help=help_text)
        return
    flag = "--" + meta.get("flag", f.name).replace("_", "-")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if hint is bool:
        group.add_argument(flag, dest=f.name, action="store_true", help=help_text)
        return
    kind = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    metavar = {int: "N", float: "X"}.get(kind[0], "TEXT")
    kwargs = {"dest": f.name, "default": default, "metavar": meta.get("metavar", None if "choices" in meta else metavar)}
    if "choices" in meta:
        kwargs["choices"] = meta["choices"]
    elif "parse" in meta:
        kwargs["type"] = _reader(meta["parse"], flag)
    elif kind[0] in (int, float):
        kwargs["type"] = kind[0]
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    if default is not None and "default" not in help_text:
        help_text += f" (default: {shown})"
    group.add_argument(flag, help=help_text, **kwargs)


def _options(cls) -> list[tuple[dataclasses.Field, object]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if "help" in f.metadata]


def build_parser(**kwargs) -> argparse.ArgumentParser:
    """The evaluation's command line: one option per setting, grouped (data, model, measures, each measure's own
    parameters, statistics, output); ``parser.groups`` maps each key of :data:`GROUPS` to its group."""
    parser = argparse.ArgumentParser(**kwargs)
    groups = {key: parser.add_argument_group(GROUPS[key]) for key in ("data", "model", "measures")}
    per_measure = []
    for owner, params_type in parameter_types():
        entry = registry().get(owner)
        title = f"{owner}: {entry.question}" if entry is not None else f"{owner} (every member of the family)"
        per_measure.append((parser.add_argument_group(title), params_type))
    groups.update({key: parser.add_argument_group(GROUPS[key]) for key in ("statistics", "output")})
    for f, hint in _options(EvalRequest) + _options(MeasureConfig):
        _add(groups[f.metadata["group"]], f, hint)
    for group, params_type in per_measure:
        for f, hint in _options(params_type):
            _add(group, f, hint)
    for f, hint in _options(AggregateConfig):
        _add(groups["statistics"], f, hint)
    parser.groups = groups
    return parser


def _build(cls, args: argparse.Namespace, **extra):
    return cls(**{f.name: getattr(args, f.name) for f, _ in _options(cls)}, **extra)


def request_from_args(args: argparse.Namespace) -> EvalRequest:
    """The :class:`EvalRequest` of parsed arguments (``--seed`` also seeds the bootstrap)."""
    params = {owner: _build(params_type, args) for owner, params_type in parameter_types()}
    measure = _build(MeasureConfig, args, params=params)
    aggregation = _build(AggregateConfig, args, bootstrap_seed=measure.seed)
    return _build(EvalRequest, args, measure=measure, aggregation=aggregation)
