"""The packages depend on each other in one direction only: hf_sparse_attn <- eval_suite <- hub_cards <- studies.

Every import statement of every module is read (top level and inside functions). A module may import its own layer
or a lower one; only command-line modules (``cli.py``, ``__main__.py``) may reach up, since a command may offer the
features of a higher layer (``--push-to-hub``, ``--card``). The two remote-code files import torch and
transformers and nothing else of ours. No module imports the test helpers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"hf_sparse_attn": 0, "eval_suite": 1, "hub_cards": 2, "studies": 3}
COMMAND_LINE_MODULES = ("cli.py", "__main__.py")
REMOTE_CODE = ("hf_sparse_attn/sparse_attn_modeling.py", "hf_sparse_attn/sparse_attn_mappings.py",
               "hf_sparse_attn/sparse_attn_pooling.py")


def _modules():
    return sorted(p for package in LAYERS for p in (REPO / package).rglob("*.py"))


def _imports(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``; relative imports resolved against its package."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def _layer_violations(path: Path, root: Path = REPO) -> list[str]:
    where = path.relative_to(root)
    own = where.parts[0]
    out = []
    for line, module in _imports(path, root):
        top = module.split(".")[0]
        if top == "tests":
            out.append(f"{where}:{line} imports the test helpers ({module})")
        elif LAYERS.get(top, -1) > LAYERS[own] and path.name not in COMMAND_LINE_MODULES:
            out.append(f"{where}:{line} imports {module}, a higher layer than {own}")
    return out


def test_every_package_has_modules():
    assert {p.relative_to(REPO).parts[0] for p in _modules()} == set(LAYERS)


def test_imports_point_one_way_only():
    violations = [v for path in _modules() for v in _layer_violations(path)]
    assert violations == [], "\n".join(violations)


@pytest.mark.parametrize("relative", REMOTE_CODE)
def test_remote_code_imports_only_torch_transformers_and_its_twin(relative):
    path = REPO / relative
    allowed_ours = {f"hf_sparse_attn.{Path(name).stem}" for name in REMOTE_CODE}
    for line, module in _imports(path):
        top = module.split(".")[0]
        assert top in ("torch", "transformers", "__future__", "hf_sparse_attn") or top in _stdlib(), (line, module)
        if top == "hf_sparse_attn":
            assert module in allowed_ours, (line, module)


def test_the_checker_sees_upward_and_relative_imports(tmp_path):
    """The rule must be able to fail: a core module reaching eval_suite, even inside a function, is reported;
    the same import in a cli.py is allowed, and relative imports resolve to their package."""
    (tmp_path / "hf_sparse_attn" / "training").mkdir(parents=True)
    probe = tmp_path / "hf_sparse_attn" / "training" / "probe.py"
    probe.write_text("from ..files import first_line\ndef f():\n    from eval_suite.plots import pyplot\n")
    cli = tmp_path / "hf_sparse_attn" / "training" / "cli.py"
    cli.write_text("from hub_cards.cli import add_push_arguments\n")
    assert _imports(probe, tmp_path) == [(1, "hf_sparse_attn.files"), (3, "eval_suite.plots")]
    assert _layer_violations(probe, tmp_path) == [
        "hf_sparse_attn/training/probe.py:3 imports eval_suite.plots, a higher layer than hf_sparse_attn"]
    assert _layer_violations(cli, tmp_path) == []


def _stdlib() -> set[str]:
    import sys

    return set(sys.stdlib_module_names)
