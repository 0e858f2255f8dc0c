"""Every input photo-sync takes from outside, parsed and validated in one place.

The webhooks are anonymous, so anything may arrive: a body is refused by size before it is read,
parsed by pydantic-core's JSON parser (Rust, so nesting cannot exhaust Python's stack: it refuses
over 200 levels, and this module refuses over MAX_DEPTH), then checked against a pydantic model.
Queue messages and CLI arguments go through the same models, so no malformed id ever reaches a
queue, a Graph or SharePoint request path, or a log line unescaped. docs/reliability.md lists the
limits and what each endpoint answers; this module is the lowest layer (it imports no other).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

MAX_DEPTH = 32  # nesting of arrays and objects; Graph's payloads use 3
MAX_NOTIFICATION_BYTES = 4 * 1024 * 1024
MAX_SYNC_BODY_BYTES = 1024 * 1024
MAX_QUEUE_MESSAGE_BYTES = 64 * 1024  # Azure Storage's limit for one message, as stored (base64)
MAX_USER_KEY_LENGTH = 256
MAX_UPN_PREFIX_LENGTH = 113  # as in the first UPN pattern; the whole key: MAX_USER_KEY_LENGTH
MAX_VALIDATION_TOKEN_LENGTH = 1024
MAX_CLIENT_STATE_LENGTH = 128  # Graph allows 128 (subscription resource); so does GRAPH_CLIENT_STATE
MAX_USERS_PER_REQUEST = 10_000
NOTIFIED_CHUNK = 500  # object ids per control message: about 27 kB of the 64 KiB, base64 included

LifecycleEvent = Literal["reauthorizationRequired", "subscriptionRemoved", "missed"]
LIFECYCLE_EVENTS: tuple[str, ...] = ("reauthorizationRequired", "subscriptionRemoved", "missed")
# relink: a user waiting for a profile link, queued again once profile writes are allowed
Reason = Literal["notification", "manual", "reconcile", "relink"]
REASONS: tuple[Reason, ...] = ("notification", "manual", "reconcile", "relink")

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A UPN: a prefix without characters that could steer a URL, '@', a DNS domain. Apostrophes, '#'
# (guests' #EXT#) and non-ASCII letters are legal in Entra ID UPNs and must pass. Always fullmatch:
# `$` would also match before a final newline.
_UPN = re.compile(r"[^\s/\\?%\"<>|:*@]{1," + str(MAX_UPN_PREFIX_LENGTH) + r"}"
                  r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_USER_RESOURCE = re.compile(r"/?users/([^/]+)", re.IGNORECASE)
# Control (Cc), format (Cf: zero-width, bidi overrides), surrogate (Cs), private use, unassigned,
# and every separator (Z*): none is part of an object id, a UPN or a token Graph sends.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


class InvalidMessage(ValueError):
    """An input that can never be processed; the message says what is wrong, for the caller."""


class InputTooLarge(InvalidMessage):
    """An input over its size limit (HTTP 413)."""


# JSON

def load_json(data: bytes | str, *, limit: int) -> Any:
    """Parse JSON after the size check; nesting over MAX_DEPTH, NaN, invalid UTF-8 and lone
    surrogates are refused (InvalidMessage), and nothing can raise RecursionError."""
    if len(data) > limit:
        raise InputTooLarge(f"the body is larger than {limit} bytes")
    try:
        value = pydantic_core.from_json(data, allow_inf_nan=False)
    except ValueError as error:  # jiter says where: "expected value at line 1 column 1"
        if "recursion limit" in str(error):
            raise InvalidMessage(f"JSON nested deeper than {MAX_DEPTH} levels") from None
        raise InvalidMessage(f"not JSON ({str(error)[:120]})") from None
    if not _depth_within(value, MAX_DEPTH):
        raise InvalidMessage(f"JSON nested deeper than {MAX_DEPTH} levels")
    return value


def _depth_within(value: Any, limit: int) -> bool:
    """Iterative, so a deep value costs no stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else \
            node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return False
                stack.append((child, depth + 1))
    return True


# Ids

def is_object_id(value: str) -> bool:
    return _GUID.fullmatch(value) is not None


def _has_refused_character(value: str) -> bool:
    return any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in value)


def _shown(value: str) -> str:
    """An attacker's string, safe to put in an error message or a log line."""
    return ascii(value[:80])


def check_object_id(value: object) -> str:
    """An Entra object id (a GUID), lower-cased."""
    if not isinstance(value, str) or not is_object_id(value):
        shown = _shown(value) if isinstance(value, str) else type(value).__name__
        raise InvalidMessage(f"{shown} is not an object id (a GUID)")
    return value.lower()


def check_user_key(value: object) -> str:
    """Accept an Entra object id or a UPN; refuse anything that could steer a URL path."""
    if not isinstance(value, str) or not value:
        raise InvalidMessage("a user must be given as a non-empty string (object id or UPN)")
    if len(value) > MAX_USER_KEY_LENGTH:
        raise InvalidMessage(f"a user id is at most {MAX_USER_KEY_LENGTH} characters")
    if is_object_id(value):
        return value.lower()
    if _has_refused_character(value) or ".." in value or _UPN.fullmatch(value) is None:
        raise InvalidMessage(f"{_shown(value)} is neither an object id nor a user principal name")
    return value


def check_user_keys(values: Sequence[object]) -> list[str]:
    """CLI arguments and lists: every key checked (InvalidMessage names the first bad one),
    duplicates dropped, order kept."""
    checked = []
    for index, value in enumerate(values):
        try:
            checked.append(check_user_key(value))
        except InvalidMessage as error:
            raise InvalidMessage(f"user {index + 1}: {error}") from None
    return list(dict.fromkeys(checked))


ObjectId = Annotated[str, AfterValidator(check_object_id)]
UserKey = Annotated[str, AfterValidator(check_user_key)]


def validation_token(params: dict[str, str]) -> str | None:
    """Graph's subscription handshake token, echoed as text/plain; None when this is no handshake.

    Raises InvalidMessage for a token no Graph would send (empty, absurdly long, or with control,
    invisible or surrogate characters)."""
    if "validationToken" not in params:
        return None
    token = params["validationToken"]
    if not isinstance(token, str) or not token or len(token) > MAX_VALIDATION_TOKEN_LENGTH or \
            any(unicodedata.category(c) in {"Cc", "Cs", "Cn"} for c in token):
        raise InvalidMessage("validationToken is empty, too long or has control characters")
    return token


# Schemas

class _Strict(BaseModel):
    """JSON types as sent (no "true" for true, no 1 for "1"); fields photo-sync does not read are
    ignored, so a message written by a newer version during a slot swap still runs."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class SyncMessage(_Strict):
    """The sync queue's message: one user's sync."""

    userId: UserKey  # noqa: N815 - the wire name
    reason: Reason = "manual"
    force: bool = False


class SyncNowBody(_Strict):
    """POST /api/sync: `{"users": [...]}` or `{"all": true}`, optional `"force": true`."""

    model_config = ConfigDict(extra="forbid")  # a typo ("user") must not silently do nothing

    users: Annotated[list[UserKey],
                     Field(min_length=1, max_length=MAX_USERS_PER_REQUEST)] | None = None
    all: bool = False
    force: bool = False

    @model_validator(mode="after")
    def _users_or_all(self) -> SyncNowBody:
        if self.all and self.users is not None:
            raise ValueError("give either \"users\" or \"all\", not both")
        if not self.all and self.users is None:
            raise ValueError("send {\"users\": [\"<object id or UPN>\", ...]} or {\"all\": true}")
        return self

    @property
    def user_keys(self) -> list[str]:
        return list(dict.fromkeys(self.users or []))


class ReconcileControl(_Strict):
    action: Literal["reconcile"]
    force: bool = False


class NotifiedControl(_Strict):
    """A burst of notified users, fanned out by the control function."""

    action: Literal["notified"]
    users: Annotated[list[ObjectId], Field(max_length=NOTIFIED_CHUNK)]


class LifecycleControl(_Strict):
    action: Literal["lifecycle"]
    event: LifecycleEvent
    subscriptionId: ObjectId  # noqa: N815


ControlMessage = ReconcileControl | NotifiedControl | LifecycleControl
_CONTROL: TypeAdapter[ControlMessage] = TypeAdapter(
    Annotated[ControlMessage, Field(discriminator="action")])  # type: ignore[arg-type]


class _ResourceData(_Strict):
    id: str | None = None


class ChangeNotification(_Strict):
    """A Graph change notification on `users`, past its clientState check: which user changed.

    The object id is `resourceData.id`, else the one in `resource` (`Users/<id>`)."""

    resource: str | None = None
    resourceData: _ResourceData | None = None  # noqa: N815
    _user_id: str = PrivateAttr("")

    @model_validator(mode="after")
    def _user(self) -> ChangeNotification:
        candidate = self.resourceData.id if self.resourceData else None
        if candidate is None and self.resource is not None:
            match = _USER_RESOURCE.fullmatch(self.resource)
            candidate = match.group(1) if match else None
        if candidate is None:
            raise ValueError("no user id in resourceData.id or resource")
        self._user_id = check_object_id(candidate)
        return self

    @property
    def user_id(self) -> str:
        return self._user_id


class LifecycleNotification(_Strict):
    lifecycleEvent: LifecycleEvent  # noqa: N815
    subscriptionId: ObjectId  # noqa: N815


Model = TypeVar("Model", bound=BaseModel)


def describe(error: ValidationError) -> str:
    """The first problem in words, with where it is (`users[3]: ...`), and how many others."""
    problems = error.errors(include_url=False, include_input=False, include_context=False)
    first = problems[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]
                    if p not in ("reconcile", "notified", "lifecycle")).lstrip(".")
    text = _MESSAGES.get(first["type"], first["msg"].removeprefix("Value error, "))
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {text}{more}" if where else f"{text}{more}"


_MESSAGES = {"bool_type": "must be true or false", "missing": "is required",
             "extra_forbidden": "is not a known field", "string_type": "must be a string",
             "list_type": "must be a list", "model_type": "must be a JSON object",
             "model_attributes_type": "must be a JSON object", "dict_type": "must be a JSON object",
             "too_short": "must be a non-empty list"}


def validate(model: type[Model], value: Any) -> Model:
    """The model for an already parsed value; InvalidMessage says what is wrong."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise InvalidMessage(describe(error)) from None


def parse_sync_message(body: bytes | str) -> SyncMessage:
    return validate(SyncMessage, load_json(body, limit=MAX_QUEUE_MESSAGE_BYTES))


def parse_control_message(body: bytes | str) -> ControlMessage:
    value = load_json(body, limit=MAX_QUEUE_MESSAGE_BYTES)
    if not isinstance(value, dict) or not isinstance(value.get("action"), str):
        raise InvalidMessage("a control message is a JSON object with an \"action\"")
    try:
        return _CONTROL.validate_python(value)
    except ValidationError as error:
        raise InvalidMessage(describe(error)) from None


def parse_sync_now(body: bytes) -> SyncNowBody:
    value = load_json(body or b"null", limit=MAX_SYNC_BODY_BYTES)
    if not isinstance(value, dict):
        raise InvalidMessage("the body must be a JSON object: "
                             "{\"users\": [...]} or {\"all\": true}")
    return validate(SyncNowBody, value)


def notification_items(body: bytes) -> list[Any]:
    """The `value` array of a Graph notification POST; each item is checked on its own, so one
    bad item drops that item only."""
    value = load_json(body, limit=MAX_NOTIFICATION_BYTES)
    if not isinstance(value, dict) or not isinstance(value.get("value"), list):
        raise InvalidMessage("the body has no \"value\" array")
    return value["value"]


def message_fits(text: str) -> bool:
    """Whether a message stays within the queue's limit once base64-encoded, as it is stored."""
    return 4 * -(-len(text.encode("utf-8")) // 3) <= MAX_QUEUE_MESSAGE_BYTES
