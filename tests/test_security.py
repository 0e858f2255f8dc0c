"""What a security reviewer checks first (docs/security.md): the licence, where to report a
vulnerability, and that log records carry no user principal names unless an operator asks."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import pytest

from shared import telemetry
from shared.handlers import get_settings, reset_process_caches
from simulator.core import TenantSimulator
from tests.test_sync import deliver, user_with

ROOT = Path(__file__).resolve().parent.parent
SECURITY_MD = ROOT / "docs" / "security.md"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def test_the_licence_is_mit_and_the_package_metadata_says_so() -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in licence
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]


def test_security_md_says_how_to_report_and_points_to_the_review_document() -> None:
    root = (ROOT / "SECURITY.md").read_text()
    assert "docs/security.md" in root
    assert re.search(r"(?i)report", root) and "security/advisories/new" in root
    review = SECURITY_MD.read_text()
    for heading in ("Data flows", "Personal data in logs", "Permissions and roles", "Secrets",
                    "Network exposure", "Checkov", "Reporting a vulnerability"):
        assert re.search(rf"(?m)^## {heading}", review), f"docs/security.md: no '## {heading}'"
    assert "reliability.md" in review and "PHOTO_SYNC_LOG_UPNS" in review


def logged_text(records: list[logging.LogRecord]) -> str:
    """Everything a log exporter would send: each message and each extra field."""
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.extend(str(v) for k, v in vars(record).items() if k not in _STANDARD)
    return "\n".join(parts)


def sync_with_request_logging(sim: TenantSimulator, caplog: pytest.LogCaptureFixture) -> str:
    """One sync with the HTTP library's per-request records on (as when tracing a user): its
    SharePoint PeopleManager requests name the user by UPN in the URL."""
    user = user_with(sim, "jpeg")
    caplog.set_level(logging.INFO, logger="httpx")
    caplog.set_level(logging.INFO, logger="photo_sync")
    deliver(user.id, force=True)
    text = logged_text(caplog.records)
    assert "GetPropertiesFor" in text, "the request records this test relies on were not logged"
    return user.userPrincipalName


@pytest.mark.usefixtures("app_env")
def test_log_records_name_no_upn_by_default(sim: TenantSimulator,
                                            caplog: pytest.LogCaptureFixture) -> None:
    upn = sync_with_request_logging(sim, caplog)
    text = logged_text(caplog.records)
    local, domain = upn.split("@")
    assert local not in text and local.replace(".", "_") not in text
    assert "<redacted>%40" + domain in text or "<redacted>@" + domain in text


@pytest.mark.usefixtures("app_env")
def test_an_operator_can_turn_upns_back_on(sim: TenantSimulator, caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTO_SYNC_LOG_UPNS", "true")
    reset_process_caches()
    try:
        assert get_settings().log_upns
        upn = sync_with_request_logging(sim, caplog)
        assert upn.split("@")[0] in logged_text(caplog.records)
    finally:
        monkeypatch.delenv("PHOTO_SYNC_LOG_UPNS")
        reset_process_caches()
        get_settings()  # redaction back on for the tests that follow


@pytest.mark.parametrize(("logged", "kept"), [
    ("i:0#.f|membership|o'brien@contoso.com", "i:0#.f|membership|<redacted>@contoso.com"),
    ("?@v=%27i%3A0%23.f%7Cmembership%7Cadele.vance%40contoso.com%27",
     "?@v=<redacted>%40contoso.com%27"),
    ("adele_contoso.com#EXT#@fabrikam.onmicrosoft.com", "<redacted>@fabrikam.onmicrosoft.com"),
    ("Profile Pictures/adele_vance_contoso_com_MThumb.jpg", "Profile Pictures/<redacted>_MThumb.jpg"),
    ("Profile%20Pictures/6e7b768e-07e2-4810-8459-485f84f8f204_LThumb.jpg",
     "Profile%20Pictures/6e7b768e-07e2-4810-8459-485f84f8f204_LThumb.jpg"),
    ("user 6e7b768e-07e2-4810-8459-485f84f8f204 failed",
     "user 6e7b768e-07e2-4810-8459-485f84f8f204 failed"),
])
def test_what_is_redacted_and_what_is_kept(logged: str, kept: str) -> None:
    telemetry.protect_upns_in_logs(True)
    assert telemetry.redact_upns(logged) == kept


def test_the_review_names_every_azure_role_the_template_grants() -> None:
    """docs/security.md's roles are infra/app/rbac.bicep's: a role changed there fails here."""
    from tests.test_infra_templates import BUILT_IN_ROLES, RBAC_BICEP, camel

    rbac = RBAC_BICEP.read_text()
    role_of = {camel(role): role for role in BUILT_IN_ROLES}

    def roles(list_name: str) -> set[str]:
        body = re.search(rf"(?ms)^var {list_name} = \[(.*?)\]", rbac)
        assert body, f"rbac.bicep: no var {list_name}"
        return {role_of[name] for name in re.findall(r"\w+", body.group(1))}

    rows = [line for line in SECURITY_MD.read_text().splitlines()
            if line.startswith("| Azure RBAC")]
    user_rows = [row for row in rows if "deploying user" in row]
    app_rows = [row for row in rows if row not in user_rows]
    assert len(user_rows) == 1
    user_named = {role for role in BUILT_IN_ROLES if role in user_rows[0].split("|")[2]}
    assert user_named == roles("userStorageRoles")
    app_named = {role for row in app_rows for role in BUILT_IN_ROLES if role in row.split("|")[2]}
    assert app_named == roles("identityStorageRoles") | {"Monitoring Metrics Publisher"}
