"""Stdlib HTTP/1.1 keep-alive listeners that feed requests to a TenantSimulator (anything that serves)."""

from __future__ import annotations

import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from .wire import Request, Response



class Serves(Protocol):
    """What a listener needs of the simulator: one answer per request to one host kind."""

    def serve(self, kind: str, request: Request, /) -> Response: ...

_REASONS = {s.value: s.phrase for s in HTTPStatus}
MAX_BODY = 200 * 1024 * 1024


class SimServer(ThreadingHTTPServer):
    """One listener; ``kind`` is "graph", "mysite" or "admin"."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], sim: Serves, kind: str) -> None:
        self.sim = sim
        self.kind = kind
        super().__init__(address, SimHandler)


class SimHandler(BaseHTTPRequestHandler):
    """Reads the whole request, dispatches to the simulator, writes one buffer back."""

    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""
    disable_nagle_algorithm = True
    server: SimServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence per-request logs
        return

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return None
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self._write(Response(400, b"bad request body", "text/plain"))
            self.close_connection = True
            return
        if body is None:
            self._write(Response(413, b"request entity too large", "text/plain"))
            self.close_connection = True
            return
        path, _, qs = self.path.partition("?")
        if path.startswith(("http://", "https://")):  # absolute-form request target
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        req = Request(self.command, path, qs, self.headers, body)
        resp = self.server.sim.serve(self.server.kind, req)
        self._write(resp)

    def _write(self, resp: Response) -> None:
        body = resp.body if self.command != "HEAD" else b""
        lines = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}\r\n",
                 f"Content-Length: {len(resp.body)}\r\n"]
        if resp.content_type:
            lines.append(f"Content-Type: {resp.content_type}\r\n")
        crid = self.headers.get("client-request-id") if self.headers else None
        if crid:
            lines.append(f"client-request-id: {crid}\r\n")
        for key, value in resp.headers.items():
            lines.append(f"{key}: {value}\r\n")
        if self.close_connection:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1", "replace")
        try:
            if len(body) < 65536:
                self.wfile.write(head + body)
            else:
                self.wfile.write(head)
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = do_MERGE = _dispatch


def start_listener(sim: Serves, kind: str, port: int = 0) -> SimServer:
    """Bind 127.0.0.1:port and serve in a daemon thread."""
    server = SimServer(("127.0.0.1", port), sim, kind)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"sim-{kind}", daemon=True)
    thread.start()
    return server
