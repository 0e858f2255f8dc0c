"""Reason codes: every outcome carries one, each is documented with what the admin should do."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared import reasons
from shared.outcomes import Outcome
from simulator.core import TenantSimulator
from simulator.images import PhotoSpec
from tests.test_cli import cli

ROOT = Path(__file__).resolve().parent.parent


def documented_codes() -> dict[str, str]:
    """`code` -> its table row in docs/troubleshooting.md."""
    text = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z0-9_]+)` \|.*$", text, re.M)}


def test_every_code_is_documented_with_an_action_and_nothing_else_is() -> None:
    documented = documented_codes()
    assert set(documented) == set(reasons.REGISTRY)
    for code, entry in reasons.REGISTRY.items():
        row = documented[code]
        assert entry.action in row and ", ".join(entry.outcomes) in row, code


def test_codes_are_stable_identifiers_for_known_outcomes() -> None:
    outcomes = {o.value for o in Outcome}
    for code, entry in reasons.REGISTRY.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]{2,40}", code) and entry.code == code
        assert set(entry.outcomes) <= outcomes, code
    in_use = {o for e in reasons.REGISTRY.values() if not e.reserved for o in e.outcomes}
    assert in_use == outcomes  # every outcome has at least one code


@pytest.mark.usefixtures("app_env")
def test_every_sync_result_carries_a_registered_code(sim: TenantSimulator) -> None:
    broken = next(u for u in sim.users() if u.photo and u.photo.kind == "png-alpha")
    sim.set_photo(broken.id, PhotoSpec(kind="zero"))
    done = cli("sync", "--all", "--output", "jsonl")
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(results) >= 8
    for result in results:
        entry = reasons.describe(result["reasonCode"])
        assert entry is not None and result["outcome"] in entry.outcomes, result
    by_user = {r["userId"]: r["reasonCode"] for r in results}
    assert by_user[broken.id] == "image_empty"
    again = [json.loads(line) for line in cli("sync", "--all", "--output", "jsonl").stdout.splitlines()]
    assert {r["reasonCode"] for r in again if r["outcome"] == "unchanged"} == {"etag_unchanged"}
