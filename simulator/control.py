"""Unauthenticated test-control endpoints under ``/_sim/`` on the graph listener."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .tokens import mint_token
from .wire import Request, Response, json_response

if TYPE_CHECKING:
    from .core import TenantSimulator


def _bad(message: str, status: int = 400) -> Response:
    return json_response(status, {"error": message})


def handle(sim: "TenantSimulator", req: Request) -> Response:
    """Dispatch ``/_sim/...`` requests (JSON in, JSON out)."""
    segs = [unquote(s) for s in req.path.split("/")[2:] if s]
    m = req.method
    try:
        if len(segs) == 3 and segs[0] == "users" and segs[2] == "photo":
            if m in ("POST", "PUT"):
                if req.header("Content-Type").lower().startswith("application/json"):
                    etag = sim.set_photo(segs[1], req.json())
                else:
                    etag = sim.set_photo(segs[1], req.body)
                return json_response(200, {"etag": etag})
            if m == "DELETE":
                sim.delete_photo(segs[1])
                return Response(204)
        if segs == ["faults"] and m == "POST":
            sim.inject_fault(**_kwargs(req.json(), ("host", "status", "retry_after", "count", "path_contains", "batch_items")))
            return json_response(200, {"ok": True})
        if segs == ["faults"] and m == "DELETE":
            sim.clear_faults()
            return Response(204)
        if segs == ["settings"] and m == "POST":
            doc = req.json() or {}
            for key in ("latency_ms", "drop_notifications", "app_only_property_writes", "no_photo_metadata_style"):
                if key in doc:
                    setattr(sim, key, doc[key])
            return json_response(200, sim.settings())
        if segs == ["state"] and m == "GET":
            flag = req.query.get("all_profiles")
            return json_response(200, sim.state(None if flag is None else flag.lower() in ("1", "true")))
        if segs == ["advance"] and m == "POST":
            sim.advance(float((req.json() or {}).get("seconds", 0)))
            return json_response(200, {"ok": True})
        if segs == ["revoke-tokens"] and m == "POST":
            sim.revoke_tokens()
            return json_response(200, {"ok": True})
        if segs == ["reset-counters"] and m == "POST":
            sim.reset_counters()
            return json_response(200, {"ok": True})
        if segs == ["lifecycle"] and m == "POST":
            doc = req.json() or {}
            status = sim.send_lifecycle(str(doc.get("subscriptionId")), str(doc.get("event")))
            return json_response(200, {"status": status})
        if segs == ["token"] and m == "GET":
            aud = req.query.get("aud") or sim.roots["graph"]
            return json_response(200, {"accessToken": mint_token(aud, req.query.get("kind", "app"),
                                                                   int(req.query.get("ttl", "3600")),
                                                                   tenant_id=sim.tenant.tenant_id)})
        if segs == ["profiles"] and m == "POST":
            doc = req.json() or {}
            sim.set_profile_property(str(doc["user"]), str(doc["property"]), str(doc.get("value", "")))
            return json_response(200, sim.profile(str(doc["user"])))
    except KeyError as exc:
        return _bad(f"not found: {exc}", 404)
    except (ValueError, TypeError) as exc:
        return _bad(str(exc))
    return _bad(f"unknown control endpoint {m} {req.path}", 404)


def _kwargs(doc: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    extra = set(doc) - set(allowed)
    if extra:
        raise ValueError(f"unknown keys: {sorted(extra)}")
    return dict(doc)
