"""Test helpers: tiny checkpoint folders, hand-written results.json files, and a local stand-in for the Hub.

Kept in the package (not in tests/) so that the training and evaluation commands' tests can exercise
``--push-to-hub`` / ``--push`` / ``--card`` the same way without the network.

    with FakeHub(token="hf_test") as hub:          # sets nothing globally: pass hub.endpoint as HF_ENDPOINT
        ...
        hub.commits[0]["files"]                    # {path_in_repo: bytes} of each commit received

``FakeHub`` speaks the calls huggingface_hub 2.x makes for ``create_repo`` + ``create_branch`` + ``create_commit``
(``/api/repos/create``, ``/api/validate-yaml``, ``/api/models/{repo}/preupload/{rev}``, ``.../branch/{name}``,
``.../commit/{rev}``), answers "regular" upload mode for every file so contents arrive inline in the commit,
and records every request. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

TINY_CONFIG = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                   max_position_embeddings=64, num_labels=2, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(90)] + [
    "a", "film", "good", "bad", "plot"]


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and results
# ---------------------------------------------------------------------------------------------------------------

def make_checkpoint(folder, *, attn_impl: str | None = "entmax_learned", seed: int = 0, tokenizer: bool = True,
                    training_files: bool = True, config_overrides: dict | None = None) -> Path:
    """A tiny BERT classifier saved the way the core saves one (``attn_impl=None``: a stock checkpoint).

    Learned alphas are set to distinct seeded values so that tables can tell heads apart.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = Path(folder)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(**{**TINY_CONFIG, **(config_overrides or {})}))
    if attn_impl is not None:
        import hf_sparse_attn

        hf_sparse_attn.sparsify(model, attn_impl=attn_impl)
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("sparse_attn.alpha_logit"):
                    param.copy_(torch.randn(param.shape, generator=generator))
    model.eval()
    model.save_pretrained(folder)
    if tokenizer:
        from transformers import BertTokenizer

        vocab = folder / "vocab.txt"
        vocab.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
        BertTokenizer(vocab_file=str(vocab)).save_pretrained(folder)
    if training_files:
        args = {"model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2", "dataset": "mr",
                "attn_impl": attn_impl or "softmax", "seed": seed, "learning_rate": 2e-5, "epochs": 1, "batch_size": 16}
        (folder / "training_args.json").write_text(json.dumps(args, indent=2), encoding="utf-8")
        final = {split: {"accuracy": 0.8, "macro_f1": 0.79, "loss": 0.45, "step": 40, "epoch": 1.0}
                 for split in ("validation", "test")}
        (folder / "final_metrics.json").write_text(json.dumps(final, indent=2), encoding="utf-8")
        with open(folder / "train_log.jsonl", "w", encoding="utf-8") as f:
            for step in (10, 20, 30, 40):
                heads = [{"layer": layer, "head": head, "sparsity": 0.5 + step / 100, "support_size": 3.0,
                          "alpha": 1.5} for layer in range(2) for head in range(4)]
                f.write(json.dumps({"step": step, "epoch": step / 40, "split": "validation", "loss": 1 - step / 100,
                                    "accuracy": 0.5 + step / 100, "macro_f1": 0.5 + step / 110,
                                    "per_layer_head": heads}) + "\n")
    return folder


def make_results(checkpoint, outdir, *, seed: int = 0, plots: bool = True, dataset: str = "mr",
                 fingerprint: str | None = None, methods=("grad_norm", "loo")) -> Path:
    """A results.json in the evaluation suite's format (CONTRACTS.md section 4) with seeded made-up scores."""
    import random

    from hf_sparse_attn import weights_fingerprint

    checkpoint, outdir = Path(checkpoint), Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    n_layers, n_heads = config["num_hidden_layers"], config["num_attention_heads"]
    spec = config.get("sparse_attention")
    rng = random.Random(seed)
    per_layer_head = []
    for layer in range(n_layers):
        for head in range(n_heads):
            per_layer_head.append({
                "layer": layer, "head": head, "sparsity": round(rng.uniform(0.3, 0.95), 6),
                "support_size": round(rng.uniform(1, 6), 4), "attention_entropy": round(rng.uniform(0.1, 0.6), 6),
                "kendall_tau_b": {m: {"mean": round(rng.uniform(-0.2, 0.8), 6), "std": round(rng.uniform(0, 0.3), 6)}
                                  for m in methods},
            })
    per_layer = [{"layer": layer,
                  "input_to_repr_entropy": {"mean": round(rng.uniform(0.5, 0.95), 6), "std": 0.05},
                  "coindexed_share": {"mean": round(rng.uniform(0.05, 0.4), 6), "std": 0.02}} for layer in range(n_layers)]
    plot_paths = []
    if plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        (outdir / "plots").mkdir(exist_ok=True)
        for name in ("sparsity_heatmap", "kendall_tau_b_grad_norm_heatmap"):
            fig, ax = plt.subplots(figsize=(2, 2))
            ax.imshow([[rng.random() for _ in range(n_heads)] for _ in range(n_layers)])
            fig.savefig(outdir / "plots" / f"{name}.png", dpi=40, metadata={"Software": None})
            plt.close(fig)
            plot_paths.append(f"plots/{name}.png")
    results = {
        "checkpoint": str(checkpoint), "weights_fingerprint": fingerprint or weights_fingerprint(checkpoint),
        "attn_impl": (spec or {}).get("attn_impl", "softmax"), "sparse_attention": spec,
        "dataset": dataset, "split": "test", "n_examples": 64,
        "accuracy": round(rng.uniform(0.6, 0.9), 6), "macro_f1": round(rng.uniform(0.6, 0.9), 6),
        "n_layers": n_layers, "n_heads": n_heads, "importance_methods": list(methods),
        "per_layer_head": per_layer_head, "per_layer": per_layer,
        "summary": {}, "plots": plot_paths, "config": {"seed": seed, "max_length": 64, "batch_size": 8},
    }
    path = outdir / "results.json"
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# A local Hub
# ---------------------------------------------------------------------------------------------------------------

class FakeHub:
    """A loopback HTTP server that answers huggingface_hub's repo, branch and commit calls, and records them."""

    def __init__(self, token: str = "hf_fake_token"):
        self.token = token
        self.requests: list[dict] = []  # {"method", "path", "authorization"}
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.commits: list[dict] = []  # {"repo_id", "revision", "summary", "files": {path: bytes}}
        self.unexpected: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def uploaded_paths(self) -> set[str]:
        return {path for commit in self.commits for path in commit["files"]}

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # The routes -------------------------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        path = urlsplit(request.path).path
        auth = request.headers.get("Authorization")
        self.requests.append({"method": method, "path": path, "authorization": auth})
        if auth != f"Bearer {self.token}":
            return self._reply(request, 401, {"error": "Invalid username or password."})
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(request, json.loads(body or b"{}"))
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._reply(request, 200, {"errors": [], "warnings": []})
        if method == "POST" and len(parts) >= 6 and parts[:2] == ["api", "models"]:
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            repo = self.repos.get(repo_id)
            if repo is None:
                return self._reply(request, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            if action == "preupload":
                files = json.loads(body)["files"]
                return self._reply(request, 200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]})
            if action == "branch":
                if revision in repo["branches"]:
                    return self._reply(request, 409, {"error": "Reference already exists"})
                repo["branches"][revision] = dict(repo["branches"]["main"])
                return self._reply(request, 200, {})
            if action == "commit":
                return self._commit(request, repo_id, revision, body)
        self.unexpected.append(f"{method} {path}")
        return self._reply(request, 404, {"error": f"fake hub has no route {method} {path}"})

    def _create_repo(self, request, payload: dict) -> None:
        repo_id = f"{payload.get('organization')}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            return self._reply(request, 409, {"error": "You already created this model repo", "url": url})
        self.repos[repo_id] = {"private": payload.get("visibility") == "private", "branches": {"main": {}}}
        return self._reply(request, 200, {"url": url, "name": repo_id, "id": repo_id})

    def _commit(self, request, repo_id: str, revision: str, body: bytes) -> None:
        repo = self.repos[repo_id]
        if revision not in repo["branches"]:
            return self._reply(request, 404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
        header, files = None, {}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                header = item["value"]
            elif item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            else:
                self.unexpected.append(f"commit operation {item['key']}")
        repo["branches"][revision].update(files)
        oid = hashlib.sha1(body).hexdigest()
        self.commits.append({"repo_id": repo_id, "revision": revision, "summary": (header or {}).get("summary"),
                             "files": files})
        return self._reply(request, 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid,
                                          "pullRequestUrl": None})

    @staticmethod
    def _reply(request, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(data)
