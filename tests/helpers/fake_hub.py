"""A local stand-in for the Hugging Face Hub, for tests of pushing (nothing here touches the network).

    with FakeHub(token="hf_test") as hub:          # sets nothing globally: pass hub.endpoint as HF_ENDPOINT
        ...
        hub.commits[0]["files"]                    # {path_in_repo: bytes} of each commit received
        hub.commits[0]["lfs"]                      # the paths that came as LFS pointers, their bytes from storage

``FakeHub`` speaks the calls huggingface_hub 2.x makes for ``create_repo`` (and ``repo_info``, which it calls when
creation is refused with 401/403), ``create_branch`` and ``create_commit``, the way the Hub answers them:

* ``/api/validate-yaml`` parses the card's YAML block and applies a few of the Hub's metadata rules (a mapping;
  ``license`` and ``pipeline_tag`` from the Hub's lists; ``tags`` a list of strings), answering 400 with
  ``{"errors": [{"message"}]}`` as the Hub does;
* ``/api/models/{repo}/preupload/{rev}`` answers ``uploadMode: "lfs"`` for the patterns of the Hub's default
  ``.gitattributes`` (``*.safetensors``, ``*.bin``, ...), for images, for binary samples and for files of 10 MiB or
  more, ``"regular"`` otherwise, and ``shouldIgnore`` from the ``gitIgnore`` patterns sent with it;
* the LFS batch API (``/{repo}.git/info/lfs/objects/batch``) answers each object with a ``basic`` upload action
  to a storage URL (a signed URL that needs no token, like S3's) and a ``verify`` action, or with no action for
  an object it already stores; the storage takes the bytes by PUT and checks their sha256 against the oid; the
  verify call checks oid and size;
* ``/api/models/{repo}/commit/{rev}`` takes ``file`` (base64) and ``lfsFile`` (pointer) lines; a pointer to an
  object that was never uploaded and verified is refused (422), as the Hub refuses it.

Failures on request: ``hub.refuse[route] = status`` makes every call of ``route`` answer ``status`` (403, 404, 500,
503, ...), ``hub.refuse_once[route] = status`` only the next one (a transient error the client may retry);
routes are the keys of ``ROUTES``; ``hub.max_object_size`` makes the batch API refuse larger objects one by one
(the per-object ``error`` of the LFS protocol). ``hub.card_errors`` holds messages validate-yaml adds to its own (Hub rules a
client cannot know). Every request is recorded (``hub.requests``); the server listens on 127.0.0.1 only.

The client must take the LFS path, not Xet: run it with ``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``
(what ``HF_HUB_DISABLE_XET=1`` does); the Xet protocol talks to a separate content-addressed store not faked here.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# The route names failures can be injected on (hub.refuse / hub.refuse_once).
ROUTES = ("create", "info", "validate-yaml", "preupload", "lfs-batch", "lfs-upload", "lfs-verify", "branch", "commit")
# The Hub's default .gitattributes LFS patterns (the ones a model folder can hold) and the image types it stores
# in LFS; anything binary or of 10 MiB or more goes to LFS as well.
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.msgpack", "*.model",
                "*.npy", "*.npz", "*.pkl", "*.zip", "*.gz", "*.tar", "*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp")
LFS_MIN_SIZE = 10 * 1024 * 1024
# A few of the Hub's metadata vocabularies (the full lists are longer; these are enough to tell valid from not).
LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "gpl-3.0", "lgpl-3.0",
            "openrail", "llama2", "unknown", "other"}
PIPELINE_TAGS = {"text-classification", "token-classification", "fill-mask", "feature-extraction",
                 "sentence-similarity", "question-answering", "text-generation", "zero-shot-classification"}
STATUS_MESSAGES = {401: "Invalid username or password.", 403: "You don't have the rights to write to this repository",
                   404: "Repository not found", 409: "Conflict", 422: "Unprocessable entity",
                   500: "Internal Error - We're working hard to fix this as soon as possible!",
                   502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


class FakeHub:
    """A loopback HTTP server that answers huggingface_hub's repo, branch, LFS and commit calls, and records them."""

    def __init__(self, token: str = "hf_fake_token"):
        self.token = token
        self.requests: list[dict] = []  # {"method", "path", "authorization", "route"}
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.commits: list[dict] = []  # {"repo_id", "revision", "summary", "files": {path: bytes}, "lfs": set}
        self.storage: dict[str, bytes] = {}  # LFS objects uploaded, by sha256 oid
        self.verified: set[str] = set()
        self.refuse: dict[str, int] = {}
        self.refuse_once: dict[str, int] = {}
        self.card_errors: list[str] = []
        self.max_object_size: int | None = None  # the LFS batch API refuses larger objects, per object
        self.unexpected: list[str] = []
        self._secret = hashlib.sha256(token.encode()).hexdigest()[:16]
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def uploaded_paths(self) -> set[str]:
        return {path for commit in self.commits for path in commit["files"]}

    def calls(self, route: str) -> list[dict]:
        """The recorded requests of one route."""
        return [r for r in self.requests if r["route"] == route]

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_POST(self):
                hub._handle(self, "POST")

            def do_PUT(self):
                hub._handle(self, "PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # The routes -------------------------------------------------------------------------------------------------

    def _route(self, method: str, parts: list[str]) -> tuple[str | None, dict]:
        """(route name, its arguments) of a request path split at '/' (None: no such route)."""
        if method == "POST" and parts == ["api", "repos", "create"]:
            return "create", {}
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return "validate-yaml", {}
        if method == "PUT" and len(parts) == 2 and parts[0] == "lfs-storage":
            return "lfs-upload", {"oid": parts[1]}
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:5] == ["info", "lfs", "objects"]:
            repo_id = f"{parts[0]}/{parts[1][:-len('.git')]}"
            if method == "POST" and parts[5] in ("batch", "verify"):
                return f"lfs-{parts[5]}", {"repo_id": repo_id}
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = f"{parts[2]}/{parts[3]}"
            if method == "GET" and len(parts) in (4, 6):  # repo_info, at a revision or not
                return "info", {"repo_id": repo_id}
            if method == "POST" and len(parts) >= 6 and parts[4] in ("preupload", "branch", "commit"):
                return parts[4], {"repo_id": repo_id, "revision": "/".join(parts[5:])}
        return None, {}

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        url = urlsplit(request.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        route, args = self._route(method, parts)
        auth = request.headers.get("Authorization")
        with self._lock:
            self.requests.append({"method": method, "path": url.path, "authorization": auth, "route": route})
            status = self.refuse_once.pop(route, None) or self.refuse.get(route)
        if route is None:
            self.unexpected.append(f"{method} {url.path}")
            return self._reply(request, 404, {"error": f"fake hub has no route {method} {url.path}"})
        if route == "lfs-upload":  # the storage: a signed URL, no Hub token (it must not be sent there)
            signature = parse_qs(url.query).get("X-Signature", [""])[0]
            if auth is not None or not hmac.compare_digest(signature, self._sign(args["oid"])):
                return self._reply(request, 403, {"error": "SignatureDoesNotMatch"})
        elif auth != f"Bearer {self.token}":
            return self._reply(request, 401, {"error": STATUS_MESSAGES[401]})
        if status is not None:
            headers = {"X-Error-Code": "RepoNotFound"} if status == 404 else {}
            return self._reply(request, status, {"error": STATUS_MESSAGES.get(status, f"HTTP {status}")}, headers)
        if route == "create":
            return self._create_repo(request, json.loads(body or b"{}"))
        if route == "validate-yaml":
            return self._validate_yaml(request, json.loads(body or b"{}"))
        if route == "lfs-upload":
            return self._store(request, args["oid"], body)
        repo = self.repos.get(args["repo_id"])
        if repo is None:
            return self._reply(request, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if route == "info":
            return self._reply(request, 200, {"id": args["repo_id"], "private": repo["private"], "sha": "0" * 40})
        if route == "lfs-batch":
            return self._lfs_batch(request, args["repo_id"], json.loads(body))
        if route == "lfs-verify":
            item = json.loads(body)
            stored = self.storage.get(item.get("oid"))
            if stored is None or len(stored) != item.get("size"):
                return self._reply(request, 404, {"error": "Object not found or of another size"})
            self.verified.add(item["oid"])
            return self._reply(request, 200, {})
        if route == "preupload":
            return self._preupload(request, json.loads(body))
        if route == "branch":
            if args["revision"] in repo["branches"]:
                return self._reply(request, 409, {"error": "Reference already exists"})
            repo["branches"][args["revision"]] = dict(repo["branches"]["main"])
            return self._reply(request, 200, {})
        return self._commit(request, args["repo_id"], args["revision"], body)

    def _create_repo(self, request, payload: dict) -> None:
        repo_id = f"{payload.get('organization')}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            return self._reply(request, 409, {"error": "You already created this model repo", "url": url})
        self.repos[repo_id] = {"private": payload.get("visibility") == "private", "branches": {"main": {}}}
        return self._reply(request, 200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, request, payload: dict) -> None:
        errors = [*self.card_errors, *card_metadata_errors(payload.get("content", ""))]
        if errors:
            return self._reply(request, 400, {"error": errors[0], "errors": [{"message": m} for m in errors],
                                              "warnings": []})
        return self._reply(request, 200, {"errors": [], "warnings": []})

    def _preupload(self, request, payload: dict) -> None:
        ignore = [line.strip() for line in (payload.get("gitIgnore") or "").splitlines()
                  if line.strip() and not line.startswith("#")]
        files = []
        for f in payload["files"]:
            sample = base64.b64decode(f["sample"])
            files.append({"path": f["path"], "uploadMode": "lfs" if _is_lfs(f["path"], sample, f["size"]) else "regular",
                          "shouldIgnore": any(fnmatch.fnmatch(f["path"], p) or fnmatch.fnmatch(f["path"].rsplit("/", 1)[-1], p)
                                              for p in ignore),
                          "oid": None})
        return self._reply(request, 200, {"files": files})

    def _lfs_batch(self, request, repo_id: str, payload: dict) -> None:
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            return self._reply(request, 422, {"message": "only basic uploads are faked"})
        objects = []
        for item in payload["objects"]:
            oid, size = item["oid"], item["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if self.max_object_size is not None and size > self.max_object_size:
                entry["error"] = {"code": 422, "message": f"Object of {size} bytes exceeds the limit of "
                                                          f"{self.max_object_size} bytes"}
            elif oid not in self.storage:  # an object the Hub already holds gets no action: nothing to upload
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-storage/{oid}?X-Signature={self._sign(oid)}"},
                    "verify": {"href": f"{self.endpoint}/{repo_id}.git/info/lfs/objects/verify",
                               "header": {"Authorization": f"Bearer {self.token}"}},
                }
            objects.append(entry)
        return self._reply(request, 200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _store(self, request, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            return self._reply(request, 400, {"error": "the content does not hash to the object id"})
        self.storage[oid] = body
        return self._reply(request, 200, {}, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _commit(self, request, repo_id: str, revision: str, body: bytes) -> None:
        repo = self.repos[repo_id]
        if revision not in repo["branches"]:
            return self._reply(request, 404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
        header, files, lfs = None, {}, set()
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                header = value
            elif item["key"] == "file":
                try:
                    files[value["path"]] = base64.b64decode(value["content"], validate=True)
                except binascii.Error:
                    return self._reply(request, 400, {"error": f"{value['path']}: content is not base64"})
            elif item["key"] == "lfsFile":
                oid = value["oid"]
                if oid not in self.verified or len(self.storage[oid]) != value["size"] or value.get("algo") != "sha256":
                    return self._reply(request, 422, {"error": f"Your push was rejected because an LFS pointer "
                                                               f"pointed to a file that does not exist: {value['path']}"})
                files[value["path"]] = self.storage[oid]
                lfs.add(value["path"])
            else:
                self.unexpected.append(f"commit operation {item['key']}")
        repo["branches"][revision].update(files)
        oid = hashlib.sha1(body).hexdigest()
        self.commits.append({"repo_id": repo_id, "revision": revision, "summary": (header or {}).get("summary"),
                             "files": files, "lfs": lfs})
        return self._reply(request, 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid,
                                          "pullRequestUrl": None})

    def _sign(self, oid: str) -> str:
        return hmac.new(self._secret.encode(), oid.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _reply(request, status: int, payload: dict, headers: dict | None = None,
               content_type: str = "application/json") -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(data)


def _is_lfs(path: str, sample: bytes, size: int) -> bool:
    """The Hub's choice: an LFS pattern, a binary sample (a NUL byte, or not UTF-8), or a large file."""
    name = path.rsplit("/", 1)[-1].lower()
    if any(fnmatch.fnmatch(name, pattern) for pattern in LFS_PATTERNS) or size >= LFS_MIN_SIZE or b"\0" in sample:
        return True
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:  # a sample cut inside a multi-byte character is still text
        return error.start < len(sample) - 3
    return False


def card_metadata_errors(content: str) -> list[str]:
    """What the Hub's validate-yaml says about a README's YAML block (empty: valid)."""
    import yaml

    lines = content.splitlines()
    if not lines or lines[0].strip() != "---":
        return []  # no metadata block: the Hub only warns
    try:
        end = next(i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---")
    except StopIteration:
        return ["YAML block is not closed by a '---' line"]
    try:
        metadata = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as error:
        return [f"Invalid YAML: {' '.join(str(error).split())}"]
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return ['"metadata" must be of type object']
    errors = []
    licenses = metadata.get("license")
    for value in licenses if isinstance(licenses, list) else [licenses] if licenses is not None else []:
        if value not in LICENSES:
            errors.append(f'"license" must be one of [{", ".join(sorted(LICENSES))}, ...]')
    if "pipeline_tag" in metadata and metadata["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" must be one of [{", ".join(sorted(PIPELINE_TAGS))}, ...]')
    tags = metadata.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        errors.append('"tags" must be an array of strings')
    return errors
