"""evaluate module: accuracy and macro-F1, as eval_suite reports them (works offline, loaded by path).

    import evaluate
    from eval_suite.metrics import module_path
    quality = evaluate.load(str(module_path("classification_quality")))
    quality.compute(predictions=[0, 1, 1], references=[0, 1, 0])   # {"accuracy": ..., "macro_f1": ...}

macro-F1 is the unweighted mean of per-class F1 over the classes present in predictions or references.
"""

import datasets
import evaluate

from eval_suite import metrics as M

_DESCRIPTION = "Accuracy and macro-averaged F1 of class predictions."
_KWARGS = """
Args:
    predictions: list of predicted class ids.
    references: list of true class ids.
Returns:
    accuracy: share of predictions equal to the reference.
    macro_f1: mean over classes of F1.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class ClassificationQuality(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": M.accuracy(predictions, references), "macro_f1": M.macro_f1(predictions, references)}
