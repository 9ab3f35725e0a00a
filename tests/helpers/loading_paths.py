"""The loading paths of the loading-path matrix (tests/hf_sparse_attn/test_loading_paths.py), runnable with or without
hf_sparse_attn importable: each path loads a folder the way a transformers user would and returns what it computed.

Run as a script it loads every path of every folder named on the command line (no hf_sparse_attn import, and the
caller blocks it) and saves the results with torch.save: ``python loading_paths.py OUT.pt MODE FOLDERS.json``.
"""

from __future__ import annotations

import json
import logging
import sys

import torch

TEXTS = ["w1 w2 w3 w4 w5", "w6 w7"]
MASKED_TEXTS = ["w1 [MASK] w3", "w4 w5 [MASK]"]
# head name -> Auto class name; every head has its own saved folder ("heads/<name>")
HEADS = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "question_answering": "AutoModelForQuestionAnswering",
    "multiple_choice": "AutoModelForMultipleChoice",
    "masked_lm": "AutoModelForMaskedLM",
    "pre_training": "AutoModelForPreTraining",
    "causal_lm": "AutoModelForCausalLM",
    "base": "AutoModel",
}
# path name -> (folder key, how to load and run it)
PATHS = [
    "from_pretrained",
    "from_pretrained dtype=auto",
    "from_pretrained dtype=float32",
    "from_pretrained dtype=bfloat16",
    "from_pretrained device_map=cpu",
    "from_pretrained low_cpu_mem_usage",
    "AutoConfig",
    "AutoModel (base of a classifier)",
    "pipeline text-classification",
    "pipeline feature-extraction",
    "pipeline fill-mask",
    "Trainer.predict",
    *[f"{auto} ({head} folder)" for head, auto in HEADS.items()],
]


class ErrorLines(logging.Handler):
    """transformers' error/warning noise while a path runs (a pipeline complaining about an unknown class...)."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage()[:300])


def _batch(tokenizer, texts=TEXTS):
    return tokenizer(texts, padding=True, return_tensors="pt")


def _outputs(out) -> list[torch.Tensor]:
    """Every tensor of a model output, as float32 (attentions included)."""
    tensors = []
    for value in out.values():
        items = value if isinstance(value, tuple) else (value,)
        tensors += [t.detach().float() for t in items if torch.is_tensor(t)]
    return tensors


def run_path(path: str, folders: dict, trust_remote_code: bool | None) -> dict:
    """Load and run one path; returns {"class": model class name, "module": its module, "outputs": [tensors]}."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    kw = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
    folder = folders["classifier"]
    auto = transformers.AutoModelForSequenceClassification
    dtype_kwargs = {"from_pretrained": {}, "from_pretrained dtype=auto": {"dtype": "auto"},
                    "from_pretrained dtype=float32": {"dtype": torch.float32},
                    "from_pretrained dtype=bfloat16": {"dtype": torch.bfloat16},
                    "from_pretrained device_map=cpu": {"device_map": "cpu"},
                    "from_pretrained low_cpu_mem_usage": {"low_cpu_mem_usage": True}}
    if path in dtype_kwargs:
        model = auto.from_pretrained(folder, **dtype_kwargs[path], **kw).eval()
        with torch.no_grad():
            out = model(**_batch(AutoTokenizer.from_pretrained(folder, **kw)), output_attentions=True)
        return _result(model, _outputs(out))
    if path == "AutoConfig":
        config = AutoConfig.from_pretrained(folder, **kw)
        return {"class": type(config).__name__, "module": type(config).__module__,
                "outputs": [torch.tensor(float(config.num_hidden_layers))]}
    if path == "AutoModel (base of a classifier)":
        model = transformers.AutoModel.from_pretrained(folder, **kw).eval()
        with torch.no_grad():
            out = model(**_batch(AutoTokenizer.from_pretrained(folder, **kw)), output_attentions=True)
        return _result(model, _outputs(out))
    if path.startswith("pipeline"):
        task = path.split()[1]
        folder = folders["masked_lm"] if task == "fill-mask" else folder
        pipe = transformers.pipeline(task, model=folder, device="cpu", **kw)
        if task == "text-classification":
            got = pipe(TEXTS, top_k=None)
            values = [torch.tensor([d["score"] for d in sorted(row, key=lambda d: d["label"])]) for row in got]
        elif task == "feature-extraction":
            values = [torch.tensor(row) for row in pipe(TEXTS)]
        else:
            values = [torch.tensor([d["score"] for d in row] + [float(d["token"]) for d in row])
                      for row in pipe(MASKED_TEXTS, top_k=3)]
        return _result(pipe.model, values)
    if path == "Trainer.predict":
        from transformers import Trainer, TrainingArguments

        model = auto.from_pretrained(folder, **kw)
        tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
        rows = [{k: v[i] for k, v in _batch(tokenizer).items()} for i in range(len(TEXTS))]
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArguments(output_dir=scratch, report_to=[], use_cpu=True, disable_tqdm=True,
                                     per_device_eval_batch_size=2)
            predictions = Trainer(model=model, args=args).predict(rows).predictions
        predictions = predictions if isinstance(predictions, tuple) else (predictions,)
        return _result(model, [torch.as_tensor(p).float() for p in predictions])
    head = path[path.index("(") + 1: path.index(" folder)")]
    folder = folders[head]
    model = getattr(transformers, HEADS[head]).from_pretrained(folder, **kw).eval()
    batch = _batch(AutoTokenizer.from_pretrained(folder, **kw))
    if head == "multiple_choice":
        batch = {k: v[None] for k, v in batch.items()}
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    return _result(model, _outputs(out))


def _result(model, outputs) -> dict:
    return {"class": type(model).__name__, "module": type(model).__module__, "outputs": outputs}


def run_all(folders: dict, trust_remote_code: bool | None) -> dict:
    """{path: result dict, plus "errors": transformers' error log lines} or {path: {"raised": "Type: first line"}}."""
    import transformers

    results = {}
    for path in PATHS:
        handler = ErrorLines()
        logging.getLogger("transformers").addHandler(handler)
        try:
            torch.manual_seed(0)
            result = run_path(path, folders, trust_remote_code)
        except Exception as error:  # noqa: BLE001 - recorded: the test decides whether this path must fail
            lines = [line for line in str(error).splitlines() if line.strip()]
            result = {"raised": f"{type(error).__name__}: {' '.join(lines)}"}
        finally:
            logging.getLogger("transformers").removeHandler(handler)
        result["errors"] = handler.lines
        results[path] = result
    del transformers
    return results


if __name__ == "__main__":
    out_path, mode, folders_json = sys.argv[1:4]
    folders = json.loads(folders_json)
    trust = {"none": None, "trust": True}[mode]
    torch.save({name: run_all(folder_set, trust) for name, folder_set in folders.items()}, out_path)
