"""Hostile inputs for the five functions, and what must hold whatever arrives (issue 23).

Generators for the documented shapes (Graph change and lifecycle notifications, `POST /api/sync`,
sync and control queue messages) and their mutations: wrong types, extra nesting, truncation,
unicode (control, invisible, bidi, lone surrogates, invalid UTF-8), huge values. `Harness` calls
function_app's decorated functions with real azure.functions objects on one event loop, then reads
Azurite's queues and the simulator's received request targets, and records every broken rule:
an exception escaping a function, a 5xx (storage is up, so none is ever right), a queued message
with an id that does not validate, a request path with one, a malformed queue message that did not
go to the poison queue at once. tests/test_hostile_input.py asserts none happen (a few examples
per function); tests/fuzz.py (`make fuzz`) runs 10,000 and prints the tally.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import unicodedata
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import azure.functions as func
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient, TextBase64DecodePolicy
from hypothesis import strategies as st

import function_app
from shared.handlers import get_settings
from shared.inputs import (
    InvalidMessage,
    check_user_key,
    message_fits,
    parse_control_message,
    parse_sync_message,
)
from shared.queue import SyncRequest
from shared.state import StateStore, SubscriptionRecord, utc_now

SUBSCRIPTION = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07"  # recorded as the app's own by Harness
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
_USER_SEGMENT = re.compile(r"/users/([^/?(]+)", re.IGNORECASE)

# ------------------------------------------------------------------------------------ generators

GUIDS = st.uuids().map(str)
UPNS = st.from_regex(r"[a-z0-9]([a-z0-9'_-]|\.[a-z0-9]){0,15}"
                     r"@[a-z0-9-]{1,10}\.(com|org|onmicrosoft\.com)", fullmatch=True)
# What an attacker puts into an id: newline ($ matched before it), NUL, C0/C1 controls, zero-width
# and bidi characters, lone surrogates, separators, URL syntax.
HOSTILE_CHARS = st.sampled_from(["\n", "\r", "\x00", "\x01", "\x1f", "\x7f", "\x85", "\u200b",
                                 "\u200e", "\u202e", "\u2028", "\u2029", "\u00a0", "\u3000",
                                 "\ufeff", "\ud800", "\udfff", "\U000e0001", " ", "\t", "/",
                                 "\\", "?", "#", "%", "%2F", "%0A", "..", "@", "'", "\"", ":",
                                 "&", "$", "*", "|", "<", ">"])
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def valid_ids(tenant_ids: list[str]) -> st.SearchStrategy[str]:
    known = st.sampled_from(tenant_ids) if tenant_ids else GUIDS
    return st.one_of(GUIDS, GUIDS.map(str.upper), UPNS, known)


@st.composite
def hostile_ids(draw: st.DrawFn, tenant_ids: list[str]) -> Any:
    base = draw(valid_ids(tenant_ids))
    kind = draw(st.integers(0, 6))
    if kind == 0:  # a trailing newline or other character
        return base + draw(HOSTILE_CHARS)
    if kind == 1:  # inserted anywhere
        at = draw(st.integers(0, len(base)))
        return base[:at] + draw(HOSTILE_CHARS) + base[at:]
    if kind == 2:
        return draw(st.text(max_size=60))
    if kind == 3:  # huge
        return "a" * draw(st.integers(200, 70_000)) + "@contoso.com"
    if kind == 4:
        return "../" * draw(st.integers(1, 4)) + base
    if kind == 5:  # not a string at all
        return draw(JSON_VALUES.filter(lambda v: not isinstance(v, str)))
    return draw(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20)) + base


def ids(tenant_ids: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(valid_ids(tenant_ids), hostile_ids(tenant_ids))


@st.composite
def mutated_object(draw: st.DrawFn, value: dict[str, Any]) -> Any:
    """The documented shape, or it with keys dropped, values of the wrong type, extra nesting."""
    kind = draw(st.integers(0, 5))
    if kind <= 1 or not value:
        return value
    value = dict(value)
    key = draw(st.sampled_from(sorted(value)))
    if kind == 2:
        del value[key]
    elif kind == 3:
        value[key] = draw(JSON_VALUES)
    elif kind == 4:
        value[key] = [value[key]] if draw(st.booleans()) else {"value": value[key]}
    else:
        value[draw(st.text(max_size=12))] = draw(JSON_VALUES)
    return value if draw(st.integers(0, 9)) else [value]


def dumps(value: Any) -> bytes:
    """JSON text of anything a generator made (lone surrogates as \\ud800 escapes)."""
    return json.dumps(value, ensure_ascii=True).encode()


@st.composite
def mutated_bytes(draw: st.DrawFn, value: Any) -> bytes:
    """The JSON text of `value`, or it truncated, nested, with a lone surrogate, invalid UTF-8,
    junk bytes or over a size limit."""
    raw = dumps(value)
    kind = draw(st.integers(0, 11))
    if kind <= 4:
        return raw
    if kind == 5:
        return raw[:draw(st.integers(0, max(0, len(raw) - 1)))]
    if kind == 6:  # deep nesting: 2 kB of brackets made json.loads raise RecursionError
        depth = draw(st.sampled_from([31, 32, 33, 100, 199, 201, 1000, 5000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * depth + raw + closer * depth
    if kind == 7 and b'"' in raw:  # a lone surrogate escape inside the first string
        at = raw.index(b'"') + 1
        return raw[:at] + draw(st.sampled_from([b"\\ud800", b"\\udfff", b"\\u0000", b"\\ud83d"])) \
            + raw[at:]
    if kind == 8:
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    if kind == 9:  # a document over the body limits (4 MB notifications, 1 MB manual requests)
        return raw + b" " * draw(st.sampled_from([1024 * 1024, 4 * 1024 * 1024 + 1]))
    if kind == 10:
        return draw(st.binary(max_size=64))
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def change_notifications(draw: st.DrawFn, state: str, tenant: str, tenant_ids: list[str]) -> Any:
    user = draw(ids(tenant_ids))
    client_state = draw(st.sampled_from([state] * 6 + ["", "x" * 300, state + "\n"])
                        | st.text(max_size=20) | SCALARS)
    item = {"id": "lsgTZMr9KwAAA", "subscriptionId": SUBSCRIPTION,
            "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z", "clientState": client_state,
            "changeType": "updated",
            "resource": f"Users/{user}" if isinstance(user, str) and draw(st.booleans()) else user,
            "tenantId": draw(st.sampled_from([tenant, tenant.upper()]) | SCALARS),
            "resourceData": {"@odata.type": "#Microsoft.Graph.User", "@odata.id": f"Users/{user}",
                             "id": user, "organizationId": tenant}}
    if draw(st.booleans()):
        del item["resourceData"]
    return draw(mutated_object(item))


@st.composite
def lifecycle_notifications(draw: st.DrawFn, state: str, tenant: str,
                            tenant_ids: list[str]) -> Any:
    subscription = draw(st.sampled_from([SUBSCRIPTION, SUBSCRIPTION.upper()]) | GUIDS
                        | hostile_ids([SUBSCRIPTION]))
    item = {"subscriptionId": subscription,
            "subscriptionExpirationDateTime": "2030-01-01T00:00:00Z", "tenantId": tenant,
            "clientState": draw(st.sampled_from([state] * 6) | st.text(max_size=10)),
            "lifecycleEvent": draw(st.sampled_from(LIFECYCLE_EVENTS) | st.text(max_size=20))}
    return draw(mutated_object(item))


@st.composite
def notification_bodies(draw: st.DrawFn, items: st.SearchStrategy[Any]) -> bytes:
    value = draw(st.lists(items, max_size=25))
    body: Any = {"value": value}
    if draw(st.integers(0, 9)) == 0:
        body = draw(mutated_object(body))
    return draw(mutated_bytes(body))


@st.composite
def sync_now_bodies(draw: st.DrawFn, tenant_ids: list[str]) -> bytes:
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["users"] = draw(st.lists(valid_ids(tenant_ids), min_size=0, max_size=12)
                             | st.lists(ids(tenant_ids), max_size=12))
    if draw(st.integers(0, 3)) == 0:
        body["all"] = draw(st.booleans() | SCALARS)
    if draw(st.booleans()):
        body["force"] = draw(st.booleans() | SCALARS)
    if draw(st.integers(0, 19)) == 0:  # one over the users limit
        body["users"] = ["a@contoso.com"] * 10_001
    return draw(mutated_bytes(draw(mutated_object(body))))


@st.composite
def sync_messages(draw: st.DrawFn, tenant_ids: list[str]) -> bytes:
    message = {"userId": draw(ids(tenant_ids)),
               "reason": draw(st.sampled_from(["notification", "manual", "reconcile"]) | SCALARS),
               "force": draw(st.booleans() | SCALARS)}
    return draw(mutated_bytes(draw(mutated_object(message))))


@st.composite
def control_messages(draw: st.DrawFn, tenant_ids: list[str]) -> bytes:
    action = draw(st.sampled_from(["notified", "notified", "lifecycle", "lifecycle", "reconcile"])
                  | st.text(max_size=12) | SCALARS)
    message: dict[str, Any] = {"action": action}
    if action == "notified" or draw(st.integers(0, 4)) == 0:
        message["users"] = draw(st.lists(GUIDS, max_size=8) | st.lists(ids(tenant_ids), max_size=8)
                                | JSON_VALUES)
    if action == "lifecycle" or draw(st.integers(0, 4)) == 0:
        message["event"] = draw(st.sampled_from(LIFECYCLE_EVENTS) | st.text(max_size=20))
        message["subscriptionId"] = draw(st.just(SUBSCRIPTION) | GUIDS | hostile_ids([]))
    if action == "reconcile" or draw(st.booleans()):
        message["force"] = draw(st.just(False) | SCALARS)
    return draw(mutated_bytes(draw(mutated_object(message))))


def validation_params() -> st.SearchStrategy[dict[str, str]]:
    return st.just({}) | st.fixed_dictionaries(
        {"validationToken": st.text(max_size=40) | st.text(min_size=1000, max_size=1100)
         | st.sampled_from(["", "\ud800", "ok\n"])})


# ------------------------------------------------------------------------------------- harness

def target_problem(host: str, target: str) -> str | None:
    """Why a request target carries an unvalidated id (None when it does not)."""
    try:
        decoded = unquote(target, errors="strict")
    except UnicodeDecodeError:
        return "percent-encoding that is not UTF-8"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in decoded):
        return "control, format or surrogate character"
    if host == "graph":
        for match in _USER_SEGMENT.finditer(decoded):
            segment = match.group(1)
            if segment.startswith("delta") or segment == "$batch":
                continue
            try:
                check_user_key(segment)
            except InvalidMessage:
                return f"user segment {segment[:60]!r}"
    return None


@dataclass
class Tally:
    inputs: int = 0
    unhandled: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    unvalidated: list[str] = field(default_factory=list)
    not_poisoned: list[str] = field(default_factory=list)
    slowest: float = 0.0
    slowest_input: str = ""

    def line(self) -> str:
        return (f"fuzz: {self.inputs} inputs, {len(self.unhandled)} unhandled, "
                f"{len(self.server_errors)} 5xx, {len(self.unvalidated)} unvalidated ids queued, "
                f"slowest {self.slowest * 1000:.0f} ms")

    def problems(self) -> list[str]:
        return self.unhandled + self.server_errors + self.unvalidated + self.not_poisoned


def register_profiles() -> None:
    """`ci` (the default): a few derandomized examples per function, for `make test`; `fuzz`:
    many random ones (tests/fuzz.py sets the count)."""
    from hypothesis import HealthCheck, settings

    quiet = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
             HealthCheck.data_too_large, HealthCheck.large_base_example,
             HealthCheck.filter_too_much]
    settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                              database=None, suppress_health_check=quiet, print_blob=True)
    settings.register_profile("fuzz", parent=settings.get_profile("ci"), derandomize=False,
                              max_examples=2000)


class Harness:
    """Calls the functions and checks the rules after each input (see the module docstring)."""

    def __init__(self, env: dict[str, str], sim: Any) -> None:
        self.env, self.sim = env, sim
        self.state, self.tenant = env["GRAPH_CLIENT_STATE"], env["AZURE_TENANT_ID"]
        self.tenant_ids = [u.id for u in sim.users()]
        self.loop = asyncio.new_event_loop()
        self.tally = Tally()
        self.current: list[str] = []  # what broke for the input being checked
        queue = env["PHOTO_SYNC_QUEUE"]
        self.queues = {suffix: QueueClient.from_connection_string(
            env["AzureWebJobsStorage"], queue + suffix,
            message_decode_policy=TextBase64DecodePolicy())
            for suffix in ("", "-control", "-poison", "-control-poison")}
        self.loop.run_until_complete(self._record_subscription())
        self._drain()

    async def _record_subscription(self) -> None:
        async with StateStore.from_settings(get_settings()) as state:
            await state.save_subscription(SubscriptionRecord(SUBSCRIPTION, utc_now(),
                                                             "https://example.invalid/api/n"))

    def warm_up(self) -> None:
        """One valid input to each function, not counted: the process's one-time costs (tokens
        from `az`, clients, first imports) are a cold start, not the handling of an input."""
        user = self.tenant_ids[0]
        for name, value in (("sync_photo", {"userId": user, "reason": "manual"}),
                            ("control", {"action": "notified", "users": [user]}),
                            ("sync_now", {"users": [user]}),
                            ("graph_webhook", {"value": []}), ("graph_lifecycle", {"value": []})):
            self.call(name, dumps(value), {})
        self.tally = Tally()

    def close(self) -> None:
        from shared.handlers import close_process_clients

        self.loop.run_until_complete(close_process_clients())
        self.loop.close()
        for client in self.queues.values():
            client.close()

    def _flag(self, kind: list[str], problem: str) -> None:
        kind.append(problem)
        self.current.append(problem)

    # one input: each call answers the problems that input caused ([] when all rules held)

    def http(self, function: Callable[[func.HttpRequest], Coroutine[Any, Any, func.HttpResponse]],
             route: str, body: bytes, params: dict[str, str] | None = None) -> int | None:
        request = func.HttpRequest(method="POST", url=f"http://localhost/api/{route}", body=body,
                                   params=params or {},
                                   headers={"Content-Type": "application/json"})
        self.current = []
        response = self._run(route, body, lambda: function(request))
        status = None if response is None else response.status_code
        if status is not None and status >= 500:
            self._flag(self.tally.server_errors, f"{route}: {status} for {body[:200]!r}")
        if response is not None and route == "sync":
            try:
                assert "error" in json.loads(response.get_body()) or status == 202
            except (ValueError, AssertionError):
                self._flag(self.tally.unhandled, f"sync: answer {response.get_body()[:100]!r} "
                                                 "is not JSON naming the problem")
        self._check(route, body)
        return self.current

    def queue_message(self, name: str, body: bytes) -> list[str]:
        self.current = []
        function = function_app.sync_photo if name == "sync_photo" else function_app.control
        message = QueueMessage(id=f"fuzz-{self.tally.inputs}", body=body, dequeue_count=1)
        self._run(name, body, lambda: function(message))
        parse = parse_sync_message if name == "sync_photo" else parse_control_message
        try:
            parse(body)
            invalid = False
        except InvalidMessage:
            invalid = True
        poison = "-poison" if name == "sync_photo" else "-control-poison"
        poisoned = self._messages(poison)
        # Queues hold 64 KiB: a bigger "message" cannot arrive, and is dropped with a log line
        keepable = message_fits(body.decode("utf-8", "backslashreplace"))
        if len(poisoned) != (1 if invalid and keepable else 0):
            self._flag(self.tally.not_poisoned, f"{name}: {len(poisoned)} poison messages for "
                                                f"{body[:200]!r} (invalid: {invalid})")
        self._check(name, body, skip=(poison,))
        return self.current

    def _run(self, name: str, body: bytes, call: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        self.tally.inputs += 1
        started = time.perf_counter()
        try:
            return self.loop.run_until_complete(call())
        except Exception as error:  # noqa: BLE001 - counting what escapes is the point
            self._flag(self.tally.unhandled, f"{name}: {type(error).__name__}: {error!s:.200} "
                                             f"for {body[:200]!r}")
            return None
        finally:
            elapsed = time.perf_counter() - started
            if elapsed > self.tally.slowest:
                self.tally.slowest, self.tally.slowest_input = elapsed, f"{name}: {body[:120]!r}"

    # the rules

    def _messages(self, suffix: str) -> list[str]:
        client = self.queues[suffix]
        try:
            contents = [m.content for m in client.receive_messages(messages_per_page=32,
                                                                   visibility_timeout=60)]
            if contents:
                client.clear_messages()
        except ResourceNotFoundError:
            return []
        return contents

    def _drain(self) -> None:
        for suffix in self.queues:
            self._messages(suffix)
        self.sim.recent_targets.clear()

    def _check(self, name: str, body: bytes, skip: tuple[str, ...] = ()) -> None:
        for content in self._messages(""):
            try:
                request = SyncRequest.from_json(content)
                assert check_user_key(request.user_id) == request.user_id
            except (InvalidMessage, AssertionError):
                self._flag(self.tally.unvalidated, f"{name}: queued {content[:200]!r} for "
                                                   f"{body[:200]!r}")
        for content in self._messages("-control"):
            try:
                parse_control_message(content)
            except InvalidMessage as error:
                self._flag(self.tally.unvalidated, f"{name}: control message {content[:200]!r} "
                                                   f"({error}) for {body[:200]!r}")
        for suffix in ("-poison", "-control-poison"):
            if suffix not in skip:
                self._messages(suffix)
        targets = list(self.sim.recent_targets)
        self.sim.recent_targets.clear()
        for host, target in targets:
            problem = target_problem(host, target)
            if problem:
                self._flag(self.tally.unvalidated, f"{name}: {host} request {target[:200]!r} "
                                                   f"carries {problem}, for {body[:200]!r}")

    # the five functions, by name

    def inputs(self, name: str) -> st.SearchStrategy[tuple[bytes, dict[str, str]]]:
        """Inputs for one function: a body and, for the webhooks, query parameters."""
        state, tenant, known = self.state, self.tenant, self.tenant_ids
        no_params: st.SearchStrategy[dict[str, str]] = st.just({})
        if name == "graph_webhook":
            items = change_notifications(state, tenant, known) | \
                lifecycle_notifications(state, tenant, known)
            return st.tuples(notification_bodies(items),
                             st.one_of(no_params, no_params, no_params, validation_params()))
        if name == "graph_lifecycle":
            items = st.one_of(lifecycle_notifications(state, tenant, known),
                              lifecycle_notifications(state, tenant, known),
                              change_notifications(state, tenant, known))
            return st.tuples(notification_bodies(items),
                             st.one_of(no_params, no_params, no_params, validation_params()))
        if name == "sync_now":
            return st.tuples(sync_now_bodies(known), no_params)
        if name == "sync_photo":
            return st.tuples(sync_messages(known), no_params)
        if name == "control":
            return st.tuples(control_messages(known), no_params)
        raise ValueError(name)

    def call(self, name: str, body: bytes, params: dict[str, str]) -> list[str]:
        """Run one input through function `name`; the problems it caused."""
        if name == "graph_webhook":
            return self.http(function_app.graph_webhook, "notifications", body, params)
        if name == "graph_lifecycle":
            return self.http(function_app.graph_lifecycle, "lifecycle", body, params)
        if name == "sync_now":
            return self.http(function_app.sync_now, "sync", body)
        return self.queue_message(name, body)


FUNCTIONS = ("graph_webhook", "graph_lifecycle", "sync_now", "sync_photo", "control")
