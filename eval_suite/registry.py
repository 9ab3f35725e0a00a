"""The measurements the suite can run: one :class:`Measure` declaration each, which every consumer iterates.

A measure declares its name, its *role* (how the suite compares it), its tier, its parameters (a dataclass whose
fields carry their help text and are the command line's flags), its compute function, its cost model, the rows
it adds and its diagnostics with how they are summarised and shown. The batch engine (:mod:`eval_suite.batch_rows`),
the aggregation, the forecast, the command line, the CSV, the report, the cards and ``compare`` loop over the
selected declarations; none of them knows a measure by name.

Roles:

* ``input``: importance of the input tokens ``[B, L]``, compared with every head's attention, every map and every
  context-mixing view, ranked in faithfulness and shown in the token view;
* ``representation``: importance of the representations each layer attends over ``[B, n_layers, L]``;
* ``map``: attention carried to the inputs ``[B, n_layers, H, L]``, compared with the input methods;
* ``mixing``: a context-mixing method whose views are compared like attention (:mod:`eval_suite.context_mixing`);
* ``summary`` and ``check``: measurements with rows of their own (eq. 5's summaries, faithfulness).

Declarations live one family per module in :mod:`eval_suite.methods`, found by listing that package: a new method
is one module there (its declaration and its computation), its test and its documentation paragraph.

``--measures`` takes a comma-separated mix of tier names and measurement names (``paper``, ``quick,loo``,
``full,-faithfulness``: a leading ``-`` removes one); :func:`resolve_measures` turns it into the measured names in
registry order. Tiers are cumulative (``quick`` < ``paper`` < ``full``); a family with a tier of its own
(``mixing``) is selectable by that name and is part of ``full``; a measure without a tier (the captum adapters,
which need an optional package) is measured only when named. A family of names (``captum:<Class>``) is declared by a
:class:`MeasureFamily`, which makes the measure for each name it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

from .errors import EvalError

STANDARD_TIERS = ("quick", "paper", "full")
DEFAULT_SPEC = "paper"
ROLES = ("input", "representation", "map", "summary", "check", "mixing")


@dataclass(frozen=True)
class Shared:
    """Work several measures read, done once per batch under its own stage: ``compute(ctx, settings, demands)``
    gets what each selected measure asked of it (its ``uses`` value) and returns the shared value;
    ``cost(shape, model, settings, demands) -> Cost``."""

    name: str
    compute: Callable
    cost: Callable
    label: str | None = None  # the stage's name in the forecast
    needs_graph: bool = False  # computed from the base pass's graph, before it is released


@dataclass(frozen=True)
class Diagnostics:
    """Per-example quality figures a measure records beside its importance (integrated gradients' completeness
    gap, captum's convergence delta): rows ``<measure>.<name>``, reduced to ``results[<measure>]`` by
    ``summarise(rows) -> dict``; ``text(block) -> str`` is its line in the summary (and the card),
    ``card(block) -> (label, value, meaning) | None`` its card row, ``warning(block) -> str | None`` a warning."""

    rows: tuple[str, ...]
    summarise: Callable
    text: Callable
    card: Callable | None = None
    warning: Callable | None = None
    integer_rows: tuple[str, ...] = ()  # stored as integers (counts), the others as float32


@dataclass(frozen=True)
class Computed:
    """What a compute function returns when it has diagnostics: the importance and ``{row name: [B]}``."""

    values: object
    diagnostics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Measure:
    """One registered measurement (see the module docstring for the roles)."""

    name: str
    role: str
    tier: str | None  # the smallest standard tier that holds it, a family's own tier name, or None (by name only)
    question: str
    order: float  # its place in every methods list of results.json
    compute: Callable | None = None  # (ctx, settings, state) -> tensor | Computed; state holds the Shared values
    cost: Callable | None = None  # (BatchShape, ModelShape, settings, selection) -> Cost of its own stage
    stage: str | None = None  # the timing stage its work is counted under (default: its name)
    stage_label: str | None = None  # the stage's name in the forecast (default: the stage)
    params: type | None = None  # dataclass of its parameters: every field has help text and is a flag
    needs_graph: bool = False  # computed from the base pass's graph, before it is released
    uses_gradients: bool = False  # reads the base pass's backward pass (its cost is in the base stage)
    all_positions: bool = False  # has a value at special tokens too (compared in the all-positions view)
    sampled_positions: bool = False  # measured at the shared position sample of long documents (position_sample)
    uses: tuple = ()  # ((Shared, demand), ...): shared work it reads from ``state[shared.name]``
    diagnostics: Diagnostics | None = None
    ranking: Callable | None = None  # map: (ctx, settings, state) -> [B, L], its whole-network ranking
    token_map: Callable | None = None  # map: (values [B, n, H, L], ranking, n_layers) -> (label, [B, L])
    token_heads: bool = False  # map: its per-head values are stored in token_examples.json under its name
    left_out: Callable | None = None  # (settings) -> why a tier member is dropped, or None
    rows: Callable | None = None  # summary / check: (ctx, settings, state, out) adds its rows to ``out``
    per_layer: Callable | None = None  # summary: (agg, layer) -> fields of per_layer[layer]
    results_block: Callable | None = None  # check: (agg, context) -> results[name]
    summary: Callable | None = None  # (agg, results) -> fields of results["summary"]
    summary_text: Callable | None = None  # (summary, results) -> lines of the printed summary
    mixing: object = None  # mixing: the context-mixing class (eval_suite.context_mixing)

    @property
    def stage_name(self) -> str:
        return self.stage or self.name


@dataclass(frozen=True)
class MeasureFamily:
    """Names ``<prefix>:<argument>`` measured by one adapter: ``make(name) -> Measure`` (EvalError, one line, for
    an argument it does not accept); ``examples`` are shown in ``--help``."""

    prefix: str
    make: Callable
    examples: tuple[str, ...] = ()
    params: type | None = None  # parameters shared by every member


_DECLARED: dict[str, Measure] = {}
_FAMILIES: dict[str, MeasureFamily] = {}
_MADE: dict[str, Measure] = {}
_LOADED = False


def declare(*declarations) -> None:
    """Register measures and families (called by the modules of :mod:`eval_suite.methods`)."""
    for item in declarations:
        if isinstance(item, MeasureFamily):
            _FAMILIES[item.prefix] = item
            continue
        if item.role not in ROLES:
            raise ValueError(f"measure {item.name!r}: role must be one of {ROLES}, got {item.role!r}")
        _DECLARED[item.name] = item


def _load() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        import importlib

        importlib.import_module(f"{__package__}.methods")  # each of its modules declares its measures


def registry() -> dict[str, Measure]:
    """Every declared measure (not the families' members), in registry order."""
    _load()
    return dict(sorted(_DECLARED.items(), key=lambda kv: kv[1].order))


def families() -> dict[str, MeasureFamily]:
    _load()
    return dict(_FAMILIES)


def get(name: str) -> Measure:
    """The declaration of ``name``: a registered measure or a family member (made once); EvalError otherwise."""
    table = registry()
    if name in table:
        return table[name]
    if name not in _MADE:
        prefix, _, argument = name.partition(":")
        if not argument or prefix not in _FAMILIES:
            raise EvalError(f"--measures: unknown measurement or tier {name!r}; choose from the tiers "
                            f"{', '.join(tiers())}, the measurements {', '.join(table)} and the families "
                            f"{', '.join(f'{p}:<name>' for p in _FAMILIES)}")
        _MADE[name] = _FAMILIES[prefix].make(name)
    return _MADE[name]


def selected(measures) -> list[Measure]:
    """The declarations of ``measures`` (names), in the order given."""
    return [get(name) for name in measures]


def with_role(measures, role: str) -> list[Measure]:
    return [m for m in selected(measures) if m.role == role]


def methods_with_role(measures, role: str) -> list[str]:
    return [m.name for m in with_role(measures, role)]


def parameter_types() -> list[tuple[str, type]]:
    """(owner, parameters dataclass) of every measure and family that has parameters, in registry order."""
    out = [(m.name, m.params) for m in registry().values() if m.params is not None]
    return out + [(f"{f.prefix}:*", f.params) for f in families().values() if f.params is not None]


def tiers() -> dict[str, tuple[str, ...]]:
    """Tier name -> measured names (registry order). Standard tiers are cumulative; a family tier holds its own."""
    entries = list(registry().values())
    out = {}
    for level, tier in enumerate(STANDARD_TIERS):
        allowed = STANDARD_TIERS[: level + 1]
        out[tier] = tuple(m.name for m in entries if m.tier is not None and (m.tier in allowed or tier == "full"))
    for m in entries:
        if m.tier is not None and m.tier not in STANDARD_TIERS:
            out[m.tier] = out.get(m.tier, ()) + (m.name,)
    return out


def _order(names) -> tuple[str, ...]:
    table = registry()
    declared = [n for n in table if n in names]
    return tuple(declared + sorted((n for n in names if n not in table), key=lambda n: (get(n).order, n)))


def resolve_measures(spec: str | list | tuple | None) -> tuple[str, ...]:
    """``"paper"``, ``"quick,loo"``, ``"full,-faithfulness"`` (or a list of such names) -> measured names in
    registry order; EvalError (one line) for an unknown name or an empty selection."""
    if spec is None:
        spec = DEFAULT_SPEC
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    named = tiers()
    for raw in parts:
        item = str(raw).strip()
        if not item:
            continue
        drop = item.startswith("-")
        name = item[1:].strip() if drop else item
        members = set(named[name]) if name in named else {get(name).name}
        chosen = chosen - members if drop else chosen | members
    if not chosen:
        raise EvalError(f"--measures {spec!r} selects nothing; name a tier ({', '.join(named)}) or a measurement")
    return _order(chosen)


def describe_selection(measures) -> str:
    """The smallest way to name ``measures``: a tier name when it is one, else a comma-separated list."""
    for tier, members in tiers().items():
        if tuple(measures) == members:
            return tier
    return ",".join(measures)


@dataclass(frozen=True)
class MethodLists:
    """The importance methods one selection measures, in the groups the metrics and results use."""

    input: list = field(default_factory=list)
    representation: list = field(default_factory=list)

    @classmethod
    def of(cls, measures) -> "MethodLists":
        return cls(methods_with_role(measures, "input"), methods_with_role(measures, "representation"))

    @property
    def importance(self) -> list[str]:
        return self.input + self.representation

    @property
    def all_positions(self) -> list[str]:
        return [m for m in self.importance if get(m).all_positions]

    @property
    def sampled(self) -> list[str]:
        """The methods measured at a long document's sampled positions only."""
        return [m for m in self.importance if get(m).sampled_positions]


def shared_demands(measures) -> dict[str, tuple[Shared, list]]:
    """Shared work the selection reads: name -> (declaration, the demands of the measures that read it)."""
    out: dict[str, tuple[Shared, list]] = {}
    for measure in selected(measures):
        for shared, demand in measure.uses:
            out.setdefault(shared.name, (shared, []))[1].append(demand)
    return out


def stage_labels(measures=None) -> dict[str, str]:
    """Stage name -> its name in the forecast, for every stage of ``measures`` (default: every declared one)."""
    chosen = list(registry().values()) if measures is None else selected(measures)
    labels = {"base": "base pass + gradients", "metrics": "metrics", "bookkeeping": "bookkeeping"}
    for measure in chosen:
        for shared, _ in measure.uses:
            labels[shared.name] = shared.label or shared.name
        labels.setdefault(measure.stage_name, measure.stage_label or measure.stage_name)
    return labels


def params_fields(params_type) -> list:
    """The fields of a parameters dataclass that are settings (every one with help text)."""
    return [f for f in fields(params_type) if f.init]
