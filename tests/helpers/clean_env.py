"""Run Python in a subprocess where hf_sparse_attn and entmax cannot be imported: a user with torch + transformers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

_BLOCKER = textwrap.dedent(
    """
    import sys, importlib.abc
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("hf_sparse_attn", "entmax"):
                raise ImportError("blocked for this test: " + name)
    sys.meta_path.insert(0, _Block())
    """
)


def run_without_package(code: str, cwd, timeout=300) -> subprocess.CompletedProcess:
    """Run ``code`` there (cwd ``cwd``); assert it succeeds and return the completed process."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(Path(cwd) / "hf_modules")
    result = subprocess.run([sys.executable, "-c", _BLOCKER + textwrap.dedent(code)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def remote_code_outputs(folder, input_ids, attention_mask, work_dir) -> dict:
    """``{"logits", "attentions"}`` of ``folder`` loaded with ``trust_remote_code=True`` in a process where our
    packages cannot be imported (torch + transformers + the folder's own code), on the given inputs."""
    work_dir = Path(work_dir)
    torch.save({"ids": input_ids, "mask": attention_mask}, work_dir / "inputs.pt")
    run_without_package(
        f"""
        import torch
        from transformers import AutoModelForSequenceClassification
        try:
            import hf_sparse_attn
            raise SystemExit("hf_sparse_attn should not be importable here")
        except ImportError:
            pass
        model = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        inputs = torch.load({str(work_dir / 'inputs.pt')!r})
        out = model(input_ids=inputs["ids"], attention_mask=inputs["mask"], output_attentions=True)
        torch.save({{"logits": out.logits, "attentions": list(out.attentions)}}, {str(work_dir / 'out.pt')!r})
        """,
        cwd=work_dir,
    )
    return torch.load(work_dir / "out.pt")
