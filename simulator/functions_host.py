"""A small stand-in for the Azure Functions host, for the demo and tests (Core Tools can't run here).

It reads the trigger metadata that function_app.py declares, serves the HTTP routes on loopback with
real `azure.functions.HttpRequest` objects (checking function and master keys per authorization
level like the host does, route parameters included), and runs a
queue worker that polls Azurite, decodes base64, retries with the host.json visibility timeout and
moves a message to `<queue>-poison` after `maxDequeueCount`, as the Functions host would. A message
sent with a visibility delay (a throttled sync scheduled again) is only received once the delay is
over: Azurite, like Azure Storage, keeps it invisible until then.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from azure.functions.queue import QueueMessage  # the class the Python worker hands to functions
from azure.functions.timer import TimerRequest
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from shared.queue import create_queue_if_missing

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("photo_sync.local_host")


def resolve_setting_expressions(value: str) -> str:
    """Resolve `%SETTING%` expressions in a binding property from the environment, as the host does."""
    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise RuntimeError(f"binding expression {value} needs app setting {name}")
        return os.environ[name]

    return re.sub(r"%(\w+)%", lookup, value)


@functools.cache
def app_functions(app: func.FunctionApp) -> tuple[Any, ...]:
    """The app's functions; azure-functions refuses a second `get_functions()` on the same app."""
    return tuple(app.get_functions())


def host_queue_options() -> dict[str, Any]:
    with open(ROOT / "host.json") as handle:
        queues: dict[str, Any] = json.load(handle)["extensions"]["queues"]
    return queues


def _timespan_seconds(value: str) -> float:
    hours, minutes, seconds = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass
class HttpRoute:
    name: str
    route: str
    methods: set[str]
    auth_level: str
    function: Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]

    def match(self, path: str) -> dict[str, str] | None:
        """The route parameters when `path` fits the template (`ops/{command}`), else None.
        Constraints (`{id:int}`) and optional parameters are not modelled: the app uses none."""
        pattern = re.sub(r"\\\{(\w+)[^}]*\\\}", lambda m: f"(?P<{m.group(1)}>[^/]+)",
                         re.escape(self.route.strip("/")))
        found = re.fullmatch(pattern, path, flags=re.IGNORECASE)
        return found.groupdict() if found else None


def reserved_route(route: str) -> bool:
    """The Functions host refuses to load an HTTP function whose route starts with "admin" (its
    own admin API lives there), whatever the route prefix: "The specified route conflicts with one
    or more built in routes" (Azure/azure-functions-host issue #1781 and its ScriptHost tests)."""
    return route.strip("/").lower().startswith("admin")


def http_routes(app: func.FunctionApp) -> list[HttpRoute]:
    routes = []
    for function in app_functions(app):
        trigger = function.get_trigger()
        if trigger.get_binding_name() != "httpTrigger":
            continue
        data = trigger.get_dict_repr()
        methods = {str(getattr(m, "value", m)).upper() for m in data.get("methods") or ["GET", "POST"]}
        auth = str(getattr(data.get("authLevel"), "value", data.get("authLevel") or "function"))
        routes.append(HttpRoute(function.get_function_name(), data["route"], methods, auth.lower(),
                                function.get_user_function()))
    return routes


class LocalHttpHost:
    """Serves `/api/<route>` on 127.0.0.1; keys in `code=` or `x-functions-key`, as the host reads
    them. Which key opens which authorization level (learn.microsoft.com/azure/azure-functions/
    function-keys-how-to, "Authorization level" and "Understand keys"): `anonymous` needs none;
    `function` a function key or a host key, the master key included; `admin` only the master key
    (`_master`, "also grants access to functions with admin authorization level"). A wrong or
    missing key is 401."""

    def __init__(self, app: func.FunctionApp, function_key: str, port: int = 0,
                 master_key: str | None = None) -> None:
        routes = http_routes(app)
        for route in routes:
            if reserved_route(route.route):
                log.error("function %s: the specified route conflicts with one or more built in "
                          "routes", route.name)
        self.routes = [r for r in routes if not reserved_route(r.route)]
        self.function_key = function_key
        self.master_key = master_key or secrets.token_urlsafe(32)
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                host._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> LocalHttpHost:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        path = parts.path.removeprefix("/api/").strip("/")
        found = [(r, p) for r in self.routes
                 if handler.command in r.methods and (p := r.match(path)) is not None]
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        if not found:
            return _reply(handler, 404, b"", "text/plain")
        route, route_params = found[0]
        if not self._authorized(route.auth_level,
                                handler.headers.get("x-functions-key") or params.get("code")):
            return _reply(handler, 401, b"", "text/plain")
        request = func.HttpRequest(method=handler.command, url=f"{self.url}{handler.path}",
                                   headers=dict(handler.headers.items()), params=params,
                                   route_params=route_params, body=body)
        try:
            response = asyncio.run(route.function(request))
        except Exception:  # the real host answers 500 and logs; so do we
            log.exception("function %s failed", route.name)
            return _reply(handler, 500, b"", "text/plain")
        _reply(handler, response.status_code, response.get_body(),
               response.mimetype or "text/plain", response.headers)

    def _authorized(self, level: str, key: str | None) -> bool:
        if level == "anonymous":
            return True
        if level == "admin":
            return key == self.master_key
        return key in (self.function_key, self.master_key)


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str,
           headers: Any = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        if name.lower() not in ("content-type", "content-length"):
            handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


class QueueWorker:
    """Drains the app's queue trigger the way the Functions host does (base64, retries, poison)."""

    def __init__(self, app: func.FunctionApp, connection_string: str, function_name: str,
                 visibility_timeout: float | None = None) -> None:
        function = next(f for f in app_functions(app) if f.get_function_name() == function_name)
        if function.get_trigger().get_binding_name() != "queueTrigger":
            raise RuntimeError(f"{function_name} is not queue-triggered")
        self.queue_name = resolve_setting_expressions(
            function.get_trigger().get_dict_repr()["queueName"])
        self.function = function.get_user_function()
        options = host_queue_options()
        self.batch_size = int(options.get("batchSize", 16))
        self.max_dequeue_count = int(options.get("maxDequeueCount", 5))
        self.visibility_timeout = _timespan_seconds(options.get("visibilityTimeout", "00:00:00")) \
            if visibility_timeout is None else visibility_timeout
        policies = {"message_encode_policy": TextBase64EncodePolicy(),
                    "message_decode_policy": TextBase64DecodePolicy()}
        self.queue = QueueClient.from_connection_string(connection_string, self.queue_name, **policies)
        self.poison = QueueClient.from_connection_string(connection_string, f"{self.queue_name}-poison",
                                                         **policies)
        self.processed = 0
        self.failures = 0

    async def __aenter__(self) -> QueueWorker:
        for client in (self.queue, self.poison):
            await create_queue_if_missing(client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.queue.close()
        await self.poison.close()

    async def run_once(self) -> int:
        """Receive one batch and run the function on each message; return how many were received."""
        messages = [m async for m in self.queue.receive_messages(
            messages_per_page=self.batch_size, max_messages=self.batch_size,
            visibility_timeout=max(int(self.visibility_timeout), 30))]
        await asyncio.gather(*(self._run(m) for m in messages))
        return len(messages)

    async def drain(self, idle_rounds: int = 3, poll_interval: float = 0.2,
                    timeout: float = 120) -> int:
        """Process until the queue stays empty for `idle_rounds` polls; return messages handled."""
        handled, idle = 0, 0
        deadline = asyncio.get_running_loop().time() + timeout
        while idle < idle_rounds and asyncio.get_running_loop().time() < deadline:
            received = await self.run_once()
            handled += received
            idle = 0 if received else idle + 1
            if not received:
                await asyncio.sleep(poll_interval)
        return handled

    async def _run(self, message: Any) -> None:
        body = message.content
        request = QueueMessage(id=message.id, body=body.encode(), pop_receipt=message.pop_receipt,
                               dequeue_count=message.dequeue_count,
                               insertion_time=message.inserted_on,
                               expiration_time=message.expires_on)
        try:
            await self.function(request)
        except Exception as error:  # the host logs, lets the message reappear, then poisons it
            self.failures += 1
            log.warning("queue function failed (attempt %s of %s): %s", message.dequeue_count,
                        self.max_dequeue_count, error)
            if message.dequeue_count >= self.max_dequeue_count:
                await self.poison.send_message(body)
                await self.queue.delete_message(message)
            else:
                await self.queue.update_message(message, visibility_timeout=int(self.visibility_timeout))
            return
        self.processed += 1
        await self.queue.delete_message(message)


class LocalFunctionsHost:
    """HTTP routes plus a background worker for every queue trigger, like `func start` would run."""

    def __init__(self, app: func.FunctionApp, connection_string: str, function_key: str,
                 port: int = 0, poll_interval: float = 0.1, master_key: str | None = None) -> None:
        self.app = app
        self.http = LocalHttpHost(app, function_key, port, master_key)
        self.workers = [QueueWorker(app, connection_string, f.get_function_name())
                        for f in app_functions(app)
                        if f.get_trigger().get_binding_name() == "queueTrigger"]
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._empty_polls = 0  # consecutive polls that found every queue empty
        self._thread = threading.Thread(target=lambda: asyncio.run(self._poll()), daemon=True)

    @property
    def url(self) -> str:
        return self.http.url

    def start(self) -> LocalFunctionsHost:
        self.http.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.http.stop()

    def wait_idle(self, timeout: float = 60) -> None:
        """Block until every queue has stayed empty for a few polls (raises on timeout)."""
        deadline = time.monotonic() + timeout
        self._empty_polls = 0
        while self._empty_polls < 3:
            if time.monotonic() > deadline:
                raise TimeoutError("queues did not drain in time")
            time.sleep(0.05)

    def run_timer(self, name: str) -> None:
        """Fire a timer-triggered function now, as the host would on its schedule."""
        function = next(f for f in app_functions(self.app) if f.get_function_name() == name)
        asyncio.run(function.get_user_function()(TimerRequest(past_due=False)))

    async def _poll(self) -> None:
        for worker in self.workers:
            await worker.__aenter__()
        try:
            while not self._stop.is_set():
                received = 0
                for worker in self.workers:
                    received += await worker.run_once()
                self._empty_polls = 0 if received else self._empty_polls + 1
                if not received:
                    await asyncio.sleep(self.poll_interval)
        finally:
            for worker in self.workers:
                await worker.__aexit__()
            # what the worker process does when it stops: close the clients kept for its lifetime
            from shared.handlers import close_process_clients

            await close_process_clients()
