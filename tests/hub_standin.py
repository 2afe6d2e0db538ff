"""A stand-in for the few Hub API endpoints the real huggingface_hub client calls to create a model repo
and make a regular (non-LFS) commit, on 127.0.0.1, for tests without the internet.

Endpoints (as huggingface_hub 2.x calls them; read from its hf_api.py and _commit_api.py):

- ``POST /api/repos/create``  {name, organization, visibility}: 200 {url}; 409 if it exists; 403 if the
  namespace is in ``foreign`` (a repo that is not ours)
- ``GET /api/models/ORG/NAME``  (repo_info, after a 403 with exist_ok): 403 for a foreign one
- ``POST /api/validate-yaml``  {content, repoType}: 200 {errors: [], warnings: []}
- ``POST /api/models/ORG/NAME/preupload/REV``  {files: [{path, sample, size}]}: every file "regular"
- ``POST /api/models/ORG/NAME/commit/REV``  NDJSON: header, then {key: file, value: {path, content
  (base64), encoding}} per file: 200 {commitUrl, commitOid}

Every request is recorded (method, path, JSON body); anything else is a 404. The server runs in a daemon
thread and shuts itself down after ``lifetime`` seconds if the test has not stopped it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "hf_standin_token"


@dataclass
class HubState:
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo id -> create payload
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo id -> path -> bytes
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    foreign: set[str] = field(default_factory=set)  # namespaces that are not ours
    commits: list[dict[str, Any]] = field(default_factory=list)


class StandInHub:
    def __init__(self, lifetime: float = 120.0) -> None:
        self.state = HubState()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.timer = threading.Timer(lifetime, self.server.shutdown)
        self.timer.daemon = True

    def __enter__(self) -> StandInHub:
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        state, hub = self.state, self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._send(401, {"error": "Invalid credentials in Authorization header"})
                    return False
                return True

            def do_GET(self) -> None:
                state.requests.append(("GET", self.path, None))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) == 4:
                    repo_id = "/".join(parts[2:4])
                    if parts[2] in state.foreign:
                        return self._send(403, {"error": "You don't have access to this repo"})
                    if repo_id in state.repos:
                        return self._send(200, {"id": repo_id, "sha": "0" * 40, "siblings": []})
                self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                raw = self._body()
                path = self.path.split("?")[0]
                is_commit = "/commit/" in path
                body: Any = raw if is_commit else (json.loads(raw) if raw else None)
                state.requests.append(("POST", path, body))
                if not self._authorised():
                    return
                parts = path.strip("/").split("/")
                if path == "/api/repos/create":
                    return self._create(body)
                if path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
                    files = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in body["files"]
                    ]
                    return self._send(200, {"files": files})
                if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
                    return self._commit("/".join(parts[2:4]), raw)
                self._send(404, {"error": f"no route {path}"})

            def _create(self, body: dict[str, Any]) -> None:
                organization = body.get("organization")
                repo_id = f"{organization}/{body['name']}"
                if organization in state.foreign:
                    return self._send(
                        403, {"error": f"You don't have the rights to create a model under {organization}"}
                    )
                if repo_id in state.repos:
                    return self._send(
                        409,
                        {"error": "You already created this model repo", "url": f"{hub.endpoint}/{repo_id}"},
                    )
                state.repos[repo_id] = body
                state.files[repo_id] = {}
                self._send(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})

            def _commit(self, repo_id: str, raw: bytes) -> None:
                if repo_id not in state.repos:
                    return self._send(404, {"error": "Repository not found"})
                lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
                header = lines[0]
                added = {}
                for line in lines[1:]:
                    if line["key"] != "file":
                        return self._send(
                            400, {"error": f"the stand-in takes regular files only, not {line['key']}"}
                        )
                    value = line["value"]
                    assert value["encoding"] == "base64"
                    added[value["path"]] = base64.b64decode(value["content"])
                state.files[repo_id].update(added)
                oid = hashlib.sha1(raw).hexdigest()
                state.commits.append({"repo": repo_id, "header": header, "paths": sorted(added)})
                self._send(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid})

        return Handler
