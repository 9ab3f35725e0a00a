"""An evaluation from Python, shown inline in Jupyter: :func:`evaluate_checkpoint` returns an :class:`Evaluation`.

    from eval_suite import evaluate_checkpoint
    evaluation = evaluate_checkpoint("out/mr-entmax15/final", "mr", limit=50, measures="quick")
    evaluation                     # in a notebook: the report's layer x head grid and token view, inline
    evaluation["per_layer"][0]     # the results dict, as results.json holds it
    evaluation.summary             # the summary lines the command prints

The inline view is report.html itself, in an ``<iframe srcdoc>``: the same page, script and data, so it needs no
network and no widget library, and its styles and element ids cannot collide with the notebook's or with another
evaluation's output.
"""

from __future__ import annotations

import dataclasses
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hf_sparse_attn.constants import RESULTS_FILE, TOKEN_EXAMPLES_FILE

from .errors import EvalError

INLINE_HEIGHT_PX = 900


@dataclass
class Evaluation:
    """One evaluation's results: ``results`` (results.json as a dict), ``token_examples`` (token_examples.json)
    and the folder that holds every output (report.html, per_layer_head.csv, plots/). Indexing reads ``results``."""

    results: dict
    token_examples: dict = field(default_factory=dict)
    output_dir: Path | None = None

    def __getitem__(self, key: str):
        return self.results[key]

    @property
    def summary(self) -> list[str]:
        """The summary lines ``python -m eval_suite`` prints."""
        return list((self.results.get("summary") or {}).get("text", []))

    def report_html(self) -> str:
        """report.html of these results, as one self-contained page."""
        from .report import report_html

        return report_html(self.results, self.token_examples)

    def _repr_html_(self) -> str:
        title = html.escape(f"eval_suite report: {self.results.get('attn_impl')} on {self.results.get('dataset')}")
        return (f'<iframe title="{title}" srcdoc="{html.escape(self.report_html(), quote=True)}" '
                f'sandbox="allow-scripts" style="width: 100%; height: {INLINE_HEIGHT_PX}px; border: 1px solid #ccc">'
                "</iframe>")

    def __repr__(self) -> str:
        return (f"Evaluation({self.results.get('attn_impl')} on {self.results.get('dataset')} "
                f"{self.results.get('split')}: {self.results.get('n_examples')} examples, accuracy "
                f"{self.results.get('accuracy', float('nan')):.3f}; output_dir={str(self.output_dir)!r})")


def load_evaluation(output_dir) -> Evaluation:
    """The :class:`Evaluation` an earlier run wrote to ``output_dir`` (its results.json and token_examples.json)."""
    folder = Path(output_dir)
    try:
        results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EvalError(f"cannot read {folder / RESULTS_FILE} ({error}); pass the --output-dir of an "
                        "evaluation") from None
    examples_path = folder / TOKEN_EXAMPLES_FILE
    token_examples = json.loads(examples_path.read_text(encoding="utf-8")) if examples_path.is_file() else {}
    return Evaluation(results, token_examples, folder)


def _request(checkpoint, dataset, output_dir, settings: dict):
    """An EvalRequest from keyword settings named as the command line's options with underscores: the request's own
    fields, the aggregation's, and every other one the measurement config takes; a one-line EvalError otherwise."""
    from hf_sparse_attn.files import first_line

    from .settings import EvalRequest

    fields = {f.name: f for f in dataclasses.fields(EvalRequest)}
    measure_cls, aggregation_cls = fields["measure"].default_factory, fields["aggregation"].default_factory
    own = {k: settings.pop(k) for k in list(settings) if k in fields}
    aggregation = {k: settings.pop(k) for k in list(settings)
                   if k in {f.name for f in dataclasses.fields(aggregation_cls)}}
    if settings.get("measures", "") is None:
        del settings["measures"]
    try:  # what is left configures the measurements (a measure's own parameters too, where the config has them)
        measure = measure_cls.of(**settings) if hasattr(measure_cls, "of") else measure_cls(**settings)
    except TypeError as error:
        raise EvalError(f"evaluate_checkpoint() got an unknown setting ({first_line(error)}); use the names of "
                        "python -m eval_suite's options with underscores (limit, split, text_column, measures, "
                        "...)") from None
    own.setdefault("measure", measure)
    own.setdefault("aggregation", aggregation_cls(**aggregation))
    return EvalRequest(checkpoint=str(checkpoint), output_dir=str(output_dir), dataset=dataset, **own)


def evaluate_checkpoint(checkpoint, dataset: str = "mr", *, output_dir=None, **settings) -> Evaluation:
    """Evaluate ``checkpoint`` (a folder or Hub id) on ``dataset`` ("mr", "trec", a local file or folder, a Hub
    dataset) as ``python -m eval_suite`` does, and return the :class:`Evaluation`, which a notebook shows inline.

    ``settings`` are the command's options with underscores (``split="test"``, ``limit=100``, ``measures="quick"``,
    ``text_column``, ``text_pair_column``, ``label_column``, ``max_length``, ``seed``, ``min_examples``, ...).
    Every output is written to ``output_dir`` (default: a new temporary folder), report.html included.
    """
    from .runner import run_evaluation

    folder = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="eval_suite-"))
    if "seed" in settings:  # one seed for the examples, the random ranking and the bootstrap, as on the command line
        settings.setdefault("bootstrap_seed", settings["seed"])
    results = run_evaluation(_request(checkpoint, dataset, folder, dict(settings)))
    if results is None:  # not the main process of a multi-process run
        return None
    return load_evaluation(folder)
