"""Outgoing HTTP from the simulator: validation handshakes and change notifications."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

# Never route loopback callbacks through an environment proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notification POST attempt. ``status`` is None when the connection failed."""

    url: str
    status: int | None
    time: float
    kind: str  # "change" | "lifecycle"
    payload: dict[str, Any]
    error: str | None = None


def post(url: str, body: bytes, content_type: str, timeout: float) -> tuple[int | None, bytes, str | None]:
    """POST and return (status, body, error); HTTP errors are statuses, not exceptions."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read(), None
    except urllib.error.HTTPError as exc:
        try:
            data = exc.read()
        except Exception:  # noqa: BLE001
            data = b""
        return exc.code, data, None
    except Exception as exc:  # noqa: BLE001 - connection refused, timeout, bad URL...
        return None, b"", f"{type(exc).__name__}: {exc}"


def validate_endpoint(url: str, token: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Graph's handshake: POST ``url?validationToken=...``, expect 200 echoing the token."""
    sep = "&" if "?" in url else "?"
    status, body, error = post(f"{url}{sep}validationToken={quote(token, safe='')}", b"", "text/plain; charset=utf-8", timeout)
    if error:
        return False, error
    if status != 200:
        return False, f"status {status}"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False, "body is not UTF-8"
    if text != token:
        return False, f"body {text[:80]!r} != token"
    return True, "ok"


class Notifier:
    """Background sender: one daemon worker draining a FIFO queue (never blocks callers)."""

    def __init__(self, record: Callable[[Delivery], None], timeout: float = 5.0) -> None:
        self._record = record
        self._timeout = timeout
        self._queue: queue.Queue[tuple[str, dict[str, Any], str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="sim-notifier", daemon=True)
        self._thread.start()

    def enqueue(self, url: str, payload: dict[str, Any], kind: str = "change") -> None:
        """Queue one POST."""
        self._queue.put((url, payload, kind))

    def send_now(self, url: str, payload: dict[str, Any], kind: str) -> Delivery:
        """POST synchronously, record and return the delivery."""
        body = json.dumps(payload).encode("utf-8")
        status, _, error = post(url, body, "application/json; charset=utf-8", self._timeout)
        delivery = Delivery(url, status, time.time(), kind, payload, error)
        self._record(delivery)
        return delivery

    def join(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far was attempted; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Stop the worker after the queue drains."""
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.send_now(*item)
            except Exception:  # noqa: BLE001 - a bad URL must not kill the worker
                pass
            finally:
                self._queue.task_done()
