"""Stand-in for the managed identity endpoint App Service and Azure Functions give an app, so
ManagedIdentityCredential (sync and async) takes its production path against the simulators.

What it models, with sources:
- The app finds it through IDENTITY_ENDPOINT and IDENTITY_HEADER; a token request is
  `GET {IDENTITY_ENDPOINT}?resource=<resource>&api-version=2019-08-01[&client_id=<id>]` with the
  header `X-IDENTITY-HEADER: {IDENTITY_HEADER}`; the answer is JSON with `access_token`,
  `expires_on` (epoch seconds, as a string), `resource`, `token_type` and `client_id`
  (MicrosoftDocs/azure-docs articles/app-service/overview-managed-identity.md, "REST endpoint
  reference"; Azure/azure-sdk-for-python sdk/identity/azure-identity/azure/identity/_credentials/
  app_service.py builds that request and reads that answer).
- A request without the right header is refused (the same page: the header "helps mitigate
  server-side request forgery"); the status is an assumption (400).
Tokens are the simulator's unsigned JWTs for the requested resource (simulator/tokens.py).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from simulator.tokens import mint_token


class IdentityEndpoint:
    """Serves on a loopback port until `stop()`; `environment` is what the platform would set."""

    def __init__(self, tenant_id: str) -> None:
        self.header = secrets.token_urlsafe(16)
        self.requests = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                query = parse_qs(urlsplit(self.path).query)
                resource = (query.get("resource") or [""])[0]
                if self.headers.get("X-IDENTITY-HEADER") != endpoint.header or not resource:
                    self._answer(400, {"error": "invalid_request"})
                    return
                endpoint.requests += 1
                expires = int(time.time()) + 3600
                self._answer(200, {"access_token": mint_token(resource.rstrip("/"),
                                                              tenant_id=tenant_id),
                                   "expires_on": str(expires), "resource": resource,
                                   "token_type": "Bearer",
                                   "client_id": (query.get("client_id") or [""])[0]})

            def _answer(self, status: int, body: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def environment(self) -> dict[str, str]:
        port = self._server.server_address[1]
        return {"IDENTITY_ENDPOINT": f"http://127.0.0.1:{port}/msi/token",
                "IDENTITY_HEADER": self.header}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
