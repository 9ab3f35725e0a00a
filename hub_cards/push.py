"""Push a checkpoint folder (weights, remote code, tokenizer, card, results, images, training files) to the Hub.

    push_folder(folder, repo_id, *, private=False, revision=None, commit_message=None, token=None,
                trust_remote_code=False) -> commit url

Order: arguments and token are checked; a folder without README.md gets a card rendered from its training
files, and a card we rendered is refreshed so its loading snippet names ``repo_id``; then ``validate_folder`` runs
every local check (validation.py; ``trust_remote_code`` lets its load check run folder code that hf_sparse_attn did
not write); only then does anything go over the network: ``create_repo(exist_ok=True)``, ``create_branch`` for a
``revision`` other than main, and a single ``create_commit`` holding exactly ``files_to_publish(folder)``. When
anything after the refresh fails (a check, the network, the Hub), the card, results copy and images are put back
as they were, so the folder never describes a repository that was not written. The endpoint is ``HF_ENDPOINT`` read at call time
(default https://huggingface.co); the token is ``token`` if given, else ``HF_TOKEN``, else the stored login.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from hf_sparse_attn.constants import CARD_FILE, CARD_IMAGES_DIR, REPORT_FILE, RESULTS_FILE
from hf_sparse_attn.files import first_line

from .errors import CardError, PushError
from .validation import check_files, files_to_publish, validate_folder

__all__ = ["check_repo_id", "files_to_publish", "push_folder", "resolve_endpoint", "resolve_token", "validate_folder"]

DEFAULT_ENDPOINT = "https://huggingface.co"


def resolve_endpoint() -> str:
    """HF_ENDPOINT as set now (huggingface_hub reads it once, at import), else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def resolve_token(token: str | None = None) -> str:
    """The explicit token, else HF_TOKEN, else the token `hf auth login` stored; PushError when there is none."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    stored = get_token()
    if not stored:
        raise PushError("no Hugging Face token: set HF_TOKEN, pass --token, or run `hf auth login`")
    return stored


def check_repo_id(repo_id: str) -> None:
    """PushError unless ``repo_id`` is a valid ORG/NAME Hub id (the check render applies to --repo-id too)."""
    from .hub_ids import repo_id_problem

    problem = repo_id_problem(repo_id)
    if problem:
        raise PushError(problem)


def _refresh_card(folder: Path, repo_id: str) -> None:
    """Write a card when there is none (from the checkpoint and its training files), or re-render one we wrote
    so that its loading snippet and model-index name ``repo_id``. Hand-written cards are left alone."""
    from .metadata import METADATA_KEY
    from .render import render_card, split_card

    card_path = folder / CARD_FILE
    if not card_path.is_file():
        results = folder / RESULTS_FILE  # an evaluation's copy, if --card put one there; checked against the weights
        render_card(folder, results if results.is_file() else None, repo_id=repo_id)
        return
    metadata, _ = split_card(card_path.read_text(encoding="utf-8"), source=str(card_path))
    ours = metadata.get(METADATA_KEY)
    if not isinstance(ours, dict) or ours.get("repo_id") == repo_id:
        return
    results = folder / ours["results"] if ours.get("results") else None
    if results is not None and not results.is_file():
        return  # validation names the missing file
    render_card(folder, results, repo_id=repo_id)


# What a card refresh may write into the folder.
_CARD_OUTPUTS = (CARD_FILE, RESULTS_FILE, REPORT_FILE, CARD_IMAGES_DIR)  # everything render_card writes


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def _put_back_on_failure(folder: Path):
    """Copy the card outputs aside; if the block raises, restore them exactly (and drop ones it created)."""
    backup = Path(tempfile.mkdtemp(prefix=".hub_cards-push-", dir=folder))
    try:
        for name in _CARD_OUTPUTS:
            source = folder / name
            if source.is_dir() and not source.is_symlink():
                shutil.copytree(source, backup / name, symlinks=True)
            elif source.exists() or source.is_symlink():
                shutil.copy2(source, backup / name, follow_symlinks=False)
        yield
    except BaseException:
        for name in _CARD_OUTPUTS:
            _remove(folder / name)
            if (backup / name).exists() or (backup / name).is_symlink():
                os.replace(backup / name, folder / name)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx", "requests"):  # whichever HTTP client this huggingface_hub uses
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            candidate = getattr(module, name, None)
            if isinstance(candidate, type) and issubclass(candidate, BaseException):  # httpx.Timeout is a config class
                errors.append(candidate)
    return tuple(errors)


def push_folder(folder, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, token: str | None = None, trust_remote_code: bool = False) -> str:
    """Upload the folder's publishable files in one commit; returns the commit URL. See the module docstring."""
    from huggingface_hub import constants

    folder = Path(folder)
    check_repo_id(repo_id)
    token = resolve_token(token)
    endpoint = resolve_endpoint()
    if constants.is_offline_mode():
        raise PushError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it (and TRANSFORMERS_OFFLINE) to push")
    check_files(folder)  # weights and remote code first: a card refresh needs readable weights
    with _put_back_on_failure(folder):
        _refresh_card(folder, repo_id)
        files = validate_folder(folder, trust_remote_code=trust_remote_code)
        return _upload(folder, files, repo_id, endpoint=endpoint, token=token, private=private, revision=revision,
                       commit_message=commit_message)


def _upload(folder: Path, files: list[str], repo_id: str, *, endpoint: str, token: str, private: bool,
            revision: str | None, commit_message: str | None) -> str:
    """create_repo, create_branch when needed, and one create_commit of ``files``; errors in one line."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    message = commit_message or f"Upload {folder.resolve().name}: sparse-attention checkpoint and model card"
    api = HfApi(endpoint=endpoint, token=token)
    step = "create the repository"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            step = f"create branch {revision!r}"
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        step = "commit the files"
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel)) for rel in files]
        commit = api.create_commit(repo_id, operations, commit_message=message, revision=revision, repo_type="model")
    except OfflineModeIsEnabled:
        raise PushError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it to push") from None
    except RuntimeError as err:
        # huggingface_hub reports a failed LFS upload as "Error while uploading 'x' to the Hub." raised from the
        # HTTP or network error: that error is the diagnosis.
        if not isinstance(err.__cause__, (HfHubHTTPError, *_network_errors())):
            raise
        raise _transfer_error(err.__cause__, endpoint, step, f"{first_line(err)} ") from None
    except (HfHubHTTPError, *_network_errors()) as err:
        raise _transfer_error(err, endpoint, step) from None
    except ValueError as err:
        text = " ".join(str(err).split())
        if text.startswith("Invalid metadata in README.md"):  # the Hub's own YAML check (validate-yaml)
            raise CardError(f"the Hub refused the card: {text}") from None
        raise PushError(f"{endpoint} refused to {step}: {text}") from None  # e.g. an LFS object it will not take
    return str(commit.commit_url)


def _transfer_error(err: BaseException, endpoint: str, step: str, context: str = "") -> PushError:
    """The one-line PushError of an HTTP error (401: the token) or a network error while trying to ``step``."""
    from huggingface_hub.errors import HfHubHTTPError

    if not isinstance(err, HfHubHTTPError):
        return PushError(f"cannot reach the Hub at {endpoint} ({type(err).__name__}); check HF_ENDPOINT and the "
                         "network")
    status = err.response.status_code if err.response is not None else "?"
    if status == 401:
        return PushError(f"{endpoint} rejected the token (HTTP 401) when trying to {step}; set HF_TOKEN to a token "
                         "with write access")
    return PushError(f"{endpoint} refused to {step} (HTTP {status}): {context}{first_line(err)}")
