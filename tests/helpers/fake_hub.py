"""A local stand-in for the Hugging Face Hub, for tests of pushing (nothing here touches the network).

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
from urllib.parse import unquote, urlsplit


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
