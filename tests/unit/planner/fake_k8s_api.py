"""A stand-in for the Kubernetes API's Deployment `scale` subresource, on 127.0.0.1.

It checks what the real API server checks for these calls (bearer token, merge-patch
content type, known Deployment) and answers with Scale / Status objects, recording
every request so tests can assert what the connector sent.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

_PATH = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale$")


@dataclass
class FakeKubeApi:
    namespace: str
    replicas: dict[str, int]
    token: str = "token-1"
    requests: list[tuple[str, str, dict[str, object] | None]] = field(default_factory=list)
    queries: list[dict[str, list[str]]] = field(default_factory=list)
    fail_with: int | None = None
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._handle("GET")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                path, _, query = self.path.partition("?")
                api.requests.append((method, path, body))
                api.queries.append(parse_qs(query))
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self._status(401, "Unauthorized")
                if api.fail_with is not None:
                    return self._status(api.fail_with, "injected failure")
                match = _PATH.match(path)
                if (
                    not match
                    or match.group(1) != api.namespace
                    or match.group(2) not in api.replicas
                ):
                    return self._status(
                        404, f'deployments.apps "{match.group(2) if match else "?"}" not found'
                    )
                name = match.group(2)
                if method == "PATCH":
                    if self.headers.get("Content-Type") != "application/merge-patch+json":
                        return self._status(415, "unsupported patch type")
                    assert isinstance(body, dict)
                    api.replicas[name] = body["spec"]["replicas"]
                scale = {
                    "kind": "Scale", "apiVersion": "autoscaling/v1",
                    "metadata": {"name": name, "namespace": api.namespace},
                    "spec": {"replicas": api.replicas[name]} if api.replicas[name] else {},
                    "status": {"replicas": api.replicas[name]},
                }  # fmt: skip
                self._json(200, scale)

            def _status(self, code: int, message: str) -> None:
                self._json(
                    code, {"kind": "Status", "status": "Failure", "message": message, "code": code}
                )

            def _json(self, code: int, obj: object) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
