"""Checks a folder passes before anything is uploaded; none of them touches the network.

1. config.json parses; weights are safetensors and readable; every remote-code module auto_map names is there;
   no file that would be published is a symbolic link (its target would be uploaded), and no published JSON file
   names an absolute local path.
2. README.md exists and its metadata parses with huggingface_hub (model-index included); a card we rendered
   still describes these weights (fingerprint), its results.json matches them, and its images exist.
3. The folder loads with ``trust_remote_code=True`` and runs a forward pass in a separate Python process where
   hf_sparse_attn, entmax, eval_suite and hub_cards cannot be imported, offline, with a fresh HF cache and stdin
   closed: what a Hub user with torch + transformers gets. That process imports the folder's code, so it only
   starts when that code is byte-identical to the remote-code files hf_sparse_attn writes, or when the caller
   passes ``trust_remote_code=True`` (``--trust-remote-code``) after reading it. A sparse folder must also be
   refused there without ``trust_remote_code`` (never load as the stock softmax model).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import unquote

from hf_sparse_attn.constants import (CARD_FILE, CARD_IMAGES_DIR, FINAL_METRICS_FILE, REMOTE_CODE_FILES, REPORT_FILE,
                                      RESULTS_FILE, TRAIN_LOG_FILE, TRAINING_ARGS_FILE)
from hf_sparse_attn.files import read_json

from .errors import CardError, PushError

# What we publish: the files a user needs to load, read and audit the model; nothing else in the folder goes up.
PUBLISHED_TOP_LEVEL = (
    "*.safetensors", "*.safetensors.index.json", "config.json", "sparse_attn_*.py",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
    CARD_FILE, RESULTS_FILE, REPORT_FILE, TRAINING_ARGS_FILE, FINAL_METRICS_FILE, TRAIN_LOG_FILE,
)
IMAGE_SUFFIXES = (".png",)
CARD_PAGE_SUFFIXES = (".md",)  # pages of the card in CARD_IMAGES_DIR (render's scores.md)
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
BLOCKED_PACKAGES = ("hf_sparse_attn", "entmax", "eval_suite", "hub_cards")
LOAD_TIMEOUT_S = 600
# Published JSON files checked for absolute local paths (they are uploaded byte for byte).
PATH_CHECKED_FILES = (TRAINING_ARGS_FILE, RESULTS_FILE, FINAL_METRICS_FILE, TRAIN_LOG_FILE, "config.json")
_RESULT_PREFIX = "hub_cards-load-result: "
_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")

# Run with `python -I -c`: no PYTHONPATH, no user site, no cwd on sys.path; the finder below refuses our packages
# even where they are installed in site-packages (editable installs included).
_LOAD_SCRIPT = r'''
import importlib.abc, json, sys
BLOCKED = set(sys.argv[2].split(","))
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed in the clean environment")
sys.meta_path.insert(0, _Blocked())

folder, with_tokenizer, trust_tokenizer = sys.argv[1], sys.argv[3] == "1", sys.argv[4] == "1"
import torch
torch.set_num_threads(1)
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
auto_map = getattr(config, "auto_map", None) or {}
auto_class = AutoModel if auto_map and "AutoModelForSequenceClassification" not in auto_map else AutoModelForSequenceClassification
model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
module = type(model).__module__
if auto_map and not module.startswith("transformers_modules"):
    raise SystemExit(f"auto_map is set but transformers built {type(model).__name__} from {module}, not from the folder's code")
if getattr(config, "sparse_attention", None):
    # No silent fallback: without trust_remote_code transformers must refuse the folder, not build stock softmax.
    try:
        fallback = auto_class.from_pretrained(folder)
    except ValueError:
        print()  # transformers' prompt (answered by the closed stdin) ends without a newline
    else:
        raise SystemExit(f"without trust_remote_code transformers loads this sparse folder as {type(fallback).__name__} "
                         "with softmax attention; re-save it with the current hf_sparse_attn (model type sparse_attn_*)")
if with_tokenizer:
    # The config already read (remote code, ours): a tokenizer auto_map still needs the caller's consent.
    tokenizer = AutoTokenizer.from_pretrained(folder, config=config, trust_remote_code=trust_tokenizer)
    batch = tokenizer(["a short test sentence for the checkpoint", "short"], padding=True, return_tensors="pt")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
else:
    vocab = int(getattr(config, "vocab_size", 100))
    input_ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
with torch.no_grad():
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
values = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
if not torch.isfinite(values).all():
    raise SystemExit("the forward pass gave non-finite outputs")
for layer, attn in enumerate(out.attentions or ()):
    if attn is None:
        continue
    sums = attn.sum(-1)[attention_mask.bool().unsqueeze(1).expand_as(attn[..., 0])]
    if not torch.isfinite(attn).all() or not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise SystemExit(f"attention of layer {layer} is not a probability distribution over the keys")
leaked = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
if leaked:
    raise SystemExit(f"the clean environment imported {leaked}")
print("%s" + json.dumps({"class": type(model).__name__, "module": module, "output_shape": list(values.shape)}))
''' % _RESULT_PREFIX


def files_to_publish(folder) -> list[str]:
    """Relative paths (posix) of the files a push uploads, sorted: see PUBLISHED_TOP_LEVEL and interpretability/."""
    folder = Path(folder)
    config_path = folder / "config.json"
    extra_code = set()
    if config_path.is_file():
        try:
            auto_map = json.loads(config_path.read_text(encoding="utf-8")).get("auto_map") or {}
        except json.JSONDecodeError:
            auto_map = {}
        extra_code = {f"{module}.py" for module in _auto_map_modules(auto_map)}
    chosen = []
    for path in folder.iterdir():
        if any(fnmatch(path.name, pattern) for pattern in PUBLISHED_TOP_LEVEL) or path.name in extra_code:
            _refuse_symlink(path, folder)
            if path.is_file():
                chosen.append(path.name)
    images = folder / CARD_IMAGES_DIR
    _refuse_symlink(images, folder)
    if images.is_dir():
        for path in images.rglob("*"):
            published = path.suffix.lower() in IMAGE_SUFFIXES + CARD_PAGE_SUFFIXES
            if published or path.is_dir():
                _refuse_symlink(path, folder)
            if path.is_file() and published:
                chosen.append(path.relative_to(folder).as_posix())
    return sorted(chosen)


def _refuse_symlink(path: Path, folder: Path) -> None:
    if path.is_symlink():
        raise PushError(f"{path.relative_to(folder).as_posix()} in {folder} is a symbolic link, so its target would be "
                        "uploaded; replace it with the file itself")


def _auto_map_modules(auto_map: dict) -> set[str]:
    refs = []
    for value in auto_map.values():
        refs += value if isinstance(value, (list, tuple)) else [value]
    # "module.Class", or "repo--module.Class" for code that lives in another repository (nothing to ship then)
    return {ref.rsplit(".", 1)[0] for ref in refs if isinstance(ref, str) and "--" not in ref and "." in ref}


def check_files(folder: Path) -> dict:
    if not folder.is_dir():
        raise PushError(f"{folder} is not a folder; pass the checkpoint folder save_pretrained wrote")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise PushError(f"{folder} has no config.json; pass the checkpoint folder save_pretrained wrote")
    config = read_json(config_path, PushError, "re-save the model with save_pretrained")

    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        others = sorted(p.name for p in folder.iterdir() if p.suffix in OTHER_WEIGHT_SUFFIXES)
        found = f" (found {', '.join(others)})" if others else ""
        raise PushError(f"{folder} has no *.safetensors weights{found}; save with model.save_pretrained(folder), "
                        "which writes safetensors")
    from .checkpoint import unreadable_weights

    damaged = unreadable_weights(folder)
    if damaged:
        raise PushError(f"{damaged} is not a readable safetensors file; re-save the model")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise PushError(f"{index.name} lists missing shard(s) {', '.join(missing)}; re-save the model")

    auto_map = config.get("auto_map") or {}
    if config.get("sparse_attention") and not auto_map:
        raise PushError(f"{config_path} records sparse_attention but has no auto_map, so trust_remote_code would "
                        "load softmax attention; re-save the model with hf_sparse_attn (model.save_pretrained)")
    for module in sorted(_auto_map_modules(auto_map)):
        if not (folder / f"{module}.py").is_file():
            raise PushError(f"config.json auto_map names {module}.py but {folder} lacks it; re-save the model with "
                            "hf_sparse_attn so the remote code is written")
    files_to_publish(folder)  # refuses symbolic links before anything (a card refresh included) reads them
    check_published_paths(folder)
    return config


def check_published_paths(folder: Path) -> None:
    """PushError when a published JSON file names an absolute local path (published files record names)."""
    from hf_sparse_attn.public_names import absolute_paths_in

    for name in PATH_CHECKED_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            records = ([json.loads(line) for line in text.splitlines() if line.strip()] if name.endswith(".jsonl")
                       else [json.loads(text)])
        except (ValueError, UnicodeDecodeError):
            continue  # the card checks report unreadable files
        for record in records:
            found = absolute_paths_in(record)
            if found:
                key, value = found[0]
                raise PushError(f"{name} names the local path {value!r} (at {key}), which would be published; "
                                "replace it with a name (training and evaluation of this version record names) or "
                                "leave the file out")


def remote_code_problem(folder: Path) -> str | None:
    """Why loading ``folder`` would run code that hf_sparse_attn did not write, or None when it would not.

    Loading runs the modules ``auto_map`` names (in config.json and tokenizer_config.json) and whatever they
    import. A folder whose ``auto_map`` names only our remote code, and whose top-level ``*.py`` files are
    byte-identical to the ones this package writes, runs nothing else."""
    import hf_sparse_attn.sparse_attn_modeling as ours

    maps = {}
    for name in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((folder / name).read_text(encoding="utf-8")).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            auto_map = {}
        if auto_map:
            maps[name] = auto_map
    if not maps:
        return None  # transformers imports no code of the folder's
    if "tokenizer_config.json" in maps:
        return "tokenizer_config.json names a tokenizer class in remote code, which hf_sparse_attn never writes"
    refs = [ref for value in maps["config.json"].values()
            for ref in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(ref, str)]
    elsewhere = [ref for ref in refs if "--" in ref]
    if elsewhere:
        return f"config.json auto_map loads {elsewhere[0]!r} from another repository"
    package_dir = Path(ours.__file__).resolve().parent
    for path in sorted(folder.glob("*.py")):
        if path.name not in REMOTE_CODE_FILES:
            return f"{path.name} is not one of the remote-code files hf_sparse_attn writes ({', '.join(REMOTE_CODE_FILES)})"
        if path.read_bytes() != (package_dir / path.name).read_bytes():
            return f"{path.name} differs from the one this version of hf_sparse_attn writes"
    return None


def check_card(folder: Path) -> None:
    from huggingface_hub import ModelCard

    from .checkpoint import weights_fingerprint
    from .metadata import METADATA_KEY

    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise CardError(f"{folder} has no README.md; write one with `python -m hub_cards render {folder} --results RESULTS`")
    try:
        card = ModelCard.load(card_path)
    except (ValueError, TypeError, KeyError) as err:
        raise CardError(f"README.md metadata does not parse with huggingface_hub ({' '.join(str(err).split())}); "
                        "fix the YAML block or render the card again") from None
    ours = card.data.to_dict().get(METADATA_KEY)
    ours = ours if isinstance(ours, dict) else {}
    fingerprint = weights_fingerprint(folder)
    if ours.get("weights_fingerprint") and ours["weights_fingerprint"] != fingerprint:
        raise CardError("README.md describes other weights than the folder holds; render the card again (after "
                        "evaluating this checkpoint)")
    if ours.get("results") and not (folder / ours["results"]).is_file():
        raise CardError(f"README.md refers to {ours['results']}, which is missing; render the card again")
    for name in {ours.get("results"), RESULTS_FILE} - {None}:  # a published results file must describe these weights
        results_path = folder / name
        if not results_path.is_file():
            continue
        try:
            recorded = json.loads(results_path.read_text(encoding="utf-8")).get("weights_fingerprint")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            recorded = None
        if recorded != fingerprint:
            raise CardError(f"{name} was not computed on these weights; evaluate this checkpoint and render the card "
                            "again, or delete the stale file")
    report = folder / REPORT_FILE
    if report.is_file():
        from eval_suite.report import read_fingerprint

        if read_fingerprint(report) != fingerprint:
            raise CardError(f"{REPORT_FILE} was not drawn from these weights' evaluation; render the card again, or "
                            "delete the stale file")
    pages = [(CARD_FILE, card.text, folder)]
    pages += [(page.relative_to(folder).as_posix(), page.read_text(encoding="utf-8"), page.parent)
              for page in sorted((folder / CARD_IMAGES_DIR).glob("*.md"))]
    for name, text, base in pages:
        for link in _IMAGE_LINK.findall(text):
            if "://" in link or link.startswith(("data:", "#", "/")):
                continue
            if not (base / unquote(link)).is_file():
                raise CardError(f"{name} shows image {unquote(link)}, which is not in {folder}; render the card again")


def check_loads_without_package(folder: Path, *, timeout: int = LOAD_TIMEOUT_S, trust_remote_code: bool = False) -> dict:
    """Load + forward in a clean subprocess (see module docstring); PushError with its last error line if it fails,
    and before it starts when the folder's code is not ours and ``trust_remote_code`` is False."""
    from .render import TOKENIZER_FILES

    problem = None if trust_remote_code else remote_code_problem(folder)
    if problem:
        raise PushError(f"the load check would run code from {folder} that hf_sparse_attn did not write: {problem}; "
                        "read the code and pass --trust-remote-code to run it, or re-save the model with this version "
                        "of hf_sparse_attn")
    with_tokenizer = any((folder / name).is_file() for name in TOKENIZER_FILES)
    with tempfile.TemporaryDirectory(prefix="hub_cards-load-") as scratch:
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT") if k in os.environ}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(Path(scratch) / "hf_home"),
                   HF_MODULES_CACHE=str(Path(scratch) / "modules"), TOKENIZERS_PARALLELISM="false",
                   OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        command = [sys.executable, "-I", "-c", _LOAD_SCRIPT, str(folder.resolve()), ",".join(BLOCKED_PACKAGES),
                   "1" if with_tokenizer else "0", "1" if trust_remote_code else "0"]
        try:
            # stdin closed: transformers' "trust remote code? [y/N]" prompt must not read the user's terminal.
            done = subprocess.run(command, cwd=scratch, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PushError(f"loading {folder} with trust_remote_code took over {timeout} s; check the folder loads") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise PushError(f"{folder} does not load with trust_remote_code=True with torch + transformers alone: {reason}")
    reports = [line[len(_RESULT_PREFIX):] for line in done.stdout.splitlines() if line.startswith(_RESULT_PREFIX)]
    if not reports:
        raise PushError(f"the load check of {folder} ended without reporting its forward pass; run it again")
    return json.loads(reports[-1])


def validate_folder(folder, *, load_check: bool = True, trust_remote_code: bool = False) -> list[str]:
    """Every pre-upload check (module docstring); returns the files a push would upload. Raises CardError/PushError.

    ``trust_remote_code=True`` lets the load check run folder code that hf_sparse_attn did not write."""
    folder = Path(folder)
    check_files(folder)
    check_card(folder)
    if load_check:
        check_loads_without_package(folder, trust_remote_code=trust_remote_code)
    return files_to_publish(folder)
