"""Content hashes: of a model folder's weights, so results and cards can prove which weights they describe, and of a
run's data, so that a resumed training run can prove it continues on the data it started with."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def weights_fingerprint(folder) -> str:
    """``"sha256:<hex>"`` over the names and bytes of the folder's ``*.safetensors`` files, in name order."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}; save the model with save_pretrained first")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def dataset_fingerprint(splits) -> str:
    """``"sha256:<hex>"`` over the content of a ``datasets.DatasetDict`` of text classification: every split's
    name, texts, labels and label names, in order. A file edited at the same path gets another fingerprint."""
    digest = hashlib.sha256()
    for name in sorted(splits):
        split = splits[name]
        label_names = getattr(split.features.get("label"), "names", None)
        rows = split[:]  # one batch read: columns as lists (iterating a column reads it row by row)
        digest.update(json.dumps([name, label_names, rows["text"], rows["label"]]).encode("utf-8"))
    return "sha256:" + digest.hexdigest()
