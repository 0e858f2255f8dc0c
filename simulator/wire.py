"""Protocol-neutral request/response types and small parsing helpers."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import unquote_plus

JSON_GRAPH = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
JSON_SP = "application/json;odata=nometadata;streaming=true;charset=utf-8"


@dataclass(slots=True)
class Request:
    """One decoded HTTP request (or one $batch item)."""

    method: str
    path: str  # raw (still percent-encoded) path without the query string
    query_string: str
    headers: Mapping[str, str]  # case-insensitive mapping (email.message.Message or CIDict)
    body: bytes = b""
    claims: dict[str, Any] = field(default_factory=dict)
    in_batch: bool = False
    _query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """Form-decoded query parameters (first value wins; keys as sent)."""
        if self._query is None:
            self._query = parse_query(self.query_string)
        return self._query

    def header(self, name: str, default: str = "") -> str:
        """Header value (case-insensitive), or ``default``."""
        value = self.headers.get(name)
        return default if value is None else value

    def json(self) -> Any:
        """Body parsed as JSON (raises ValueError)."""
        return json.loads(self.body.decode("utf-8") or "null")


@dataclass(slots=True)
class Response:
    """What a handler returns; the server serialises it with Content-Length."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class CIDict(dict):
    """Minimal case-insensitive header mapping for $batch items."""

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        super().__init__({k.lower(): v for k, v in (data or {}).items()})

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


def parse_query(qs: str) -> dict[str, str]:
    """Form-decode ``a=b&c=d`` keeping the first occurrence of each key."""
    out: dict[str, str] = {}
    if not qs:
        return out
    for part in qs.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        key = unquote_plus(key)
        if key not in out:
            out[key] = unquote_plus(value)
    return out


def json_response(status: int, obj: Any, content_type: str = JSON_GRAPH, headers: dict[str, str] | None = None) -> Response:
    """Serialise ``obj`` compactly."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(status, body, content_type, headers or {})


def iso(ts: float, digits: int = 7) -> str:
    """UTC ISO-8601 with ``digits`` fractional digits and a ``Z`` (Graph style)."""
    whole = int(ts)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    if digits <= 0:
        return base + "Z"
    frac = f"{ts - whole:.{digits}f}"[2:]
    return f"{base}.{frac}Z"


def parse_iso(value: str) -> float:
    """Parse an ISO-8601 timestamp (``Z`` or offset, any fractional digits) to epoch seconds."""
    from datetime import datetime, timezone

    s = value.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    main, dot, rest = s.partition(".")
    if dot:
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        digits, tail = rest[:i], rest[i:]
        s = f"{main}.{(digits + '000000')[:6]}{tail}"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


class ODataSyntaxError(ValueError):
    """Malformed OData path or literal."""


def read_literal(s: str, i: int) -> tuple[str, int]:
    """Read an OData string literal starting at the quote ``s[i]``; ``''`` is one quote."""
    if i >= len(s) or s[i] != "'":
        raise ODataSyntaxError("expected string literal")
    out = []
    j = i + 1
    while True:
        k = s.find("'", j)
        if k < 0:
            raise ODataSyntaxError("unterminated string literal")
        out.append(s[j:k])
        if k + 1 < len(s) and s[k + 1] == "'":
            out.append("'")
            j = k + 2
            continue
        return "".join(out), k + 1


def parse_literal(text: str) -> str:
    """A whole string that must be one OData string literal, e.g. ``'it''s'``."""
    value, end = read_literal(text.strip(), 0)
    if end != len(text.strip()):
        raise ODataSyntaxError("trailing characters after literal")
    return value


# A parsed call argument: (name or None when positional, value, is_string_literal)
Arg = tuple[str | None, str, bool]


def parse_odata_path(path: str) -> list[tuple[str, list[Arg] | None]]:
    """Split a percent-DECODED OData path into ``(segment name, args or None)``.

    ``/_api/web/GetFolderByServerRelativePath(decodedurl='/a/b')/Files`` →
    ``[("_api", None), ("web", None), ("GetFolderByServerRelativePath", [("decodedurl", "/a/b", True)]),
    ("Files", None)]``. Literals may contain ``/``, ``(``, ``)`` and ``,``.
    """
    segs: list[tuple[str, list[Arg] | None]] = []
    s, n, i = path, len(path), 0
    while i < n:
        if s[i] == "/":
            i += 1
            continue
        j = i
        while j < n and s[j] not in "/(":
            j += 1
        name = s[i:j]
        i = j
        args: list[Arg] | None = None
        if i < n and s[i] == "(":
            i += 1
            args = []
            while True:
                while i < n and s[i] == " ":
                    i += 1
                if i >= n:
                    raise ODataSyntaxError("unterminated argument list")
                if s[i] == ")":
                    i += 1
                    break
                if s[i] == "'":
                    value, i = read_literal(s, i)
                    args.append((None, value, True))
                else:
                    j = i
                    while j < n and s[j] not in "=,)":
                        j += 1
                    token = s[i:j].strip()
                    i = j
                    if i < n and s[i] == "=":
                        i += 1
                        while i < n and s[i] == " ":
                            i += 1
                        if i < n and s[i] == "'":
                            value, i = read_literal(s, i)
                            args.append((token, value, True))
                        else:
                            j = i
                            while j < n and s[j] not in ",)":
                                j += 1
                            args.append((token, s[i:j].strip(), False))
                            i = j
                    else:
                        args.append((None, token, False))
                while i < n and s[i] == " ":
                    i += 1
                if i < n and s[i] == ",":
                    i += 1
                    continue
                if i < n and s[i] == ")":
                    i += 1
                    break
                raise ODataSyntaxError("expected ',' or ')' in argument list")
            if i < n and s[i] != "/":
                raise ODataSyntaxError("expected '/' after ')'")
        segs.append((name, args))
    return segs


def graph_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """Graph error envelope."""
    inner = {"date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "request-id": str(uuid.uuid4())}
    return json_response(status, {"error": {"code": code, "message": message, "innerError": inner}}, headers=headers)
