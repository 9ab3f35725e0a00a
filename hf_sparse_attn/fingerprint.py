"""A content hash of a model folder's weights, so results and cards can prove which weights they describe."""

from __future__ import annotations

import hashlib
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
