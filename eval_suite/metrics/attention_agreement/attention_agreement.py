"""evaluate module: agreement between attention vectors and importance vectors (eval_suite's metrics).

Load it by path (evaluate's Hub-hosted metrics do not load offline)::

    import evaluate
    from eval_suite.metrics import module_path
    agreement = evaluate.load(str(module_path("attention_agreement")))
    agreement.compute(attention=[[0.7, 0.3, 0.0]], importance=[[0.5, 0.2, 0.3]])

Each pair of vectors is one example (lengths may differ between examples; both vectors of a pair must have the
same length). Returns the mean and std over examples of Kendall tau-b, tau-b on attention's non-zero support,
Jensen-Shannon divergence (base 2), normalised entropy of both, attention sparsity and support size, and support
coverage, exactly as ``python -m eval_suite`` computes them. Undefined values are left out of means.
"""

import datasets
import evaluate
import numpy as np

from eval_suite import metrics as M

_DESCRIPTION = "Agreement between attention and importance distributions (Meister et al. 2021 measurements)."
_CITATION = """@inproceedings{meister-etal-2021-sparse,
  title = {Is Sparse Attention more Interpretable?},
  author = {Meister, Clara and Lazov, Stefan and Augenstein, Isabelle and Cotterell, Ryan},
  booktitle = {Proceedings of ACL-IJCNLP 2021 (Short Papers)},
  pages = {122--129},
  year = {2021}
}"""
_KWARGS = """
Args:
    attention: list of attention vectors (non-negative), one per example.
    importance: list of importance vectors (non-negative), same lengths as ``attention``.
Returns:
    dict with ``<metric>`` (mean over examples) and ``<metric>_std`` for kendall_tau_b, kendall_tau_b_on_support,
    jensen_shannon, attention_entropy, importance_entropy, sparsity, support_size, support_coverage; and n_examples.
"""


def _stats(values) -> tuple:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return (float(finite.mean()), float(finite.std())) if finite.size else (float("nan"), float("nan"))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class AttentionAgreement(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({
                "attention": datasets.Sequence(datasets.Value("float64")),
                "importance": datasets.Sequence(datasets.Value("float64")),
            }),
        )

    def _compute(self, attention, importance):
        if len(attention) != len(importance):
            raise ValueError(f"got {len(attention)} attention and {len(importance)} importance vectors")
        length = max(len(a) for a in attention)
        x = np.zeros((len(attention), length))
        y = np.zeros_like(x)
        mask = np.zeros_like(x, dtype=bool)
        for i, (a, b) in enumerate(zip(attention, importance)):
            if len(a) != len(b):
                raise ValueError(f"example {i}: attention has {len(a)} entries, importance {len(b)}")
            x[i, : len(a)], y[i, : len(b)], mask[i, : len(a)] = a, b, True
        values = {
            "kendall_tau_b": M.kendall_tau_b(x, y, mask),
            "kendall_tau_b_on_support": M.kendall_tau_b(x, y, mask & (x > 0)),
            "jensen_shannon": M.jensen_shannon(x, y, mask),
            "attention_entropy": M.normalised_entropy(x, mask),
            "importance_entropy": M.normalised_entropy(y, mask),
            "sparsity": M.sparsity(x, mask),
            "support_size": M.support_size(x, mask),
            "support_coverage": M.support_coverage(x, y, mask)["support_coverage"],
        }
        out = {"n_examples": len(attention)}
        for name, tensor in values.items():
            out[name], out[f"{name}_std"] = _stats(tensor.numpy())
        return out
